"""Benchmark: what the daemon costs while nothing happens, with inotify and with polling.

    .venv/bin/python -m bench.idle [--files 10000] [--seconds 30] [--poll-interval 2.0]

A real ``scanner-agent run`` watches a folder holding ``--files`` files that are not scans
(scanner logs, XML sidecars, thumbnails, temporary names: nothing matching the slide patterns)
spread over a few sub-folders, the clutter a scanner PC's output folder collects. After the
start-up listing and a short warm-up, the daemon's CPU time (``utime + stime`` from
/proc/<pid>/stat) is sampled over ``--seconds``, and reported as CPU seconds per minute.

Rows: the same folder watched with inotify and with ``observer = "polling"``; baseline, in the
same run, the daemon watching an empty folder with inotify (its timers, the journal, the retry
poller: what any idle daemon costs). The full listing that runs at start and every
``rescan_seconds`` is timed separately, in-process, since a short window may or may not hold one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench._prefect import prefect_api

CLUTTER = (".log", ".xml", ".jpg", ".txt", ".tmp", ".ini")


def make_clutter(folder: Path, n: int, subfolders: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subs = [folder] + [folder / f"run-{i:02d}" for i in range(subfolders)]
    for s in subs:
        s.mkdir(exist_ok=True)
    for i in range(n):
        (subs[i % len(subs)] / f"scanner-{i:05d}{CLUTTER[i % len(CLUTTER)]}").write_bytes(b"x" * (i % 512))


def measure(
    base: Path, name: str, watch: Path, observer: str, seconds: float, warmup: float, poll_interval: float
) -> tuple[float, float]:
    """(CPU seconds per minute while idle, RSS MiB) for one daemon."""
    from tests.daemon_helpers import DaemonProcess, cpu_seconds, rss_now_kib, unique_scanner_name
    from tests.harness import write_config

    cfg = write_config(
        base / f"agent-{name}",
        name=unique_scanner_name("Idle"),
        scanner={
            "watch": str(watch),
            "observer": observer,
            "poll_interval": poll_interval,
            "settle_seconds": 30,
            "rescan_seconds": 300,
        },
    )
    with DaemonProcess(cfg, base / f"{name}.log") as d:
        d.wait_watching()
        time.sleep(warmup)
        c0, t0 = cpu_seconds(d.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(d.pid), time.monotonic()
        rss = rss_now_kib(d.pid) / 1024
        assert d.terminate() == 0
    return (c1 - c0) / (t1 - t0) * 60, rss


def listing_seconds(watch: Path, rounds: int = 5) -> float:
    from scanner_agent.config import DEFAULT_PATTERNS
    from scanner_agent.watch import discover_units

    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        found = discover_units(watch, DEFAULT_PATTERNS)
        times.append(time.perf_counter() - t)
        assert found == [], found
    return statistics.median(times)


def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-idle-", dir=args.dir))
    try:
        full, empty = base / "cluttered", base / "empty"
        make_clutter(full, args.files)
        empty.mkdir()
        rows = []
        for label, name, watch, observer in (
            ("empty folder, inotify (baseline)", "empty", empty, "inotify"),
            (f"{args.files:,} files, inotify", "inotify", full, "inotify"),
            (f"{args.files:,} files, polling every {args.poll_interval:g} s", "polling", full, "polling"),
        ):
            cpu, rss = measure(base, name, watch, observer, args.seconds, args.warmup, args.poll_interval)
            rows.append((label, cpu, rss))
            print(f"  measured: {label}", flush=True)
        listing = listing_seconds(full)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    base_cpu = rows[0][1]
    print(
        f"\nidle daemon, CPU over {args.seconds:g} s after a {args.warmup:g} s warm-up "
        f"(clutter: {args.files:,} non-slide files in 9 folders)"
    )
    print(f"  {'':44s} {'CPU s/min':>10s} {'% of a core':>12s} {'RSS MiB':>8s} {'x baseline':>11s}")
    for label, cpu, rss in rows:
        ratio = cpu / base_cpu if base_cpu > 0 else float("inf")
        print(f"  {label:44s} {cpu:10.3f} {cpu / 60 * 100:11.2f}% {rss:8.1f} {ratio:10.1f}x")
    print(
        "  one full listing of the cluttered folder (start-up, then every rescan_seconds): "
        f"{listing * 1000:.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=30, help="measuring window per daemon")
    ap.add_argument("--warmup", type=float, default=5, help="seconds after start-up before measuring")
    ap.add_argument(
        "--poll-interval", type=float, default=2.0, help="scanner.poll_interval for the polling row"
    )
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    with prefect_api():
        run(args)


if __name__ == "__main__":
    main()
