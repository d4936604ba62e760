"""The daemon as a real process: ``scanner-agent run`` on real folders, real watchdog, real Prefect.

Scans are written the way scanners write them (slowly, through one handle; MIRAX file by file)
or dropped in bursts, and the daemon is stopped the hard ways (SIGKILL mid-copy or while a
Prefect run is being created, SIGTERM mid-copy). Every check waits on the journal or the
filesystem with a generous timeout; none asserts how fast anything happened. The mid-copy tests watch a folder on /dev/shm and store
to disk, so each ~100 MB copy crosses filesystems and lasts long enough to be interrupted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.testing.simulator import SimScan, simulate
from scanner_agent.testing.synthetic import write_mrxs, write_svs
from tests.daemon_helpers import (
    SCANNER_AGENT,
    DaemonProcess,
    flow_runs,
    partials,
    read_health,
    records,
    rows_for,
    sheet_csv,
    sheet_row,
    stored,
    unique_scanner_name,
    wait_for,
    write_slowly,
)
from tests.harness import write_config

SHEET_BARCODES = ["620995", "645750", "317335", "407871", "465551", "754788"]
WAIT = 180  # generous: the machine is shared; nothing here is a speed claim
BIG_PADDING = 100 << 20  # bytes appended to a tiny slide so its cross-filesystem copy takes a while
UNFINISHED = ("RUNNING", "PENDING", "SCHEDULED")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def state_history(run_id: str) -> list[str]:
    """The names of a flow run's states, oldest first."""

    async def go() -> list[str]:
        from uuid import UUID

        from prefect.client.orchestration import get_client

        async with get_client() as client:
            states = await client.read_flow_run_states(UUID(run_id))
        return [st.name for st in sorted(states, key=lambda st: st.timestamp)]

    return asyncio.run(go())


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def stored_slides(storage: Path, suffix: str = ".svs") -> list[Path]:
    """Slides visible at their final names (not in ``.incoming``, not superseded)."""
    return [
        p
        for p in storage.rglob(f"*{suffix}")
        if ".incoming" not in p.parts and "superseded" not in p.parts and p.is_file()
    ]


def config(base: Path, *, barcodes: list[str] = SHEET_BARCODES, **sections: dict[str, Any]) -> Path:
    scanner = {"name": unique_scanner_name(), **sections.pop("scanner", {})}
    return write_config(
        base, name=scanner.pop("name"), sheet=sheet_csv(barcodes), scanner=scanner, **sections
    )


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A scratch folder on tmpfs (/dev/shm), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="scanner-agent-test-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def big_slides(staging: Path, barcodes: list[str]) -> dict[str, str]:
    """Valid slides of ~100 MB (a small SVS plus trailing bytes OpenSlide never reads); name -> sha256."""
    staging.mkdir(parents=True, exist_ok=True)
    padding = os.urandom(BIG_PADDING)
    out = {}
    for i, bc in enumerate(barcodes):
        p = write_svs(staging / f"{bc}_big.svs", width=512, height=384, seed=i)
        with open(p, "ab") as f:
            f.write(bc.encode() + padding)  # differs per file
        out[p.name] = sha256(p)
    return out


def drop(staging: Path, watch: Path) -> None:
    """Move finished files into the watch folder at once (rename: same filesystem)."""
    for p in sorted(staging.iterdir()):
        os.rename(p, watch / p.name)


def assert_stored_once_intact(journal: Path, storage: Path, originals: dict[str, str], watch: Path) -> None:
    rows = records(journal)
    for name, digest in originals.items():
        mine = [r for r in rows if Path(r.path).name == name]
        done = [r for r in mine if r.state == "stored"]
        assert len(done) == 1, (
            f"{name}: expected one stored row, got {[(r.id, r.state, r.reason) for r in mine]}"
        )
        assert sha256(Path(done[0].dest)) == digest, (
            f"{name}: stored copy differs from what the scanner wrote"
        )
        assert not (watch / name).exists(), f"{name}: source still on the scanner after being stored"
    slides = stored_slides(storage)
    assert sorted(sha256(p) for p in slides) == sorted(originals.values()), slides
    assert partials(storage) == []


# --- writing and catching up --------------------------------------------------------------------


def test_scan_written_slowly_is_stored_once_and_not_before_it_is_complete(
    tmp_path: Path, prefect_api: str
) -> None:
    cfg = config(tmp_path, scanner={"settle_seconds": 1.0})
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
            lambda: [r for r in rows_for(jpath, target) if r.state == "stored"],
            WAIT,
            "the slow scan to be stored",
            alive=d,
        )
        assert done[0].ready_at is not None and done[0].ready_at >= last_write
        assert Path(done[0].dest).read_bytes() == data
        assert [p.name for p in stored_slides(storage)] == ["Prec01_Run-2_P1_Cardinal_620995.svs"]
        assert len(rows_for(jpath, target)) == 1 and not target.exists()
        assert d.terminate() == 0


