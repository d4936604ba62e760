"""Benchmark: the scanner's view. Does a scan being written slow down while the agent works a backlog?

    .venv/bin/python -m bench.gentle [--scan-gb 2] [--backlog 4] [--backlog-gb 1] [--settle 2]
                                    [--scanning-mb-per-second 50] [--rounds 3] [--quiet-seconds 20]
                                    [--dir /tmp] [--storage-dir /dev/shm] [--prefect-dir /dev/shm]
                                    [--io-class best-effort|idle] [--scheduler bfq]

A simulated scanner writes one scan of ``--scan-gb`` at full speed into the watch folder (8 MiB
writes through one handle, ``fdatasync`` every 64 MiB and at the end, so its rate is the disk's
and not the page cache's) while a real daemon (``scanner-agent run``, the whole pipeline against a
local Prefect server) works through a backlog of ``--backlog`` scans of ``--backlog-gb`` each
(real SVS files, padded) found in the same watch folder at start. The scanner starts writing when
the agent's first copy has started. Storage is on another filesystem (``--storage-dir``, tmpfs by
default, standing in for a fast share), so every scan is a verified copy that reads the scanner's
disk, never a hard link.

The Prefect server a lab runs lives on another machine; here it runs locally (on this machine's
cores), with its SQLite database on ``--prefect-dir`` (tmpfs by default), not on the scanner's
disk: its commits would otherwise count as the agent's writes against the scanner's.

Measured in the same run, interleaved so drift on a shared machine hits both alike:

* the scanner's write alone (no agent running; median of ``--alone-runs``): the baseline;
* the same write with the agent working, ``[transfer] yield_while_scanning = true`` (the default);
* again alone, then with ``yield_while_scanning = false``; and so on for ``--rounds`` rounds.

Before every write, alone or with the agent, the disk is synced and left ``--quiet-seconds`` (see
``quiet``: on a thin-provisioned disk the time since the last delete swings a write 2-4x). Each
agent run's baseline is the mean of the writes alone just before and just after it (a VM's
disk swings 2x from minute to minute). Per setting it prints, as medians over the rounds, the
scanner's throughput against its baseline (target >= 0.9), the backlog's completion time (first
copy started -> last scan stored), and the agent's CPU-seconds per GB of backlog (the daemon and
its slide-reader processes, from /proc; the Prefect server is not counted; per-scan costs such as
the flow run and OpenSlide are included). The daemon runs at ``--nice`` (10, the unit's ``Nice=``);
the unit's ``CPUWeight=`` needs a cgroup and is not applied.
On a machine with few cores the scanner's writer competes with the agent for CPU, not only for
the disk: run it with ``uptime`` in view. The disk's I/O scheduler is printed too: ``ioprio``
classes only matter to schedulers that honour them (bfq; mq-deadline for the idle class);
``--scheduler bfq`` puts the scanner's disk on bfq for the run and back afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._pagecache import evict
from bench._prefect import prefect_api
from scanner_agent.core.states import ScanState

GB = 1_000_000_000
CHUNK = 8 << 20
SYNC_EVERY = 64 << 20
#: A barcode with no row in the sheet: the scanner's own scan is held once written (no copy), so
#: the backlog is all the agent moves.
SCANNER_BARCODE = "999001"


def _block() -> bytearray:
    return bytearray(os.urandom(CHUNK))


def scanner_write(path: Path, size: int, block: bytearray) -> float:
    """Write ``size`` bytes at full speed as a scanner does; seconds until they are on the device."""
    view = memoryview(block)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = since_sync = 0
        while done < size:
            block[:8] = done.to_bytes(8, "little")  # no two chunks alike: nothing can deduplicate them
            n = os.write(fd, view[: min(CHUNK, size - done)])
            done += n
            since_sync += n
            if since_sync >= SYNC_EVERY:
                os.fdatasync(fd)
                since_sync = 0
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t


def make_backlog(folder: Path, barcodes: list[str], size: int) -> list[Path]:
    """Real SVS slides padded to ``size``, an hour old (a backlog, not scans being written)."""
    from bench.latency import one_mb_slide

    folder.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(CHUNK))
    out = []
    for bc in barcodes:
        p = folder / f"{bc}.svs"
        head = one_mb_slide(folder / "tmp.svs", bc)
        with open(p, "wb") as f:
            f.write(head)
            left = size - len(head)
            while left > 0:
                block[:8] = left.to_bytes(8, "little")
                left -= f.write(memoryview(block)[: min(CHUNK, left)])
            os.fsync(f.fileno())
        old = time.time() - 3600
        os.utime(p, (old, old))
        out.append(p)
    return out


def family(pid: int) -> set[int]:
    """``pid`` and every live descendant."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(text[text.rindex(")") + 2 :].split()[1])
    out, grew = {pid}, True
    while grew:
        more = {p for p, ppid in parents.items() if ppid in out} - out
        out |= more
        grew = bool(more)
    return out


