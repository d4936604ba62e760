"""Gentle transfers with real parts: [transfer] config errors, the real ioprio_set (and its refusal),
a real verified copy paced through the gate, and the real watcher's "a scan is still growing" signal."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.config import load_config
from scanner_agent.core.errors import ConfigError
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage import IoPriority, TransferGate, place_scan
from scanner_agent.storage.ioprio import CLASSES, IOPRIO_CLASS_SHIFT, current
from scanner_agent.watch import ScanWatcher


def config_file(tmp_path: Path, transfer: str) -> Path:
    (tmp_path / "watch").mkdir(exist_ok=True)
    (tmp_path / "store").mkdir(exist_ok=True)
    (tmp_path / "sheet.csv").write_text("REQUIRED\nBarcode\n", encoding="utf-8")
    p = tmp_path / "agent.toml"
    p.write_text(
        f"""
[scanner]
name = "Gentle"
watch = "{tmp_path / "watch"}"
[storage]
root = "{tmp_path / "store"}"
[sheet]
csv = "{tmp_path / "sheet.csv"}"
[journal]
path = "{tmp_path / "j.sqlite"}"
[transfer]
{transfer}
""",
        encoding="utf-8",
    )
    return p


@pytest.mark.parametrize(
    "line",
    [
        "max_mb_per_second = 0",
        "max_mb_per_second = -5",
        "max_mb_per_second = 1e12",
        "scanning_mb_per_second = 0",
        'max_mb_per_second = "fast"',
    ],
)
def test_bad_rates_are_config_errors_naming_the_key(tmp_path: Path, line: str) -> None:
    key = line.split()[0]
    with pytest.raises(ConfigError, match=rf"transfer\.{key}"):
        load_config(config_file(tmp_path, line))


def test_defaults_and_a_valid_section(tmp_path: Path) -> None:
    cfg = load_config(config_file(tmp_path, ""))
    t = cfg.transfer
    assert (t.max_mb_per_second, t.yield_while_scanning, t.scanning_mb_per_second) == (None, True, 50)
    assert (t.io_class, t.io_priority_level) == ("best-effort", 7)
    cfg = load_config(config_file(tmp_path, 'max_mb_per_second = 80\nio_class = "idle"\nstall_hours = 2'))
    assert cfg.transfer.max_mb_per_second == 80 and cfg.transfer.io_class == "idle"
    with pytest.raises(ConfigError, match=r"transfer\.io_class"):
        load_config(config_file(tmp_path, 'io_class = "realtime"'))


def _in_thread(fn) -> object:  # type: ignore[no-untyped-def]
    """Run ``fn`` in a fresh thread (ioprio_set changes only the calling thread) and return its result."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_ioprio_is_set_on_the_calling_thread_only() -> None:
    def idle_then_read() -> tuple[int, bool]:
        prio = IoPriority("idle")
        ok = prio.check()  # tries it, then puts the thread's priority back
        after_check = current()
        prio.apply()
        return after_check, ok and current() == CLASSES["idle"] << IOPRIO_CLASS_SHIFT

    before = current()
    after_check, applied = _in_thread(idle_then_read)  # type: ignore[misc]
    assert applied and after_check == before
    assert current() == before  # the test's own thread is untouched


