"""The daemon as a real process: ``scanner-agent run`` on real folders, real watchdog, real Prefect.

Scans are written the way scanners write them (slowly, through one handle; MIRAX file by file)
or dropped in bursts; held scans are released, a second daemon is refused, ``status`` reports the
running one. Stopping it (SIGKILL, SIGTERM) is in ``test_daemon_stop.py``. Every check waits on
the journal or the filesystem with a generous timeout; none asserts how fast anything happened.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from scanner_agent.core.states import ScanState
from scanner_agent.testing.simulator import SimScan, simulate
from scanner_agent.testing.synthetic import write_mrxs, write_svs
from tests.daemon_helpers import (
    SCANNER_AGENT,
    SHEET_BARCODES,
    DaemonProcess,
    drop,
    flow_runs,
    partials,
    read_health,
    records,
    rows_for,
    scanner_config,
    sha256,
    sheet_row,
    status_json,
    stored,
    stored_slides,
    wait_for,
    write_slowly,
)
from tests.harness import write_config

WAIT = 180  # generous: the machine is shared; nothing here is a speed claim


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


# --- writing and catching up --------------------------------------------------------------------


def test_scan_written_slowly_is_stored_once_and_not_before_it_is_complete(
    tmp_path: Path, prefect_api: str
) -> None:
    cfg = scanner_config(tmp_path, scanner={"settle_seconds": 1.0})
    watch, storage = tmp_path / "scanner", tmp_path / "storage"
    data = write_svs(tmp_path / "620995_slow.svs", width=1024, height=768).read_bytes()
    target = watch / "620995_slow.svs"
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path

        def nothing_yet() -> None:
            assert rows_for(jpath, target) == [], "the daemon took the scan while it was still being written"
            assert stored_slides(storage) == []

        # ~3.5 s of writing, each pause shorter than the settle window (an open writer must hold it back too)
        last_write = write_slowly(data, target, chunk=64 << 10, interval=0.3, between_chunks=nothing_yet)
        done = wait_for(
            lambda: [r for r in rows_for(jpath, target) if r.state == ScanState.STORED],
            WAIT,
            "the slow scan to be stored",
            alive=d,
        )
        assert done[0].ready_at is not None and done[0].ready_at >= last_write
        assert Path(done[0].dest).read_bytes() == data
        assert [p.name for p in stored_slides(storage)] == ["Prec01_Run-2_P1_Cardinal_620995.svs"]
        # The journal says "stored" once the copy is verified; the scanner's file goes just after.
        wait_for(lambda: not target.exists() or None, WAIT, "the scanner's copy to be freed", alive=d)
        assert len(rows_for(jpath, target)) == 1 and not target.exists()
        assert d.terminate() == 0


def test_scans_present_before_start_are_caught_up(tmp_path: Path, prefect_api: str) -> None:
    cfg = scanner_config(tmp_path)
    watch, storage = tmp_path / "scanner", tmp_path / "storage"
    originals = {}
    for i, bc in enumerate(SHEET_BARCODES[:3]):
        p = write_svs(watch / f"{bc}_early.svs", width=512, height=384, seed=i)
        originals[p.name] = sha256(p)
    nested = watch / "2024-05-01"
    nested.mkdir()
    p = write_svs(nested / f"{SHEET_BARCODES[3]}_early.svs", width=512, height=384, seed=9)
    originals[p.name] = sha256(p)
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path
        wait_for(
            lambda: len(stored(jpath)) == 4, WAIT, "the four scans already on disk to be stored", alive=d
        )
        assert d.terminate() == 0
    rows = records(jpath)
    assert len(rows) == 4
    for name, digest in originals.items():
        [row] = [r for r in rows if Path(r.path).name == name]
        assert row.state == ScanState.STORED and sha256(Path(row.dest)) == digest
    assert len(stored_slides(storage)) == 4


def test_mrxs_written_file_by_file_is_stored_as_one_unit(tmp_path: Path, prefect_api: str) -> None:
    cfg = scanner_config(tmp_path)
    watch, storage = tmp_path / "scanner", tmp_path / "storage"
    reference = tmp_path / "reference"
    write_mrxs(reference, "754788_m", barcode="754788")  # what the simulator delivers, byte for byte
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path
        writer = threading.Thread(
            target=simulate,
            args=(watch, [SimScan(name="754788_m", kind="mrxs", barcode="754788")]),
            kwargs={"chunk_bytes": 32 << 10, "chunk_interval": 0.1},
        )
        writer.start()
        try:
            while writer.is_alive():  # the data folder fills for seconds; none of it may be taken early
                assert records(jpath) == [], (
                    "the MIRAX slide was taken before Slidedat.ini said it was finished"
                )
                writer.join(0.2)
        finally:
            writer.join()
        [row] = wait_for(lambda: stored(jpath), WAIT, "the MIRAX slide to be stored", alive=d)
        assert d.terminate() == 0
    assert len(records(jpath)) == 1
    dest = Path(row.dest)
    assert dest.suffix == ".mrxs" and dest.name == "Prec01_Run-2_P1_Cardinal_754788.mrxs"
    assert dest.read_bytes() == (reference / "754788_m.mrxs").read_bytes()
    assert tree_hashes(dest.with_suffix("")) == tree_hashes(reference / "754788_m")
    assert not (watch / "754788_m.mrxs").exists() and not (watch / "754788_m").exists()
    assert partials(storage) == []


@pytest.mark.slow
def test_burst_of_200_small_scans_each_stored_exactly_once(tmp_path: Path, prefect_api: str) -> None:
    barcodes = [f"{100000 + i}" for i in range(200)]
    cfg = scanner_config(tmp_path, barcodes=barcodes, qc={"enabled": False})
    watch, storage = tmp_path / "scanner", tmp_path / "storage"
    template = write_svs(tmp_path / "template.svs", width=256, height=256)
    staging = tmp_path / "staging"
    staging.mkdir()
    for bc in barcodes:
        shutil.copyfile(template, staging / f"{bc}.svs")
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path
        drop(staging, watch)
        wait_for(lambda: len(stored(jpath)) >= 200, 1200, "200 scans to be stored", alive=d, interval=1.0)
        assert d.terminate() == 0
    rows = records(jpath)
    assert len(rows) == 200 and {r.state for r in rows} == {ScanState.STORED}
    assert sorted(r.barcode for r in rows) == barcodes
    assert len({r.dest for r in rows}) == 200
    slides = stored_slides(storage)
    assert len(slides) == 200 and {sha256(p) for p in slides} == {sha256(template)}
    assert list(watch.iterdir()) == []
    runs = flow_runs(d.cfg.flow_name)  # one run per scan, each finished
    assert sorted(r.name for r in runs) == barcodes and {r.state_type.value for r in runs} == {"COMPLETED"}


# --- held scans, the lock, status -------------------------------------------------------------------


def test_held_scan_is_released_when_the_csv_gains_its_row(tmp_path: Path, prefect_api: str) -> None:
    cfg = scanner_config(tmp_path)
    watch = tmp_path / "scanner"
    src = write_svs(watch / "999001_new.svs", width=512, height=384)
    data = src.read_bytes()
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path
        [held] = wait_for(
            lambda: [r for r in records(jpath) if r.state == ScanState.HELD],
            WAIT,
            "the scan with an unknown barcode to be held",
            alive=d,
        )
        assert held.barcode == "999001" and src.exists()
        with open(tmp_path / "sheet.csv", "a", encoding="utf-8") as f:
            f.write(sheet_row("999001", study="Prec02", experiment="Run 7"))
        [row] = wait_for(
            lambda: stored(jpath), WAIT, "the held scan to be stored once its row exists", alive=d
        )
        assert d.terminate() == 0
    assert row.id == held.id and len(records(jpath)) == 1
    assert Path(row.dest).name == "Prec02_Run-7_P1_Cardinal_999001.svs"
    assert Path(row.dest).read_bytes() == data and not src.exists()


def test_a_second_daemon_on_the_same_journal_refuses_to_start(tmp_path: Path, prefect_api: str) -> None:
    cfg = scanner_config(tmp_path)
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        second = subprocess.run(
            [str(SCANNER_AGENT), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=WAIT
        )
        assert second.returncode == 2, second.stderr
        lock = f"{d.cfg.journal.path}.lock"
        assert lock in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        # The first one is unharmed: still the recorded daemon, and still storing scans.
        assert read_health(d.cfg.journal.path).get("pid") == d.pid
        write_svs(tmp_path / "scanner" / "620995_after.svs", width=512, height=384)
        wait_for(lambda: stored(d.cfg.journal.path), WAIT, "a scan to be stored by the first daemon", alive=d)
        assert d.terminate() == 0


def test_status_json_reports_the_running_daemon(tmp_path: Path, prefect_api: str) -> None:
    cfg = scanner_config(tmp_path)
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        st = status_json(cfg)["daemon"]
        assert st["running"] is True and st["pid"] == d.pid
        assert st["observer"] == "inotify" and st["watcher_alive"] is True
        assert st["watching"] == str(tmp_path / "scanner")
        assert st["queue"] == 0 and st["in_flight"] == []
        write_svs(tmp_path / "scanner" / "620995_st.svs", width=512, height=384)
        wait_for(lambda: stored(d.cfg.journal.path), WAIT, "the scan to be stored", alive=d)
        # Once it is stored, status must not go on reporting it in flight.
        # Queue and in-flight are published together about once a second: wait for a snapshot taken
        # after the scan was stored, not one from before a worker picked it up (queue 1, none in flight).
        wait_for(
            lambda: (lambda dd: dd["in_flight"] == [] and dd["queue"] == 0)(status_json(cfg)["daemon"]),
            20,
            "status to show nothing queued or in flight once the scan is stored",
            interval=0.5,
            alive=d,
        )
        full = status_json(cfg)
        assert full["counts"]["stored"] == 1 and full["daemon"]["queue"] == 0
        assert d.terminate() == 0
    after = status_json(cfg)["daemon"]
    assert after["running"] is False and after["stopped_at"]


def test_a_scan_gone_before_it_is_recorded_is_not_recorded(tmp_path: Path) -> None:
    """The watcher judged a scan complete just as the flow that stored it removed it: the late
    callback must not record an empty second scan (it would fail as "no longer on the scanner's
    disk" for ever). Found by the SIGKILL fault run with SCANNER_AGENT_FAULT_SEED=513910712."""
    from scanner_agent.scanunit import ScanUnit
    from scanner_agent.service.daemon import Daemon
    from tests.harness import make_agent

    agent = make_agent(write_config(tmp_path))
    try:
        daemon = Daemon(agent)
        src = write_svs(tmp_path / "scanner" / "620995_gone.svs", barcode="620995", width=256, height=256)
        unit = ScanUnit.from_path(src)
        src.unlink()
        daemon._on_ready(unit)
        assert agent.journal.all() == []
        assert daemon.dispatcher.queue_length == 0
    finally:
        agent.close()