def test_scans_present_before_start_are_caught_up(tmp_path: Path, prefect_api: str) -> None:
    cfg = config(tmp_path)
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
        assert row.state == "stored" and sha256(Path(row.dest)) == digest
    assert len(stored_slides(storage)) == 4


def test_mrxs_written_file_by_file_is_stored_as_one_unit(tmp_path: Path, prefect_api: str) -> None:
    cfg = config(tmp_path)
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
    cfg = config(tmp_path, barcodes=barcodes, qc={"enabled": False})
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
    assert len(rows) == 200 and {r.state for r in rows} == {"stored"}
    assert sorted(r.barcode for r in rows) == barcodes
    assert len({r.dest for r in rows}) == 200
    slides = stored_slides(storage)
    assert len(slides) == 200 and {sha256(p) for p in slides} == {sha256(template)}
    assert list(watch.iterdir()) == []
    runs = flow_runs(d.cfg.flow_name)  # one run per scan, each finished
    assert sorted(r.name for r in runs) == barcodes and {r.state_type.value for r in runs} == {"COMPLETED"}


# --- stopping hard and soft -------------------------------------------------------------------------


def _start_big_transfers(
    base: Path, shm: Path, barcodes: list[str], **scanner: object
) -> tuple[Path, dict[str, str]]:
    watch = shm / "scanner"
    watch.mkdir()
    cfg = config(base, scanner={"watch": str(watch), **scanner})
    originals = big_slides(shm / "staging", barcodes)
    return cfg, originals


def _wait_no_unfinished_runs(d: DaemonProcess) -> None:
    name = d.cfg.flow_name
    wait_for(
        lambda: not [r for r in flow_runs(name) if r.state_type.value in UNFINISHED],
        60,
        f"no run of {name!r} left Running/Pending/Scheduled",
        interval=1.0,
        alive=d,
    )


def _wait_mid_copy(d: DaemonProcess, storage: Path) -> None:
    wait_for(
        lambda: partials(storage),
        WAIT,
        "a copy to be under way in storage/.incoming",
        interval=0.005,
        alive=d,
    )


@pytest.mark.slow
def test_sigkill_mid_transfer_then_restart_stores_everything_exactly_once(
    tmp_path: Path, shm_dir: Path, prefect_api: str
) -> None:
    cfg, originals = _start_big_transfers(tmp_path, shm_dir, SHEET_BARCODES[:3])
    watch, storage = shm_dir / "scanner", tmp_path / "storage"
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath, flow_name = d.cfg.journal.path, d.cfg.flow_name
        drop(shm_dir / "staging", watch)
        _wait_mid_copy(d, storage)
        assert d.kill() == -9
    cut_short = [r.flow_run_id for r in records(jpath) if r.state == "processing" and r.flow_run_id]
    assert cut_short, "a scan should have been mid-flow when the daemon was killed"
    assert status_json(cfg)["daemon"]["running"] is False  # its pid is gone, whatever the journal last said
    # What a person browsing the storage sees at this moment: only whole, verified copies.
    for p in stored_slides(storage):
        assert sha256(p) in originals.values(), f"{p} is visible at its final name but incomplete"

    with DaemonProcess(cfg) as again:
        again.wait_watching()
        wait_for(
            lambda: {Path(r.path).name for r in stored(jpath)} == set(originals),
            WAIT,
            "every scan to be stored after the restart",
            alive=again,
        )
        _wait_no_unfinished_runs(again)
        assert again.terminate() == 0
    assert_stored_once_intact(jpath, storage, originals, watch)
    runs = flow_runs(flow_name)
    # One run per scan: a resumed scan continues the run that was cut short, whose history says so.
    assert sorted(r.name for r in runs) == sorted(n.split("_")[0] for n in originals), [
        (r.name, r.state_name) for r in runs
    ]
    assert {r.state_type.value for r in runs} == {"COMPLETED"}
    for run_id in cut_short:
        assert "Crashed" in state_history(run_id), f"run {run_id} was cut short but never marked Crashed"


