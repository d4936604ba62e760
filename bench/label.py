"""Benchmark: reading a barcode off the slide's label picture, its decode rate and its time per slide.

    .venv/bin/python -m bench.label [--angles 24] [--quick]

Synthetic SVS slides (the real OpenSlide opens them) whose label is printed with a real code
(DataMatrix, QR, Code 128, Code 39), over a grid of looks a scanner's camera gives: turned by
every ``360/angles`` degrees, JPEG quality 90/50/25, Gaussian blur 0/0.8/1.6 px, contrast
1/0.35/0.2 (0.2: faint grey print). For each: does ``slides.find_barcode(..., sources=("label",))``
find the right barcode, and how long it takes (open the slide, read the label, decode).

Baseline, measured in the same run on the same slides: opening the slide with OpenSlide and
reading its properties (what the "metadata" source costs). The target is under 0.3 s per slide
on the label; the table prints the median and the 95th percentile, and their ratio to the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from scanner_agent.core import errors
from scanner_agent.core.barcode import compile_barcode_regex
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import find_barcode, read_properties
from scanner_agent.testing.artwork import code_label
from scanner_agent.testing.tiff_slides import write_labelled_svs

SYMBOLOGIES = ("DataMatrix", "QRCode", "Code128", "Code39")
QUALITIES = (90, 50, 25)
BLURS = (0.0, 0.8, 1.6)
CONTRASTS = (1.0, 0.35, 0.2)
BARCODE = "620995"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--angles", type=int, default=24, help="rotations tried, evenly over 360 degrees")
    ap.add_argument("--quick", action="store_true", help="6 angles, fewer looks (a smoke run)")
    args = ap.parse_args()
    n_angles = 6 if args.quick else args.angles
    angles = [i * 360 / n_angles for i in range(n_angles)]
    looks = list(itertools.product(angles, QUALITIES[:2] if args.quick else QUALITIES, BLURS, CONTRASTS))
    regex = compile_barcode_regex(r"(?<!\d)(?P<barcode>\d{6})(?!\d)")
    rows: list[tuple[str, int, int, list[float], list[float]]] = []
    misses: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-label-") as tmp:
        for sym in SYMBOLOGIES:
            ok, times, base = 0, [], []
            for i, (angle, q, blur, contrast) in enumerate(looks):
                label = code_label(
                    [(BARCODE, sym)], angle=angle, jpeg_quality=q, blur=blur, contrast=contrast
                )
                path = write_labelled_svs(Path(tmp) / f"{sym}_{i}.svs", label, width=512, height=384)
                unit = ScanUnit.from_path(path)
                t0 = time.perf_counter()
                read_properties(path)
                base.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                try:
                    found = find_barcode(unit, regex, sources=("label",)).barcode == BARCODE
                except errors.NoBarcode:
                    found = False
                times.append(time.perf_counter() - t0)
                ok += found
                if not found:
                    why = misses.setdefault(sym, {})
                    for key in (f"blur {blur:g}", f"contrast {contrast:g}", f"jpeg {q}"):
                        why[key] = why.get(key, 0) + 1
                path.unlink()
            rows.append((sym, ok, len(looks), times, base))

    print(
        f"\nLabel decoding, {len(looks)} looks per symbology ({n_angles} angles x quality x blur x contrast)"
    )
    print(
        f"{'symbology':<11} {'decoded':>12} {'median':>9} {'p95':>9} {'max':>9} {'baseline':>9} {'ratio':>6}"
    )
    all_times: list[float] = []
    all_base: list[float] = []
    for sym, ok, n, times, base in rows:
        all_times += times
        all_base += base
        med, b = statistics.median(times), statistics.median(base)
        print(
            f"{sym:<11} {ok:>4}/{n:<4} {ok / n:>5.0%} {med * 1000:>7.1f}ms {_p95(times) * 1000:>7.1f}ms "
            f"{max(times) * 1000:>7.1f}ms {b * 1000:>7.1f}ms {med / b:>5.1f}x"
        )
    total_ok = sum(r[1] for r in rows)
    total = sum(r[2] for r in rows)
    print(
        f"{'all':<11} {total_ok:>4}/{total:<4} {total_ok / total:>5.0%} "
        f"{statistics.median(all_times) * 1000:>7.1f}ms {_p95(all_times) * 1000:>7.1f}ms "
        f"{max(all_times) * 1000:>7.1f}ms {statistics.median(all_base) * 1000:>7.1f}ms "
        f"{statistics.median(all_times) / statistics.median(all_base):>5.1f}x"
    )
    print("baseline: OpenSlide open + properties of the same slide; target: under 300 ms per slide")
    for sym, why in misses.items():
        print(f"  missed {sym}: " + ", ".join(f"{k}: {v}" for k, v in sorted(why.items())))


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


if __name__ == "__main__":
    main()
