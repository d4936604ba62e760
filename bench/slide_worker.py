"""Benchmark: what parsing slides in the worker process adds per scan, against parsing in-process.

    .venv/bin/python -m bench.slide_worker [--scans 40]

The pipeline's three slide calls for one scan (Identify Barcode, from the name as in the agent,
Validate Slide, Check Quality) on the same 1 MiB slide as ``bench.overhead``, alternately with the
plain ``OpenSlideReader`` (in the agent's process, the baseline) and with the
``IsolatedSlideReader`` the agent uses (a warm worker), interleaved in the same run so machine load
hits both alike. Prints the medians and the difference per scan (target: at most +0.05 s).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from bench.latency import one_mb_slide, pct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=40)
    args = ap.parse_args()

    from scanner_agent.pipeline import IsolatedSlideReader, OpenSlideReader
    from scanner_agent.scanunit import ScanUnit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "620995.svs"
        path.write_bytes(one_mb_slide(path, "620995"))
        unit = ScanUnit.from_path(path)
        regex = re.compile(r"(?P<barcode>\d{6})")
        plain = OpenSlideReader()
        isolated = IsolatedSlideReader(OpenSlideReader(), memory_mb=2048, timeout_seconds=120)

        def one(reader: OpenSlideReader | IsolatedSlideReader) -> float:
            t = time.perf_counter()
            reader.find_barcode(unit, regex, sources=("name", "metadata"), keep_label=False)
            info = reader.validate(unit)
            reader.assess(info.thumbnail_png, blur_threshold=None, min_tissue_fraction=None)
            return time.perf_counter() - t

        t = time.perf_counter()
        one(isolated)  # the worker's start (imports), paid once per agent, not per scan
        start = time.perf_counter() - t
        one(plain)
        times: dict[str, list[float]] = {"in-process": [], "worker": []}
        for _ in range(args.scans):
            times["in-process"].append(one(plain))
            times["worker"].append(one(isolated))
        isolated.close()

    print(f"{args.scans} scans, 3 slide calls each (barcode, validate, QC); seconds")
    print(f"  {'':<34}{'p50':>8}{'p90':>8}")
    for name, values in times.items():
        print(f"  {name:<34}{statistics.median(values):>8.4f}{pct(values, 0.9):>8.4f}")
    diff = statistics.median(times["worker"]) - statistics.median(times["in-process"])
    paired = statistics.median(w - p for w, p in zip(times["worker"], times["in-process"], strict=True))
    print(f"  worker start (once per agent)     {start:>8.3f}")
    verdict = "met" if paired <= 0.05 else "NOT met"
    print(
        f"\n  added per scan: {diff:+.4f} s (medians), {paired:+.4f} s (median of pairs); "
        f"target <= +0.05 s: {verdict}"
    )


if __name__ == "__main__":
    main()
