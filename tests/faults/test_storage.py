"""Storage that fills up mid-copy, turns read-only, vanishes, or is unmounted under the agent.

Whatever storage does, the scan stays on the scanner byte for byte, nothing half-written is
visible in storage, a person gets an alert naming the fault, and once storage is back the scan
is stored exactly once (``maintenance.recheck_due`` with a time in the future, as the daemon's timer
would do later).

The Move Image task retries a storage error in the run before the scan is marked failed and the
alert goes out, so each fault costs that retry's wait. The scenarios therefore run side by side,
one scanner and one thread each, in a module fixture; each test reads the record of its own
scenario. Every scenario is real: tmpfs mounts, remounts and renames, the real
Prefect flow, a Slack Web API on 127.0.0.1.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.journal import ScanRecord
from scanner_agent.service.dispatcher import Dispatcher
from scanner_agent.service.maintenance import recheck_due
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import sheet_csv
from tests.faults.tools import (
    OnCreate,
    SlackView,
    alerts_section,
    fill,
    free_bytes,
    leftovers,
    mount_tmpfs,
    remount,
    sha256_bytes,
    sha256_file,
    slack_posts,
    stored_files,
    umount,
)
from tests.harness import Folders, make_agent, process, write_config

BARCODE = "620995"
#: Several 8 MiB copy chunks, so "full" can strike between two of them (~13 MB).
BIG = (6144, 4608)
SMALL = (1024, 768)


@dataclass
class Site(Folders):
    """One scanner: its folders, its config and its real Services."""

    name: str = ""
    agent: Any = None
    mounts: list[Path] = field(default_factory=list)

    @property
    def dest_dir(self) -> Path:
        return self.storage / "Prec01" / "Run-2"


@dataclass
class Outcome:
    """What one scenario saw: while storage was broken, then after it came back."""

    size: int = 0
    original_sha: str = ""
    failed: ScanRecord | None = None
    source_sha_during: str | None = None
    root_exists_during: bool = True
    visible_during: list[Path] = field(default_factory=list)
    leftovers_during: list[Path] = field(default_factory=list)
    alerts: SlackView = field(default_factory=SlackView)
    final: ScanRecord | None = None
    source_exists_after: bool = True
    visible_after: list[Path] = field(default_factory=list)
    leftovers_after: list[Path] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class Scenario:
    """How to set storage up, break it just before the scan is processed, and repair it."""

    slide: tuple[int, int]
    prepare: Callable[[Site, Outcome], None]
    break_: Callable[[Site, Outcome], None]
    repair: Callable[[Site, Outcome], None]


# --------------------------------------------------------------------------- the scenarios


def _full_prepare(site: Site, o: Outcome) -> None:
    mount_tmpfs(site.storage, "size=16m")
    site.mounts.append(site.storage)


def _full_break(site: Site, o: Outcome) -> None:
    # The moment the transfer creates its partial copy, another writer takes every free byte.
    def take_all_space(partial: Path) -> None:
        o.notes["copied_when_full"] = partial.stat().st_size
        o.notes["filler"] = fill(site.storage)
        o.notes["free_after_fill"] = free_bytes(site.storage)

    o.notes["trigger"] = OnCreate(site.dest_dir / ".incoming", ".partial", take_all_space)


def _full_repair(site: Site, o: Outcome) -> None:
    o.notes["trigger"].close()
    o.notes["filler"].unlink()


def _mount_share(site: Site, o: Outcome) -> None:
    mount_tmpfs(site.storage, "size=64m")
    site.mounts.append(site.storage)


def _ro_break(site: Site, o: Outcome) -> None:
    remount(site.storage, "ro")


def _ro_repair(site: Site, o: Outcome) -> None:
    remount(site.storage, "rw")


def _gone_break(site: Site, o: Outcome) -> None:
    site.storage.rename(site.base / "storage.away")


def _gone_repair(site: Site, o: Outcome) -> None:
    (site.base / "storage.away").rename(site.storage)


MARKER = ".scanner-agent-storage"


def _mount_marked_share(site: Site, o: Outcome) -> None:
    """The share as a lab sets it up with storage.marker_file: the marker lives on the share."""
    _mount_share(site, o)
    (site.storage / MARKER).touch()


def _unmounted_break(site: Site, o: Outcome) -> None:
    umount(site.storage)  # the share drops; its empty mount point stays behind
    site.mounts.remove(site.storage)


def _unmounted_repair(site: Site, o: Outcome) -> None:
    o.notes["under_mount_point"] = stored_files(site.storage)
    _mount_marked_share(site, o)


def _nothing(site: Site, o: Outcome) -> None:
    pass


SCENARIOS: dict[str, Scenario] = {
    "full": Scenario(BIG, _full_prepare, _full_break, _full_repair),
    "read-only": Scenario(SMALL, _mount_share, _ro_break, _ro_repair),
    "root-removed": Scenario(SMALL, _nothing, _gone_break, _gone_repair),
    "unmounted": Scenario(SMALL, _mount_marked_share, _unmounted_break, _unmounted_repair),
}


# --------------------------------------------------------------------------- running them


def _recheck(agent: Any) -> None:
    """What the daemon's timer does once the retry time has come: failed scans go back in the queue."""
    dispatcher = Dispatcher(agent, 1)
    dispatcher.start()
    try:
        recheck_due(agent, dispatcher, time.time() + 3600)
        assert dispatcher.wait_idle(300), "the re-queued scan did not finish within 300 s"
    finally:
        dispatcher.stop(30)