def tree_read_bytes(pid: int) -> int:
    """Bytes ``pid`` and its live descendants have had read from a block device (``/proc/*/io``):
    what the agent took from the scanner's disk (O_DIRECT included; tmpfs and page-cache hits not)."""
    total = 0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/io").read_text().splitlines():
                if line.startswith("read_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (plus the children they have reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in family(pid):
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        # after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14), 0-based from state
        total += sum(int(x) for x in fields[11:15]) / tick
    return total


def agent_run(
    args: argparse.Namespace, base: Path, masters: list[Path], barcodes: list[str], yield_: bool
) -> dict[str, Any]:
    """One daemon against a fresh watch folder holding the backlog; the scanner writes meanwhile."""
    from scanner_agent.journal import Journal
    from tests.daemon_helpers import DaemonProcess, sheet_csv, unique_scanner_name, wait_for
    from tests.harness import write_config

    run_dir = base / f"agent-{'yield' if yield_ else 'noyield'}"
    storage = Path(tempfile.mkdtemp(prefix="bench-gentle-store-", dir=args.storage_dir))
    try:
        cfg = write_config(
            run_dir,
            name=unique_scanner_name("Gentle"),
            sheet=sheet_csv(barcodes),
            scanner={"watch": str(base / "watch"), "settle_seconds": args.settle},
            storage={"root": str(storage)},
            transfer={
                "yield_while_scanning": yield_,
                "scanning_mb_per_second": args.scanning_mb_per_second,
                "io_class": args.io_class,
            },
        )
        watch = base / "watch"
        for m in masters:  # a second name for each slide: the next run finds the same backlog
            os.link(m, watch / m.name)
        evict(masters)
        quiet(args)  # the daemon's start-up and first copy take longer than this, too
        scan = watch / f"{SCANNER_BARCODE}.svs"
        with DaemonProcess(cfg, run_dir / "daemon.log") as d:
            if args.nice:
                # As the unit's Nice=: set on the daemon's process group (every thread of it, linux)
                # before its first thread is made, so every thread and child inherits it.
                os.setpriority(os.PRIO_PGRP, d.pid, args.nice)
            journal = Journal(d.cfg.journal.path)
            try:
                wait_for(
                    lambda: any(storage.rglob("*.partial")),
                    300,
                    "the first copy to start",
                    interval=0.02,
                    alive=d,
                )
                t0, cpu0, read0 = time.perf_counter(), tree_cpu(d.pid), tree_read_bytes(d.pid)
                seconds = scanner_write(scan, int(args.scan_gb * GB), _block())
                read_while_scanning = tree_read_bytes(d.pid) - read0
                stored = wait_for(
                    lambda: len(journal.in_state(ScanState.STORED)) >= len(barcodes) or None,
                    3600,
                    "the backlog to be stored",
                    interval=0.1,
                    alive=d,
                )
                backlog_s, cpu = time.perf_counter() - t0, tree_cpu(d.pid) - cpu0
                assert stored
            finally:
                journal.close()
            assert d.terminate() == 0, d.log_tail()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        for p in watch.iterdir():
            if p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
    return {
        "scan_s": seconds,
        "backlog_s": backlog_s,
        "cpu": cpu,
        "read_mb_s": read_while_scanning / 1e6 / seconds,
    }


def quiet(args: argparse.Namespace) -> None:
    """Let the disk settle as it has before the write with the agent: the last scan's blocks freed
    and committed ``--quiet-seconds`` ago.

    On a thin-provisioned VM disk mounted with ``discard`` (this machine's), a write runs 2-4x
    faster into blocks freed a moment ago than after the filesystem has committed and discarded
    them: back to back, the writes alone would be measured on a warmer disk than the write with
    the agent, which comes after the daemon's start-up. Measured here (2 GB, after a 2 GB write
    and delete): 408-467 MB/s 8 s after the delete, 295-314 MB/s after 15, 20, 30 or 45 s. So the
    default wait is past that knee, and the write with the agent (this wait, then the daemon's
    start-up) lands on the same plateau as the writes alone."""
    os.sync()
    time.sleep(args.quiet_seconds)


def alone(args: argparse.Namespace, base: Path) -> float:
    """The scanner's write with no agent running: median seconds of ``--alone-runs`` writes."""
    scan = base / "watch" / f"{SCANNER_BARCODE}.svs"
    block, times = _block(), []
    for _ in range(args.alone_runs):
        try:
            quiet(args)
            times.append(scanner_write(scan, int(args.scan_gb * GB), block))
        finally:
            scan.unlink(missing_ok=True)
    return statistics.median(times)


def scheduler_file(path: Path) -> Path | None:
    """``/sys/.../queue/scheduler`` of the disk holding ``path`` (a partition's is its disk's)."""
    dev = os.stat(path).st_dev
    sysdir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for q in (sysdir / "queue" / "scheduler", sysdir.resolve().parent / "queue" / "scheduler"):
        if q.exists():
            return q
    return None


def scheduler_of(path: Path) -> str:
    """The I/O scheduler of the disk holding ``path`` (``[mq-deadline]``), as far as /sys tells."""
    q = scheduler_file(path)
    try:
        return q.read_text().strip() if q else "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def scheduler(path: Path, name: str | None) -> Iterator[None]:
    """Run with the disk holding ``path`` on the I/O scheduler ``name`` (as root), then put the
    one in force back; None leaves it alone."""
    q = scheduler_file(path)
    if name is None:
        yield
        return
    if q is None:
        raise SystemExit(f"--scheduler: no I/O scheduler to set for the disk of {path}")
    was = q.read_text().split("[")[1].split("]")[0]
    q.write_text(name)
    try:
        yield
    finally:
        q.write_text(was)


def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-gentle-", dir=args.dir))
    #: per setting, one (scanner's seconds alone, agent run) per round
    runs: dict[bool, list[tuple[float, dict[str, Any]]]] = {True: [], False: []}
    try:
        (base / "watch").mkdir()
        barcodes = [f"{610000 + i}" for i in range(args.backlog)]
        masters = make_backlog(base / "masters", barcodes, int(args.backlog_gb * GB))
        alone(args, base)  # warm-up: the first write of a fresh file pays for allocation
        # The disk of a VM swings 2x from minute to minute: each agent run is bracketed by writes
        # alone just before and just after it, and the settings take turns round by round.
        before = alone(args, base)
        for _ in range(args.rounds):
            for yield_ in (True, False):
                got = agent_run(args, base, masters, barcodes, yield_)
                after = alone(args, base)
                runs[yield_].append(((before + after) / 2, got))
                before = after
    finally:
        shutil.rmtree(base, ignore_errors=True)

    scan_mb = args.scan_gb * GB / 1e6
    backlog_gb = args.backlog * args.backlog_gb
    print(
        f"\nscanner writes {args.scan_gb:g} GB at full speed while the agent moves a backlog of "
        f"{args.backlog} x {args.backlog_gb:g} GB ({args.dir} -> {args.storage_dir}); "
        f"settle_seconds {args.settle:g}, scanning_mb_per_second {args.scanning_mb_per_second:g}, "
        f"agent at nice {args.nice}, io_class {args.io_class}; Prefect server's home in "
        f"{args.prefect_dir}; {args.rounds} round(s); "
        f"disk scheduler {scheduler_of(args.dir)}; load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  {'yield_while_scanning':22s} {'alone MB/s':>11s} {'with agent':>11s} {'ratio':>7s} "
        f"{'backlog s':>10s} {'agent CPU s/GB':>15s} {'agent read MB/s':>16s}   "
        "per round: ratio (alone/with MB/s, backlog s)"
    )
    ratio: dict[bool, float] = {}
    for yield_, rows in runs.items():
        ratios = [base_s / got["scan_s"] for base_s, got in rows]
        ratio[yield_] = statistics.median(ratios)
        print(
            f"  {str(yield_).lower():22s} "
            f"{scan_mb / statistics.median(b for b, _ in rows):11.0f} "
            f"{scan_mb / statistics.median(g['scan_s'] for _, g in rows):11.0f} "
            f"{ratio[yield_]:7.2f} {statistics.median(g['backlog_s'] for _, g in rows):10.1f} "
            f"{statistics.median(g['cpu'] for _, g in rows) / backlog_gb:15.2f} "
            f"{statistics.median(g['read_mb_s'] for _, g in rows):16.0f}   "
            + "  ".join(
                f"{r:.2f} ({scan_mb / b:.0f}/{scan_mb / g['scan_s']:.0f}, {g['backlog_s']:.0f})"
                for r, (b, g) in zip(ratios, rows, strict=True)
            )
        )
    print(
        f"\n  with yield_while_scanning = true the scanner keeps {ratio[True]:.2f} of its own speed "
        f"(median of rounds; target >= 0.9: {'met' if ratio[True] >= 0.9 else 'NOT met'}); "
        f"without it {ratio[False]:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan-gb", type=float, default=2.0, help="size of the scan the scanner writes")
    ap.add_argument("--backlog", type=int, default=4, help="scans waiting when the agent starts")
    ap.add_argument("--backlog-gb", type=float, default=1.0, help="size of each backlog scan")
    ap.add_argument("--settle", type=float, default=2.0, help="scanner.settle_seconds for the daemon")
    ap.add_argument("--scanning-mb-per-second", type=float, default=50.0)
    ap.add_argument(
        "--io-class", choices=["best-effort", "idle"], default="best-effort", help="[transfer] io_class"
    )
    ap.add_argument(
        "--scheduler",
        help="put the scanner's disk on this I/O scheduler for the run (bfq honours io_class; as root)",
    )
    ap.add_argument("--nice", type=int, default=10, help="the daemon's nice value, as the unit's Nice=")
    ap.add_argument("--alone-runs", type=int, default=3, help="baseline writes between agent runs (median)")
    ap.add_argument("--rounds", type=int, default=3, help="agent runs per setting, taking turns")
    ap.add_argument(
        "--quiet-seconds",
        type=float,
        default=20.0,
        help="sync and wait this long before each write, alone or not (past the disk's discard knee)",
    )
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="the scanner's disk")
    ap.add_argument(
        "--storage-dir", type=Path, default=Path("/dev/shm"), help="storage, on another filesystem"
    )
    ap.add_argument(
        "--prefect-dir",
        type=Path,
        default=Path("/dev/shm"),
        help="where the local Prefect server keeps its database: off the scanner's disk, as on "
        "the lab's server (its CPU still competes on this machine)",
    )
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with prefect_api(home_parent=args.prefect_dir), scheduler(args.dir, args.scheduler):
        run(args)


if __name__ == "__main__":
    main()
