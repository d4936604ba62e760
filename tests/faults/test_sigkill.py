"""SIGKILL at random moments while the daemon moves 50 scans, then restart, until all are stored.

The daemon (``scanner-agent run``, a real process) is killed with ``kill -9`` — no handler, no
tidying, as on power loss or the OOM killer — and started again. Each kill falls at a random point
of one kind of moment: while it starts (imports, crash recovery, the first listing), somewhere in
a flow run (sheet, validation, Prefect calls, the move, source removal), or within milliseconds
of a copy appearing in storage's ``.incoming``. Afterwards every scan must be in storage exactly
once and byte-identical to what the scanner wrote (sha256), with its sidecar; nothing may be left
in ``.incoming``, nothing on the scanner, no Prefect run Running, and each scan's run Completed.

The schedule is random but seeded: the seed is printed, and ``SCANNER_AGENT_FAULT_SEED=<seed>``
replays the same choices and delays (the daemon's own timing still varies from run to run).
"""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scanner_agent.config import load_config
from scanner_agent.core.crashloop import REASON as CRASH_LOOP_REASON
from scanner_agent.core.errors import AgentStoppedTwice
from scanner_agent.core.states import ScanState
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import SCANNER_AGENT, DaemonProcess, flow_runs, records, sheet_csv, wait_for
from tests.faults.tools import (
    OnCreate,
    journal_integrity,
    leftovers,
    scans_left,
    sha256_bytes,
    sha256_file,
    sidecar,
    stored_files,
    unique_variant,
)
from tests.harness import write_config


@dataclass
class KillRun:
    """What one kill schedule did, for the report printed with the test."""

    kills: int = 0
    moments: Counter[str] = field(default_factory=Counter)
    stored_before_last_start: int = 0
    set_aside: int = 0
    seconds: float = 0.0


@pytest.fixture
def storage() -> Iterator[Path]:
    """Storage on another filesystem (tmpfs under /dev/shm), so every scan is really copied and verified."""
    path = Path("/dev/shm") / f"faults-sigkill-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _scans(base: Path, count: int, size: tuple[int, int]) -> dict[str, bytes]:
    """``count`` scans by barcode: a few real slides, each made unique (see ``unique_variant``)."""
    slides = [
        write_svs(base / f"slide{i}.svs", barcode=None, width=size[0], height=size[1], seed=i).read_bytes()
        for i in range(5)
    ]
    return {f"{700000 + i}": unique_variant(slides[i % len(slides)], f"{700000 + i}") for i in range(count)}


def _count(journal: Path, state: str) -> int:
    """Scans in ``state`` now (read-only: the test never writes the daemon's journal)."""
    if not journal.exists():
        return 0
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM scans WHERE state=?", (state,)).fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet
    finally:
        db.close()


