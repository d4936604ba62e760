"""Scans whose modification time is in the future, far in the past, or jumps while they settle.

A scanner PC's clock can be wrong (no NTP, a dead CMOS battery), and a share can report its
server's times. The settle logic must not care: it compares fingerprints over the agent's own
monotonic clock, so every such scan is stored, exactly once, with its time kept on the stored
copy, and nothing waits for a time that will never come.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from scanner_agent.core.states import ScanState
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import DaemonProcess, flow_runs, records, sheet_csv, wait_for
from tests.faults.tools import leftovers, scans_left, sha256_bytes, sha256_file, stored_files
from tests.harness import write_config

YEAR = 365 * 86400
#: barcode -> (what the scanner's clock said, mtime in seconds)
TIMES = {
    "620995": ("ten years ahead", time.time() + 10 * YEAR),
    "645750": ("the first second of 1970", 1.0),
    "317335": ("before 1970", -3 * YEAR),
}
JUMPS = "407871"  # mtime set far back while the scan is settling


def test_scans_with_future_past_and_jumping_mtimes_are_each_stored_once(
    tmp_path: Path, prefect_api: str
) -> None:
    barcodes = [*TIMES, JUMPS]
    cfg = write_config(
        tmp_path,
        name=f"Clock-{uuid.uuid4().hex[:6]}",
        sheet=sheet_csv(barcodes),
        scanner={"settle_seconds": 1.0, "rescan_seconds": 2},
    )
    watch = tmp_path / "scanner"
    slides = {
        b: write_svs(tmp_path / f"{b}.svs", barcode=b, width=512, height=384, seed=i).read_bytes()
        for i, b in enumerate(barcodes)
    }
    wanted_mtime_ns: dict[str, int] = {}
    for barcode, (_, mtime) in TIMES.items():
        path = watch / f"{barcode}.svs"
        path.write_bytes(slides[barcode])
        os.utime(path, (mtime, mtime))
        wanted_mtime_ns[barcode] = path.stat().st_mtime_ns
    with DaemonProcess(cfg) as daemon:
        daemon.wait_watching()
        journal = daemon.cfg.journal.path
        jumping = watch / f"{JUMPS}.svs"
        with open(jumping, "wb") as scanner_handle:  # while the scanner still holds it open...
            scanner_handle.write(slides[JUMPS])
            scanner_handle.flush()
            time.sleep(0.3)
            os.utime(jumping, (time.time() - YEAR, time.time() - YEAR))  # ...its clock jumps back a year
            time.sleep(0.3)
        wanted_mtime_ns[JUMPS] = jumping.stat().st_mtime_ns

        def all_stored() -> bool:
            return len(
                [r for r in records(journal) if r.state == ScanState.STORED and r.source_removed]
            ) == len(barcodes)

        wait_for(all_stored, 120, "every scan stored", alive=daemon)
        time.sleep(3)  # a full listing later, nothing is picked up again
        assert daemon.terminate(60) == 0

    rows = records(journal)
    assert sorted(r.barcode or "" for r in rows) == sorted(barcodes), [(r.path, r.state) for r in rows]
    assert {r.state for r in rows} == {ScanState.STORED}, [(r.path, r.state, r.reason) for r in rows]
    for r in rows:
        barcode = r.barcode or ""
        dest = Path(r.dest or "")
        assert sha256_file(dest) == sha256_bytes(slides[barcode])
        assert r.mtime_ns == wanted_mtime_ns[barcode], TIMES.get(barcode, ("jumped",))[0]
        assert dest.stat().st_mtime_ns == wanted_mtime_ns[barcode], "the stored copy lost the scan's time"
    assert len(stored_files(tmp_path / "storage")) == 2 * len(barcodes)
    assert leftovers(tmp_path / "storage") == [] and scans_left(watch) == []
    runs = flow_runs(daemon.cfg.flow_name)
    assert sorted(r.name for r in runs) == sorted(barcodes) and all(r.state.is_completed() for r in runs)