def test_ioprio_refused_warns_once_and_the_copy_runs_on(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The kernel really refuses (EINVAL for a class it does not know, as a container's seccomp gives
    EPERM): one warning at start, none per copy thread, and the copy completes verified."""
    prio = IoPriority("best-effort", class_number=7)
    with caplog.at_level(logging.WARNING, logger="scanner_agent.storage.ioprio"):
        assert prio.check() is False
        gate = TransferGate(io_priority=prio)
        src = tmp_path / "src" / "a.svs"
        src.parent.mkdir()
        data = os.urandom(3_000_000)
        src.write_bytes(data)
        r = place_scan(
            ScanUnit.from_path(src),
            Path("/dev/shm") / f"gentle-{os.getpid()}",
            "N.svs",
            sidecar={},
            gate=gate,
        )
    try:
        assert r.dest.read_bytes() == data
        warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
        assert len(warnings) == 1 and "refused" in warnings[0].getMessage(), warnings
        assert prio.refused and "Invalid argument" in prio.refused
    finally:
        import shutil

        shutil.rmtree(r.dest.parent, ignore_errors=True)


def test_copy_threads_run_at_the_configured_priority(tmp_path: Path) -> None:
    """The copy engine's reader applies the gate's priority: seen from inside the read pacing."""
    seen: list[int] = []

    class Spy(TransferGate):
        def take(self, n: int) -> None:
            seen.append(current())
            super().take(n)

    gate = Spy(io_priority=IoPriority("idle"))
    src = tmp_path / "a.svs"
    src.write_bytes(os.urandom(1 << 20))
    dest = Path("/dev/shm") / f"gentle-prio-{os.getpid()}"
    try:
        place_scan(ScanUnit.from_path(src), dest, "N.svs", sidecar={}, bufsize=256 << 10, gate=gate)
    finally:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
    assert seen and set(seen) == {CLASSES["idle"] << IOPRIO_CLASS_SHIFT}
    assert gate.bytes_taken >= 1 << 20


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Path]:
    w = tmp_path / "watch"
    w.mkdir()
    yield w


def test_a_scan_growing_forever_keeps_transfers_throttled_and_raises_the_stall_alert(watch: Path) -> None:
    """The real watcher sees a scan keep growing: the gate slows to the scanning rate for as long as
    it grows, every chunk still goes through, and past stall time the alert fires once."""
    watcher = ScanWatcher(watch, lambda u: None, settle_seconds=0.6, rescan_seconds=0.2, poll_interval=0.1)
    stalls: list[tuple[object, float]] = []
    gate = TransferGate(None, scanning_rate=200e6)
    gate.follow(watcher.growing, stall_seconds=1.5, on_stall=lambda s, t: stalls.append((s, t)))
    growing = watch / "forever.svs"
    stop = threading.Event()

    def scanner() -> None:
        with open(growing, "ab") as f:
            while not stop.is_set():
                f.write(b"x" * 4096)
                f.flush()
                time.sleep(0.05)

    t = threading.Thread(target=scanner)
    watcher.start()
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not stalls and time.monotonic() < deadline:
            gate.take(64 << 10)
            time.sleep(0.02)
        assert gate.is_scanning and gate.current_rate() == 200e6
        assert len(stalls) == 1 and Path(str(getattr(stalls[0][0], "primary", ""))) == growing
    finally:
        stop.set()
        t.join()
    # It stops growing: once the settle window passes, full speed again.
    deadline = time.monotonic() + 30
    while gate.is_scanning and time.monotonic() < deadline:
        gate.poll()
        time.sleep(0.1)
    watcher.stop()
    assert not gate.is_scanning and gate.current_rate() is None
    assert len(stalls) == 1


def test_the_first_write_of_a_scan_slows_the_gate_before_the_watcher_names_the_scan(watch: Path) -> None:
    """Real watchdog: a file created and written in the watch folder counts as scanning at once
    (``written_lately``); the agent's own notes in a dot-folder (the quarantine) do not."""
    watcher = ScanWatcher(watch, lambda u: None, settle_seconds=30, rescan_seconds=60, poll_interval=0.1)
    gate = TransferGate(None, scanning_rate=50e6)
    gate.follow(lambda: {}, written_lately=watcher.written_lately)  # growing() never says so here
    (watch / ".quarantine").mkdir()
    watcher.start()
    try:
        time.sleep(0.5)  # the observer is listening
        (watch / ".quarantine" / "old.svs.reason.txt").write_text("corrupt\n")
        time.sleep(0.5)
        gate.poll()
        assert not gate.is_scanning

        with open(watch / "new.svs", "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            deadline = time.monotonic() + 30
            while not gate.is_scanning and time.monotonic() < deadline:
                time.sleep(0.01)
                gate.poll()
            assert gate.is_scanning and gate.current_rate() == 50e6

        deadline = time.monotonic() + 30  # no more writes: two ticks later, full speed
        while gate.is_scanning and time.monotonic() < deadline:
            time.sleep(0.05)
            gate.poll()
        assert not gate.is_scanning
    finally:
        watcher.stop()
