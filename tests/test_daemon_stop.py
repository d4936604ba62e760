"""Stopping the daemon, the hard ways and the soft one, with scans in flight.

SIGKILL mid-copy or while a Prefect run is being created, then a restart; SIGTERM mid-copy, and
SIGTERM with a scan that cannot finish (``stop_timeout_seconds`` must bound the wait); and
``status`` showing a scan in flight during its copy. The
mid-copy tests watch a folder on /dev/shm and store to disk, so each ~100 MB copy crosses
filesystems and lasts long enough to be interrupted. Every check waits on the journal or the
filesystem with a generous timeout; none asserts how fast anything happened.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.core.states import ScanState
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import (
    SHEET_BARCODES,
    DaemonProcess,
    drop,
    flow_runs,
    partials,
    read_health,
    records,
    scanner_config,
    sha256,
    status_json,
    stored,
    stored_slides,
    wait_for,
)
from tests.prefect_gate import PrefectGate

WAIT = 180  # generous: the machine is shared; nothing here is a speed claim
STOPPED_WAIT = 120  # for an exit that needs at most stop_timeout_seconds (1 s) plus the tidy-up
BIG_PADDING = 100 << 20  # bytes appended to a tiny slide so its cross-filesystem copy takes a while
UNFINISHED = ("RUNNING", "PENDING", "SCHEDULED")


def state_history(run_id: str) -> list[str]:
    """The names of a flow run's states, oldest first."""

    async def go() -> list[str]:
        from uuid import UUID

        from prefect.client.orchestration import get_client

        async with get_client() as client:
            states = await client.read_flow_run_states(UUID(run_id))
        return [st.name for st in sorted(states, key=lambda st: st.timestamp)]

    return asyncio.run(go())


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


def assert_stored_once_intact(journal: Path, storage: Path, originals: dict[str, str], watch: Path) -> None:
    rows = records(journal)
    for name, digest in originals.items():
        mine = [r for r in rows if Path(r.path).name == name]
        done = [r for r in mine if r.state == ScanState.STORED]
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


def _start_big_transfers(
    base: Path, shm: Path, barcodes: list[str], **scanner: object
) -> tuple[Path, dict[str, str]]:
    watch = shm / "scanner"
    watch.mkdir()
    cfg = scanner_config(base, scanner={"watch": str(watch), **scanner})
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
    cut_short = [r.flow_run_id for r in records(jpath) if r.state == ScanState.PROCESSING and r.flow_run_id]
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
    cfg = scanner_config(tmp_path, barcodes=barcodes, qc={"enabled": False})
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
        done = [r for r in records(jpath) if Path(r.path).name == name and r.state == ScanState.STORED]
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


def test_sigterm_waits_only_stop_timeout_for_a_scan_that_cannot_finish(
    tmp_path: Path, prefect_api: str
) -> None:
    """A scan in flight that cannot finish (the request creating its run is held at a gate in front
    of Prefect, which the test never opens): on SIGTERM the daemon waits ``stop_timeout_seconds``
    for it, no longer, exits 0 with the scan still stuck, and leaves it for the next start."""
    cfg = scanner_config(tmp_path, scanner={"stop_timeout_seconds": 1})
    watch, storage = tmp_path / "scanner", tmp_path / "storage"
    src = write_svs(watch / "620995_stuck.svs", width=512, height=384)
    digest = sha256(src)
    with PrefectGate(prefect_api) as gate:
        # Prefect's own request timeout must not end the wait either: only the daemon's bound may.
        env = {"PREFECT_API_URL": gate.url, "PREFECT_API_REQUEST_TIMEOUT": "86400"}
        with DaemonProcess(cfg, env=env) as d:
            d.wait_watching()
            jpath = d.cfg.journal.path
            wait_for(gate.holding.is_set, WAIT, "the scan's run to be requested from Prefect", alive=d)
            d.signal(signal.SIGTERM)
            # Ignoring the bound, it would wait on the held request for ever: this wait then fails.
            assert d.wait(STOPPED_WAIT) == 0, d.log_tail()
            assert "stopped with 1 scan(s) unfinished" in d.log_text(), d.log_tail()
    [row] = records(jpath)
    assert row.state in (ScanState.READY, ScanState.PROCESSING) and row.dest is None, (row.state, row.reason)
    assert read_health(jpath).get("stopped_at")
    assert sha256(src) == digest and stored_slides(storage) == [] and partials(storage) == []

    with DaemonProcess(cfg) as again:  # the next start, with Prefect reachable: the scan is resumed
        again.wait_watching()
        [done] = wait_for(
            lambda: stored(jpath), WAIT, "the stuck scan to be stored after the restart", alive=again
        )
        assert again.terminate() == 0
    assert done.id == row.id and len(records(jpath)) == 1
    assert sha256(Path(done.dest)) == digest and not src.exists()


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
