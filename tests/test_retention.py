"""Source retention: ``remove_source`` / ``remove_source_after_days``, the retention timer, and ``status``.

Real pipeline runs (real Prefect server, real storage); the retention timer is called with a
``now`` days ahead instead of waiting days. The stored copy is damaged on disk to show that a
copy that no longer verifies keeps the source and raises one alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.config import load_config
from scanner_agent.reports.status import gather_status, render_status
from scanner_agent.service.source_retention import release_due_sources
from scanner_agent.testing.synthetic import write_mrxs, write_svs
from tests.harness import Folders, make_agent, process, write_config

DAY = 86_400.0


@pytest.fixture
def make_site(tmp_path: Path, prefect_api: str) -> Iterator[Callable[..., tuple[Folders, Any, Path]]]:
    agents: list[Any] = []

    def build(**scanner: Any) -> tuple[Folders, Any, Path]:
        base = tmp_path / f"site{len(agents)}"
        cfg = write_config(base, scanner=scanner)
        agent = make_agent(cfg)
        agents.append(agent)
        return Folders(base), agent, cfg

    yield build
    for a in agents:
        a.close()


def test_default_frees_the_scanner_disk_once_stored(make_site: Any) -> None:
    at, agent, _cfg = make_site()
    src = write_svs(at.watch / "620995.svs", width=512, height=512)
    [rec] = process(agent, src)
    assert rec.state == "stored" and rec.source_removed and not src.exists()


def test_remove_source_false_never_removes_and_status_says_so(make_site: Any) -> None:
    at, agent, cfg = make_site(remove_source=False)
    src = write_svs(at.watch / "620995.svs", width=512, height=512)
    [rec] = process(agent, src)
    assert rec.state == "stored" and not rec.source_removed and src.exists()
    assert release_due_sources(agent, time.time() + 10_000 * DAY) == []
    assert src.exists()
    st = gather_status(load_config(cfg))
    [kept] = st["kept_sources"]
    assert kept["file"] == "620995.svs" and kept["kept_until"] is None
    assert "620995.svs [620995]: kept on the scanner (remove_source = false)" in render_status(st)


def test_after_days_keeps_the_source_then_frees_it_after_reverifying(make_site: Any) -> None:
    at, agent, cfg = make_site(remove_source_after_days=7)
    svs = write_svs(at.watch / "620995.svs", width=512, height=512)
    mrxs = write_mrxs(at.watch, "645750_m", barcode="645750", images_x=2, images_y=2)
    (at.watch / "620995.done").touch()  # not configured as a marker: left alone
    recs = process(agent, svs, mrxs)
    assert [r.state for r in recs] == ["stored", "stored"], [r.reason for r in recs]
    assert svs.exists() and mrxs.exists() and not any(r.source_removed for r in recs)
    st = gather_status(load_config(cfg))
    until = {k["file"]: k["kept_until"] for k in st["kept_sources"]}
    assert until["620995.svs"] == pytest.approx(recs[0].stored_at + 7 * DAY)
    assert "remove_source_after_days = 7" in render_status(st)

    assert release_due_sources(agent, time.time() + 6 * DAY) == []  # not yet
    assert svs.exists()
    freed = release_due_sources(agent, time.time() + 8 * DAY)
    assert sorted(r.id for r in freed) == sorted(r.id for r in recs)
    assert not svs.exists() and not mrxs.exists() and not (at.watch / "645750_m").exists()
    assert all(agent.journal.get(r.id).source_removed for r in recs)
    assert Path(recs[0].dest).exists() and Path(recs[1].dest).exists()  # the stored copies stay
    assert gather_status(load_config(cfg))["kept_sources"] == []


def test_after_days_with_a_stored_copy_that_no_longer_verifies_alerts_and_keeps_the_source(
    make_site: Any,
) -> None:
    at, agent, cfg = make_site(remove_source_after_days=1)
    src = write_svs(at.watch / "620995.svs", width=512, height=512)
    [rec] = process(agent, src)
    assert rec.state == "stored", rec.reason
    dest = Path(rec.dest)
    # The stored copy is rewritten on the share with one byte changed (a tool that saves by
    # replacing the file; on one filesystem the stored copy is a hard link to the source, and this
    # leaves the source as it was).
    damaged = bytearray(dest.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    replacement = dest.with_name("edited.tmp")
    replacement.write_bytes(bytes(damaged))
    replacement.replace(dest)
    sent: list[tuple[str, str]] = []
    original = agent.alert

    def record(kind: str, message: str, **kw: Any) -> Any:
        sent.append((kind, message))
        return original(kind, message, **kw)

    agent.alert = record
    now = time.time() + 2 * DAY
    assert release_due_sources(agent, now) == []
    assert src.exists() and not agent.journal.get(rec.id).source_removed
    [(kind, message)] = sent
    assert kind == "stored_file_changed"
    assert str(dest) in message and rec.sha256 in message and str(src) in message and "keeping" in message
    # Once: the next passes that day do not alert again; the source stays.
    assert release_due_sources(agent, now + 60) == []
    assert len(sent) == 1 and src.exists()
    st = gather_status(load_config(cfg))
    [kept] = st["kept_sources"]
    assert "no longer verifies" in kept["problem"]


def test_after_days_keeps_a_source_that_changed_since_it_was_stored(make_site: Any) -> None:
    at, agent, _cfg = make_site(remove_source_after_days=0)
    src = write_svs(at.watch / "620995.svs", width=512, height=512)
    [rec] = process(agent, src)
    assert rec.state == "stored" and src.exists()
    with open(src, "ab") as fh:
        fh.write(b"the scanner wrote again")
    assert release_due_sources(agent, time.time() + 1) == []
    assert src.exists()
    assert "changed" in agent.journal.get(rec.id).details["retention_problem"]
