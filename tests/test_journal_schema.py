"""The journal's schema version: a journal written by the release before versions (checked in as
``tests/fixtures/journal-v1.sqlite``) opens with today's code, every row intact, and is upgraded in
place with a backup; a journal from a newer release is refused, its version named, the file untouched."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from scanner_agent.core.errors import ConfigError
from scanner_agent.core.states import ScanState
from scanner_agent.journal import AlertOutbox, Journal
from scanner_agent.journal.records import SCHEMA_VERSION
from tests.harness import write_config

FIXTURE = Path(__file__).parent / "fixtures" / "journal-v1.sqlite"
SCANNER_AGENT = Path(sys.executable).with_name("scanner-agent")


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


@pytest.fixture
def v1_journal(tmp_path: Path) -> Path:
    p = tmp_path / "state" / "cardinal.sqlite"
    p.parent.mkdir()
    shutil.copyfile(FIXTURE, p)
    return p


def test_fixture_is_the_unversioned_release_schema() -> None:
    assert _version(FIXTURE) == 0  # the release before versions never set user_version
    assert len(_rows(FIXTURE, "scans")) == 9


def test_v1_journal_opens_with_every_row(v1_journal: Path) -> None:
    before = {t: _rows(v1_journal, t) for t in ("scans", "events", "health", "rescans", "alert_pending")}
    j = Journal(v1_journal)
    try:
        recs = j.all()
        assert len(recs) == len(before["scans"]) == 9
        by_name = {Path(r.path).name: r for r in recs}
        stored = by_name["620995.svs"]
        assert stored.state == ScanState.STORED and stored.source_removed
        assert stored.dest == "/mnt/slides/Prec01/Run-2/Prec01_Run-2_620995.svs"
        assert stored.sha256 == "ab" * 32 and stored.details == {"unit": "file", "sheet_row": 4}
        assert by_name["999999.svs"].state == ScanState.HELD and by_name["999999.svs"].held_since
        assert by_name["damaged.svs"].state == ScanState.QUARANTINED
        assert by_name["123456.svs"].kind == "storage_down"
        assert {r.state for r in recs} >= {"stored", "held", "quarantined", "failed", "processing", "ready"}
        assert j.counts()["stored"] == 2
        assert j.last_stored() is not None and j.last_stored().barcode == "545891"  # type: ignore[union-attr]
        assert [e["state"] for e in j.events(stored.id)] == ["ready", "processing", "stored"]
        assert j.health()["pid"] == 4242
        assert [r["barcode"] for r in j.open_rescans()] == ["620995"]
        assert [r.id for r in j.stored_unremoved()] == [by_name["545891.mrxs"].id]
        # the daemon's first move on it: resume the scan a crash left mid-way
        assert [r.path for r in j.resume_after_crash()] == ["/data/scanner/out/234567.svs"]
    finally:
        j.close()
    outbox = AlertOutbox(v1_journal)
    try:
        assert outbox.pending_count() == 2
        assert {a.kind for _, _, a in outbox.due(now=2e9)} == {"held_too_long", "watcher_unhealthy"}
        assert outbox.last_sent("held:999999", "slack") is not None
    finally:
        outbox.close()
    assert _version(v1_journal) == SCHEMA_VERSION
    for table in ("events", "health", "rescans", "alert_pending"):
        assert len(_rows(v1_journal, table)) >= len(before[table])
    # the journal as it was, kept once next to it
    bak = v1_journal.with_name("cardinal.sqlite.v1.bak")
    assert _version(bak) == 0 and _rows(bak, "scans") == before["scans"]
    assert bak.stat().st_mode & 0o777 == 0o600


def test_new_journal_is_created_at_the_current_version(tmp_path: Path) -> None:
    p = tmp_path / "new.sqlite"
    Journal(p).close()
    assert _version(p) == SCHEMA_VERSION
    Journal(p).close()  # opening again migrates nothing and keeps no backup
    assert not list(tmp_path.glob("*.bak"))
    with sqlite3.connect(p) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "scans_stored" in names


def test_newer_journal_is_refused_naming_its_version(v1_journal: Path) -> None:
    with sqlite3.connect(v1_journal) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    digest = hashlib.sha256(v1_journal.read_bytes()).hexdigest()
    with pytest.raises(ConfigError) as err:
        Journal(v1_journal)
    msg = str(err.value)
    assert f"schema version {SCHEMA_VERSION + 5}" in msg and str(v1_journal) in msg
    assert f"(version {SCHEMA_VERSION})" in msg
    assert hashlib.sha256(v1_journal.read_bytes()).hexdigest() == digest  # untouched


def test_run_exits_with_config_error_on_newer_journal(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    journal = tmp_path / "state" / "cardinal.sqlite"
    journal.parent.mkdir(exist_ok=True)
    Journal(journal).close()
    with sqlite3.connect(journal) as db:
        db.execute("PRAGMA user_version=99")
    out = subprocess.run(
        [str(SCANNER_AGENT), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 78, out.stderr
    assert "schema version 99" in out.stderr
    assert _version(journal) == 99
