"""Benchmark: a burst of small scans dropped at once; throughput and the daemon's memory.

    .venv/bin/python -m bench.burst [--burst 500] [--total 2000] [--big] [--workers 2] [--database postgres]

A real ``scanner-agent run`` watches an empty folder. ``--burst`` small slides (a 256x256 SVS,
~220 KB, each under its own barcode, every barcode in the sheet) are renamed into it at once;
the figures are scans stored per second (first ready -> last stored, from the journal) and the
daemon's peak resident set (``VmHWM`` in /proc/<pid>/status). Then more bursts of the same size
follow until ``--total`` scans (default 2,000; ``--big``: 5,000) have been stored, and the
resident set after the last is compared with the one after the first burst: growth should stay
within 10 % (the journal and Prefect keep history, the daemon should not).

Baseline, measured in the same run: the bare ``transfer.place_scan`` of the same files,
in-process, one after another; and the daemon's resident set when idle after start-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench._prefect import prefect_api, server_log_count
from scanner_agent.core.states import ScanState


def baseline_rate(template: Path, base: Path, n: int) -> float:
    from scanner_agent.scanunit import ScanUnit
    from scanner_agent.storage import place_scan

    src_dir, dest = base / "base-src", base / "base-dest"
    src_dir.mkdir()
    srcs = []
    for i in range(n):
        shutil.copyfile(template, src_dir / f"{i}.svs")
        srcs.append(src_dir / f"{i}.svs")
    t = time.perf_counter()
    for i, s in enumerate(srcs):
        place_scan(ScanUnit.from_path(s), dest, f"B_{i}.svs", sidecar={"bench": True})
    return n / (time.perf_counter() - t)


def run(args: argparse.Namespace) -> None:
    from scanner_agent.journal import Journal
    from scanner_agent.testing.synthetic import write_svs
    from tests.daemon_helpers import (
        DaemonProcess,
        rss_now_kib,
        rss_peak_kib,
        sheet_csv,
        unique_scanner_name,
        wait_for,
    )
    from tests.harness import write_config

    total = 5000 if args.big else args.total
    bursts = max(1, -(-total // args.burst))
    base = Path(tempfile.mkdtemp(prefix="bench-burst-", dir=args.dir))
    try:
        barcodes = [f"{100000 + i}" for i in range(bursts * args.burst)]
        cfg = write_config(
            base,
            name=unique_scanner_name("Burst"),
            sheet=sheet_csv(barcodes),
            scanner={"max_parallel": args.workers, "settle_seconds": 1.0},
        )
        template = write_svs(base / "template.svs", width=256, height=256)
        staging = base / "staging"
        staging.mkdir()
        watch = base / "scanner"
        locked_before = server_log_count("database is locked")
        with DaemonProcess(cfg, base / "daemon.log") as d:
            d.wait_watching()
            time.sleep(3)
            idle_rss = rss_now_kib(d.pid)
            journal = Journal(d.cfg.journal.path)
            per_burst: list[tuple[int, float, int, int]] = []  # (stored so far, scans/s, VmRSS, VmHWM)
            try:
                for b in range(bursts):
                    chunk = barcodes[b * args.burst : (b + 1) * args.burst]
                    for bc in chunk:  # staged on the same filesystem, so each drop is one rename
                        shutil.copyfile(template, staging / f"{bc}.svs")
                    t0 = time.time()
                    for bc in chunk:
                        os.rename(staging / f"{bc}.svs", watch / f"{bc}.svs")
                    want = (b + 1) * args.burst
                    wait_for(
                        lambda want=want: journal.counts()[ScanState.STORED] >= want,
                        3600,
                        f"{want} scans stored",
                        interval=0.5,
                        alive=d,
                    )
                    rows = [r for r in journal.in_state(ScanState.STORED) if Path(r.path).stem in set(chunk)]
                    first_ready = min(r.ready_at or t0 for r in rows)
                    last_stored = max(r.stored_at or t0 for r in rows)
                    rate = len(rows) / (last_stored - first_ready)
                    per_burst.append((want, rate, rss_now_kib(d.pid), rss_peak_kib(d.pid)))
                    print(
                        f"  burst {b + 1}/{bursts}: {len(rows)} stored at {rate:5.2f} scans/s; "
                        f"daemon RSS {per_burst[-1][2] / 1024:6.1f} MiB "
                        f"(peak {per_burst[-1][3] / 1024:6.1f} MiB)",
                        flush=True,
                    )
                counts = journal.counts()
            finally:
                journal.close()
            assert d.terminate(600) == 0
        locked = server_log_count("database is locked")
        base_rate = baseline_rate(template, base, min(args.burst, 200))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    first = per_burst[0]
    last = per_burst[-1]
    print(
        f"\n{bursts} burst(s) of {args.burst} small scans (256x256 SVS), max_parallel = {args.workers}; "
        f"journal at the end: {counts}"
    )
    print(
        f"  throughput, first burst:      {first[1]:6.2f} scans/s  "
        f"(bare place_scan: {base_rate:6.1f} scans/s, "
        f"{base_rate / first[1]:.0f}x)"
    )
    print(f"  throughput, median of bursts: {statistics.median(r for _, r, _, _ in per_burst):6.2f} scans/s")
    print(
        f"  peak RSS (VmHWM) after {first[0]}: {first[3] / 1024:6.1f} MiB; idle after start: "
        f"{idle_rss / 1024:.1f} MiB ({first[3] / idle_rss:.2f}x)"
    )
    if len(per_burst) > 1:
        growth = (last[2] - first[2]) / first[2] * 100
        print(
            f"  RSS after {first[0]}: {first[2] / 1024:6.1f} MiB; after {last[0]}: {last[2] / 1024:6.1f} MiB "
            f"-> {growth:+.1f} % (target within 10 %: {'met' if abs(growth) <= 10 else 'NOT met'}); "
            f"peak after {last[0]}: {last[3] / 1024:.1f} MiB"
        )
    else:
        print("  (one burst only: no growth figure; pass --total larger than --burst)")
    if locked is not None and locked_before is not None:
        print(f"  'database is locked' in the Prefect server's log during the run: {locked - locked_before}")
    if not args.big:
        print(f"  (ran {bursts * args.burst} scans; --big runs 5,000 for the growth check)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst", type=int, default=500, help="scans dropped at once")
    ap.add_argument("--total", type=int, default=2000, help="scans in all, in bursts (the growth check)")
    ap.add_argument("--big", action="store_true", help="5,000 scans in all")
    ap.add_argument("--workers", type=int, default=2, help="scanner.max_parallel")
    ap.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the database of the server started for the run (ignored with PREFECT_API_URL)",
    )
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    with prefect_api(database=args.database):
        run(args)


if __name__ == "__main__":
    main()
