"""``[scanner] completion_marker``: a scan is complete only once the lab's flag file exists AND the scan
has settled; the marker leaves with the scan; a marker with no scan is ignored with one log line.

The real watcher (inotify) on real folders; files are written from threads as a scanner would.
Assertions are about order ("not reported while still growing"), never speed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage import remove_marker
from scanner_agent.testing.synthetic import write_svs
from scanner_agent.watch import CompletenessTracker, ScanWatcher, discover_units
from tests.test_watcher import Reports, wait_for

SETTLE = 0.5
MARKER = "{stem}.done"


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[tuple[Path, Reports, ScanWatcher]]:
    watch = tmp_path / "scanner"
    watch.mkdir()
    reports = Reports()
    w = ScanWatcher(
        watch,
        reports,
        observer="inotify",
        settle_seconds=SETTLE,
        rescan_seconds=60,
        poll_interval=0.1,
        tick_seconds=0.05,
        completion_marker=MARKER,
    )
    w.start()
    yield watch, reports, w
    w.stop()


def test_settled_scan_without_its_marker_is_not_complete_until_the_marker_appears(
    watcher: tuple[Path, Reports, ScanWatcher],
) -> None:
    watch, reports, _w = watcher
    write_svs(watch / "620995.svs", width=512, height=512)
    time.sleep(SETTLE * 6)  # settled several times over
    assert reports.names() == []
    (watch / "620995.done").touch()
    wait_for(lambda: reports.names() == ["620995.svs"], what="the scan to be reported once its marker exists")


def test_marker_that_appears_before_the_scan_stops_growing_waits_for_it_to_settle(
    watcher: tuple[Path, Reports, ScanWatcher],
) -> None:
    watch, reports, _w = watcher
    path = watch / "620995.svs"
    last_write: list[float] = []
    done = threading.Event()

    def scanner() -> None:
        with open(path, "wb") as fh:
            fh.write(b"II*\0")
            (watch / "620995.done").touch()  # the flag is written too early
            for _ in range(12):
                fh.write(b"\0" * 4096)
                fh.flush()
                last_write[:] = [time.monotonic()]
                time.sleep(SETTLE / 3)  # still growing, inside the settle window
        done.set()

    threading.Thread(target=scanner, daemon=True).start()
    wait_for(done.is_set, what="the scanner to finish")
    wait_for(lambda: reports.names() == ["620995.svs"], what="the scan to be reported after it settled")
    [reported_at] = reports.times("620995.svs")
    # Never while it was still growing: at least the (closed-file, quarter-length) window after the
    # last write, and reported once, at its final size.
    assert reported_at >= last_write[0] + SETTLE / 4 * 0.9
    assert len(reports.items) == 1 and reports.items[0][0].total_size() == 4 + 12 * 4096


def test_marker_with_no_scan_is_ignored_with_one_log_line(
    watcher: tuple[Path, Reports, ScanWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    watch, reports, w = watcher
    caplog.set_level(logging.WARNING, logger="scanner_agent.watch.watcher")
    orphan = watch / "777777.done"
    orphan.touch()
    wait_for(lambda: "777777.done" in caplog.text, what="the orphan marker to be logged")
    # More events on it and full listings do not repeat the line or turn it into a scan.
    orphan.touch()
    w._full_listing()
    w._full_listing()
    time.sleep(SETTLE * 3)
    lines = [r for r in caplog.records if "777777.done" in r.getMessage()]
    assert len(lines) == 1 and "no scan beside it" in lines[0].getMessage()
    assert reports.names() == []
    assert discover_units(watch) == []


def test_tracker_holds_a_settled_unit_until_its_marker_exists(tmp_path: Path) -> None:
    now = [0.0]
    src = write_svs(tmp_path / "620995.svs", width=256, height=256)
    unit = ScanUnit.from_path(src)
    tracker = CompletenessTracker(1.0, clock=lambda: now[0], completion_marker=MARKER)
    tracker.observe(unit)
    now[0] = 5.0
    assert tracker.ready_units() == []
    (tmp_path / "620995.done").touch()
    now[0] = 7.0  # the hold lasts one more window
    assert tracker.ready_units() == [unit]


def test_marker_template_can_use_the_full_name(tmp_path: Path) -> None:
    src = write_svs(tmp_path / "620995.svs", width=256, height=256)
    unit = ScanUnit.from_path(src)
    assert unit.marker_path("{name}.ready") == tmp_path / "620995.svs.ready"
    assert unit.marker_path("") is None


def test_marker_leaves_with_the_scan(tmp_path: Path) -> None:
    src = write_svs(tmp_path / "620995.svs", width=256, height=256)
    (tmp_path / "620995.done").touch()
    (tmp_path / "other.done").touch()
    remove_marker(ScanUnit.from_path(src), MARKER)
    assert not (tmp_path / "620995.done").exists() and (tmp_path / "other.done").exists()


def test_stored_scan_takes_its_marker_along(tmp_path: Path, prefect_api: str) -> None:
    from tests.harness import Folders, make_agent, process, write_config

    cfg = write_config(tmp_path, scanner={"completion_marker": MARKER})
    agent: Any = make_agent(cfg)
    try:
        at = Folders(tmp_path)
        src = write_svs(at.watch / "620995.svs", width=512, height=512)
        (at.watch / "620995.done").touch()
        [rec] = process(agent, src)
        assert rec.state == "stored", rec.reason
        assert not src.exists() and not (at.watch / "620995.done").exists()
        assert not list(at.storage.rglob("*.done"))  # a flag, not data: it is not stored
    finally:
        agent.close()