def _run(sc: Scenario, site: Site, o: Outcome, slides: dict[tuple[int, int], bytes], slack: Any) -> None:
    try:
        data = slides[sc.slide]
        o.size, o.original_sha = len(data), sha256_bytes(data)
        src = site.watch / f"{BARCODE}_scan.svs"
        src.write_bytes(data)
        sc.break_(site, o)
        [o.failed] = process(site.agent, src)
        o.source_sha_during = sha256_file(src) if src.exists() else None
        o.root_exists_during = site.storage.exists()
        o.visible_during = [p for p in stored_files(site.storage) if p != o.notes.get("filler")]
        o.leftovers_during = leftovers(site.storage)
        o.alerts = slack_posts(slack, site.name)
        sc.repair(site, o)
        if o.failed.state != "stored":
            _recheck(site.agent)
        o.final = site.agent.journal.get(o.failed.id)
        o.source_exists_after = src.exists()
        o.visible_after = stored_files(site.storage)
        o.leftovers_after = leftovers(site.storage)
    except BaseException as exc:  # reported by the scenario's test
        o.error = exc


@pytest.fixture(scope="module")
def storage_faults(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str, slack: Any
) -> Iterator[dict[str, Outcome]]:
    if os.geteuid() != 0:
        pytest.skip("storage faults mount and remount tmpfs filesystems: run as root")
    base = tmp_path_factory.mktemp("storage-faults")
    slides = {
        size: write_svs(
            base / f"slide-{size[0]}.svs", barcode=BARCODE, width=size[0], height=size[1]
        ).read_bytes()
        for size in {sc.slide for sc in SCENARIOS.values()}
    }
    sites: dict[str, Site] = {}
    outcomes = {key: Outcome() for key in SCENARIOS}
    try:
        for key, sc in SCENARIOS.items():
            site = sites[key] = Site(base / key, name=f"Storage-{key}-{uuid.uuid4().hex[:6]}")
            storage: dict[str, Any] = {"reserve_bytes": 0}
            if key == "unmounted":
                storage["marker_file"] = MARKER
            cfg = write_config(
                site.base,
                name=site.name,
                sheet=sheet_csv([BARCODE]),
                storage=storage,
                alerts=alerts_section(slack, site.base / "slack-token"),
            )
            sc.prepare(site, outcomes[key])
            site.agent = make_agent(cfg)
        threads = [
            threading.Thread(
                target=_run, args=(sc, sites[k], outcomes[k], slides, slack), name=f"scenario {k}"
            )
            for k, sc in SCENARIOS.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        yield outcomes
    finally:
        for site in sites.values():
            if site.agent is not None:
                site.agent.close()
            for m in reversed(site.mounts):
                umount(m)


def _assert_kept_and_alerted(o: Outcome, *, kind: str, reason: str, alert_title: str) -> None:
    """While storage was broken: failed (retried later), source intact, nothing visible, a person told."""
    if o.error is not None:
        raise o.error
    assert o.failed is not None
    assert (o.failed.state, o.failed.kind) == ("failed", kind), o.failed.reason
    assert reason in (o.failed.reason or ""), o.failed.reason
    assert o.failed.next_check is not None, "a storage fault must be retried on a timer"
    assert o.source_sha_during == o.original_sha, "the source changed or vanished while storage was broken"
    assert o.visible_during == [], f"something became visible in storage: {o.visible_during}"
    assert o.leftovers_during == [], f"partial copies were left behind: {o.leftovers_during}"
    assert o.alerts.with_title(alert_title), f"no {alert_title!r} alert; posted: {o.alerts.titles()}"


def _assert_stored_once(o: Outcome) -> None:
    """After storage came back: stored once, byte-identical, with its sidecar; the source removed."""
    assert o.final is not None and o.final.state == "stored", o.final and o.final.reason
    dest = Path(o.final.dest or "")
    assert o.visible_after == sorted([dest, dest.with_suffix(".json")]), o.visible_after
    assert sha256_file(dest) == o.original_sha == o.final.sha256
    assert not o.source_exists_after
    assert o.leftovers_after == []


# --------------------------------------------------------------------------- the tests


def test_storage_filling_up_mid_copy_keeps_the_source_alerts_and_stores_once_space_returns(
    storage_faults: dict[str, Outcome],
) -> None:
    o = storage_faults["full"]
    _assert_kept_and_alerted(
        o, kind="storage_full", reason="storage full", alert_title=f"Storage full for {BARCODE}"
    )
    # The filler struck while the copy was under way, not before it started or after it ended.
    assert "copied_when_full" in o.notes, "the transfer never created its partial copy"
    assert o.notes["copied_when_full"] < o.size and o.notes["free_after_fill"] < 1 << 20
    _assert_stored_once(o)


def test_read_only_storage_keeps_the_source_alerts_and_stores_once_writable(
    storage_faults: dict[str, Outcome],
) -> None:
    o = storage_faults["read-only"]
    _assert_kept_and_alerted(
        o,
        kind="storage_unavailable",
        reason="storage not writable",
        alert_title=f"Storage unavailable for {BARCODE}",
    )
    _assert_stored_once(o)


def test_removed_storage_root_is_not_recreated_and_the_scan_is_stored_once_it_is_back(
    storage_faults: dict[str, Outcome],
) -> None:
    o = storage_faults["root-removed"]
    _assert_kept_and_alerted(
        o,
        kind="storage_unavailable",
        reason="storage missing",
        alert_title=f"Storage unavailable for {BARCODE}",
    )
    assert not o.root_exists_during, "the agent recreated the missing storage root as a local folder"
    _assert_stored_once(o)


def test_unmounted_share_is_not_mistaken_for_storage(storage_faults: dict[str, Outcome]) -> None:
    o = storage_faults["unmounted"]
    if o.error is not None:
        raise o.error
    under = o.notes.get("under_mount_point")
    assert o.failed is not None and o.failed.state == "failed", (
        f"{o.failed and o.failed.state}: stored under the bare mount point: {under}"
    )
    assert MARKER in (o.failed.reason or ""), o.failed.reason
    assert o.source_sha_during == o.original_sha
    assert o.notes.get("under_mount_point") == [], "something was written into the bare mount point"
    assert o.final is not None and o.final.state == "stored", o.final and o.final.reason
    assert not o.source_exists_after and o.leftovers_after == []