async def _first_scheduled_run(flow_name: str, timeout: float) -> Any:
    """Poll the API (tightly: the window is short) until a run of ``flow_name`` is Scheduled."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    wanted = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
    end = asyncio.get_running_loop().time() + timeout
    async with get_client() as client:
        while asyncio.get_running_loop().time() < end:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), flow_run_filter=wanted, limit=1
            )
            if runs:
                return runs[0]
            await asyncio.sleep(0.002)
    raise AssertionError(f"no run of {flow_name!r} was seen Scheduled within {timeout:.0f} s")


@pytest.mark.slow
def test_sigkill_while_a_run_is_being_created_leaves_no_run_behind(tmp_path: Path, prefect_api: str) -> None:
    """A run is created (Scheduled, against the scanner's deployment) before its flow starts;
    killed in between, the next start must continue that run, not leave it Late and make another."""
    barcodes = [f"{300000 + i}" for i in range(6)]
    cfg = config(tmp_path, barcodes=barcodes, qc={"enabled": False})
    template = write_svs(tmp_path / "template.svs", width=256, height=256)
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath, flow_name = d.cfg.journal.path, d.cfg.flow_name
        for bc in barcodes:
            shutil.copyfile(template, tmp_path / "scanner" / f"{bc}.svs")
        caught = asyncio.run(_first_scheduled_run(flow_name, WAIT))
        assert d.kill() == -9
    with DaemonProcess(cfg) as again:
        again.wait_watching()
        wait_for(
            lambda: len(stored(jpath)) == len(barcodes),
            WAIT,
            "every scan to be stored after the restart",
            alive=again,
        )
        _wait_no_unfinished_runs(again)
        assert again.terminate() == 0
    runs = flow_runs(flow_name)
    assert sorted(r.name for r in runs) == barcodes, [(r.name, r.state_name) for r in runs]
    assert caught.id in {r.id for r in runs if r.state_type.value == "COMPLETED"}


@pytest.mark.slow
@pytest.mark.parametrize("stop_timeout", [300, 0], ids=["in-flight-finishes", "in-flight-cut-short"])
def test_sigterm_mid_transfer_exits_0_and_loses_nothing(
    tmp_path: Path, shm_dir: Path, prefect_api: str, stop_timeout: float
) -> None:
    """SIGTERM (systemd stop): in-flight copies may finish within stop_timeout_seconds; past it they
    are abandoned in .incoming and resume at the next start. Either way: exit 0, nothing lost."""
    cfg, originals = _start_big_transfers(
        tmp_path, shm_dir, SHEET_BARCODES[:2], stop_timeout_seconds=stop_timeout
    )
    watch, storage = shm_dir / "scanner", tmp_path / "storage"
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path
        drop(shm_dir / "staging", watch)
        _wait_mid_copy(d, storage)
        assert d.terminate(timeout=WAIT) == 0, d.log_tail()
    assert read_health(jpath).get("stopped_at")
    # Nothing lost: each scan is either stored whole or still on the scanner, untouched.
    for name, digest in originals.items():
        done = [r for r in records(jpath) if Path(r.path).name == name and r.state == "stored"]
        if done:
            assert sha256(Path(done[0].dest)) == digest
        else:
            assert sha256(watch / name) == digest, f"{name} is neither stored nor intact on the scanner"
    if stop_timeout:
        assert stored(jpath), "the copy in flight at SIGTERM should have been allowed to finish"
        assert partials(storage) == []

    with DaemonProcess(cfg) as again:
        again.wait_watching()
        wait_for(
            lambda: {Path(r.path).name for r in stored(jpath)} == set(originals),
            WAIT,
            "the rest to be stored after the restart",
            alive=again,
        )
        _wait_no_unfinished_runs(again)
        assert again.terminate() == 0
    assert {r.state_type.value for r in flow_runs(d.cfg.flow_name)} == {"COMPLETED"}
    assert_stored_once_intact(jpath, storage, originals, watch)


# --- held scans, the lock, status -------------------------------------------------------------------


def test_held_scan_is_released_when_the_csv_gains_its_row(tmp_path: Path, prefect_api: str) -> None:
    cfg = config(tmp_path)
    watch = tmp_path / "scanner"
    src = write_svs(watch / "999001_new.svs", width=512, height=384)
    data = src.read_bytes()
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path
        [held] = wait_for(
            lambda: [r for r in records(jpath) if r.state == "held"],
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
    cfg = config(tmp_path)
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


def status_json(cfg: Path) -> dict[str, Any]:
    out = subprocess.run(
        [str(SCANNER_AGENT), "status", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    return json.loads(out.stdout)


def test_status_json_reports_the_running_daemon(tmp_path: Path, prefect_api: str) -> None:
    cfg = config(tmp_path)
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


def test_status_shows_a_scan_in_flight_during_its_copy(
    tmp_path: Path, shm_dir: Path, prefect_api: str
) -> None:
    cfg, originals = _start_big_transfers(tmp_path, shm_dir, SHEET_BARCODES[:3], max_parallel=1)
    with DaemonProcess(cfg) as d:
        d.wait_watching()
        jpath = d.cfg.journal.path
        drop(shm_dir / "staging", shm_dir / "scanner")
        busy = wait_for(
            lambda: (s := status_json(cfg)["daemon"])["in_flight"] and s,
            WAIT,
            "status to show a scan in flight",
            interval=0.2,
            alive=d,
        )
        assert busy["running"] is True and isinstance(busy["queue"], int)
        ids = {r.id for r in records(jpath)}
        assert set(busy["in_flight"]) <= ids
        wait_for(lambda: len(stored(jpath)) == len(originals), WAIT, "all scans to be stored", alive=d)
        wait_for(
            lambda: (s := status_json(cfg)["daemon"])["in_flight"] == [] and s["queue"] == 0,
            20,
            "status to show nothing in flight or queued once all are stored",
            interval=0.5,
            alive=d,
        )
        assert d.terminate() == 0


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