def _until(condition: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _kill_at(
    moment: str,
    daemon: DaemonProcess,
    journal: Path,
    incoming: Path,
    rng: random.Random,
    *,
    max_delay: float,
    progress: int,
    total: int,
) -> None:
    """SIGKILL the daemon at one kind of moment, at a random point within it. When there is no such
    moment to be had (everything is stored), it is killed anyway."""
    if moment == "starting":  # somewhere in imports, crash recovery or the first listing
        time.sleep(rng.uniform(0.3, 4.0))
        return _kill(daemon)
    daemon.wait_watching()

    def over() -> bool:
        return _count(journal, ScanState.STORED) >= total or daemon.returncode() is not None

    # Let it store a few scans first, so the kills fall on different scans, not always the first.
    target = _count(journal, ScanState.STORED) + rng.randint(0, progress)
    _until(lambda: _count(journal, ScanState.STORED) >= target or over(), 60)
    if moment == "processing":  # somewhere in a flow run: sheet, validation, Prefect calls, the move
        if _until(lambda: _count(journal, ScanState.PROCESSING) > 0 or over(), 30) and not over():
            time.sleep(rng.uniform(0.0, max_delay))
    else:  # "copying": the instant a partial copy appears in storage, or a few ms later
        delay = rng.uniform(0.0, 0.03)
        trigger = OnCreate(
            incoming, ".partial", lambda _p: (time.sleep(delay), daemon.signal(signal.SIGKILL))
        )
        try:
            _until(lambda: bool(trigger.fired) or over(), 30)
        finally:
            trigger.close()
    _kill(daemon)


def _kill(daemon: DaemonProcess) -> None:
    if daemon.returncode() is None:
        daemon.kill()
    assert daemon.proc is not None and daemon.proc.wait(30) == -signal.SIGKILL, (
        f"the daemon exited on its own before it was killed\n{daemon.log_tail()}"
    )


def kill_and_restart_until_stored(
    tmp_path: Path,
    storage: Path,
    seed: int,
    *,
    count: int,
    kills: int,
    size: tuple[int, int],
    max_delay: float,
    progress: int,
) -> None:
    rng = random.Random(seed)
    (tmp_path / "slides").mkdir()
    scans = _scans(tmp_path / "slides", count, size)
    cfg = write_config(
        tmp_path / "site",
        name=f"Sigkill-{uuid.uuid4().hex[:6]}",
        sheet=sheet_csv(scans),
        storage={"root": str(storage), "reserve_bytes": 0},
        scanner={"settle_seconds": 0.3, "rescan_seconds": 3, "max_parallel": 2},
    )
    watch = tmp_path / "site" / "scanner"
    incoming = storage / "Prec01" / "Run-2" / ".incoming"
    # The scanner delivers in three batches while the agent is being killed.
    batches = [list(scans)[i::3] for i in range(3)]
    run = KillRun()
    t0 = time.monotonic()
    journal = load_config(cfg).journal.path
    for k in range(kills):
        if k < len(batches):
            for barcode in batches[k]:
                (watch / f"{barcode}.svs").write_bytes(scans[barcode])
        moment = rng.choices(("starting", "processing", "copying"), weights=(0.2, 0.5, 0.3))[0]
        with DaemonProcess(cfg, tmp_path / f"daemon-{k}.log") as daemon:
            _kill_at(
                moment, daemon, journal, incoming, rng, max_delay=max_delay, progress=progress, total=count
            )
        run.moments[moment] += 1
        run.kills += 1
    run.stored_before_last_start = len([r for r in records(journal) if r.state == ScanState.STORED])

    with DaemonProcess(cfg, tmp_path / "daemon-final.log") as daemon:
        daemon.wait_watching()
        # Two kills in a row can fall on the same scan: the crash-loop guard sets it aside at this
        # start, and `retry` is the documented way back.
        looped = [r for r in records(journal) if r.kind == AgentStoppedTwice.kind]
        assert all(r.reason == CRASH_LOOP_REASON for r in looped), looped
        if looped:
            subprocess.run(
                [str(SCANNER_AGENT), "retry", "--config", str(cfg)], check=True, capture_output=True
            )
        run.set_aside = len(looped)

        def all_done() -> bool:
            rows = records(journal)
            return len(
                [r for r in rows if r.state == ScanState.STORED and r.source_removed]
            ) >= count and not [r for r in rows if r.state in (ScanState.READY, ScanState.PROCESSING)]

        wait_for(
            all_done,
            120 + 3 * count,
            f"all {count} scans stored after {kills} kills",
            alive=daemon,
            interval=0.5,
        )
        assert daemon.terminate(120) == 0, daemon.log_tail()
    run.seconds = time.monotonic() - t0
    print(
        f"{run.kills} kills ({dict(run.moments)}), {run.stored_before_last_start}/{count} "
        f"stored before the last start, {run.set_aside} set aside as a crash loop, {run.seconds:.0f} s"
    )

    # --- every scan stored exactly once, byte-identical, with its sidecar -----------------------
    rows = records(journal)
    problems = [
        f"{r.path}: {r.state} ({r.kind}: {r.reason})" for r in rows if r.state not in (ScanState.STORED,)
    ]
    assert not problems, "scans not stored:\n" + "\n".join(problems)
    per_barcode = Counter(r.barcode for r in rows if r.state == ScanState.STORED)
    assert sorted(per_barcode) == sorted(scans) and set(per_barcode.values()) == {1}, per_barcode
    files = stored_files(storage)
    images = [p for p in files if p.suffix == ".svs"]
    sums = [p for p in files if p.name == "SHA256SUMS"]
    assert len(images) == count and len(files) == 2 * count + len(sums), [
        str(p) for p in files if p.suffix not in (".svs", ".json") and p.name != "SHA256SUMS"
    ]
    for folder in {p.parent for p in images}:
        done = subprocess.run(
            ["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=folder, capture_output=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert not [p for p in files if "superseded" in p.parts], "a scan was stored twice (as its own rescan)"
    for rec in rows:
        dest = Path(rec.dest or "")
        want = sha256_bytes(scans[rec.barcode or ""])
        assert sha256_file(dest) == want == rec.sha256, f"{dest} differs from what the scanner wrote"
        meta = sidecar(dest)
        assert meta["sha256"] == want and meta["barcode"] == rec.barcode

    # --- nothing left behind --------------------------------------------------------------------
    assert leftovers(storage) == [], "partial copies left in .incoming"
    assert scans_left(watch) == [], "sources left on the scanner (or in its quarantine)"
    assert journal_integrity(journal) == "ok"
    runs = flow_runs(load_config(cfg).flow_name)
    states = Counter(r.state.type.value for r in runs if r.state is not None)
    print(f"Prefect runs by state: {dict(states)}")
    assert not [r for r in runs if r.state is not None and r.state.type.value == "RUNNING"], states
    # Every scan's own run (the one the journal points at) ended Completed.
    by_id = {str(r.id): r for r in runs}
    unfinished = [
        r.path for r in rows if not (r.flow_run_id in by_id and by_id[r.flow_run_id].state.is_completed())
    ]
    assert not unfinished, f"scans whose run is not Completed: {unfinished}"


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, storage: Path, fault_seed: int, prefect_api: str
) -> None:
    kill_and_restart_until_stored(
        tmp_path, storage, fault_seed, count=50, kills=10, size=(512, 384), max_delay=1.5, progress=4
    )


@pytest.mark.slow
def test_sigkill_many_times_during_bigger_transfers(
    tmp_path: Path, storage: Path, fault_seed: int, prefect_api: str
) -> None:
    kill_and_restart_until_stored(
        tmp_path, storage, fault_seed, count=50, kills=30, size=(4096, 3072), max_delay=3.0, progress=1
    )
