"""Benchmark: ``scanner-agent verify``'s pass against GNU ``sha256sum -c`` of the same files, same run.

    .venv/bin/python -m bench.verify [--files 6 --size-mb 128 --rounds 3 --dir /dev/shm]

Stores ``--files`` scans with ``place_scan`` (so the sidecars and ``SHA256SUMS`` are the real
ones), then alternates, round by round: ``sha256sum -c SHA256SUMS`` in that folder, and
``verify_pass`` over the storage root (unthrottled, as the ``verify`` command runs). On tmpfs
(the default) both read memory, so the figure is the hashing cost; on a disk ``verify`` drops
the page cache before reading (a fixity check must see the device) while ``sha256sum`` may read
cached pages, so it pays for honesty there. Prints MB/s for each and the ratio verify/sha256sum.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.fixity import verify_pass
from scanner_agent.storage import place_scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--size-mb", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.dir))
    try:
        root = base / "storage"
        dest = root / "Study" / "Run"
        chunk = os.urandom(1 << 20)
        for i in range(args.files):
            src = base / "scanner" / f"s{i}.svs"
            src.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "wb") as f:
                for _ in range(args.size_mb):
                    f.write(chunk[i:] + chunk[:i])
            place_scan(ScanUnit.from_path(src), dest, f"S_{i:06d}.svs", sidecar={"barcode": f"{i:06d}"})
            src.unlink()
        total = args.files * args.size_mb * (1 << 20)
        rates: dict[str, list[float]] = {"sha256sum -c": [], "verify": []}
        for _ in range(args.rounds):
            t = time.perf_counter()
            subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dest, check=True)
            rates["sha256sum -c"].append(total / 1e6 / (time.perf_counter() - t))
            t = time.perf_counter()
            result = verify_pass(root, "", None, by="bench")
            rates["verify"].append(total / 1e6 / (time.perf_counter() - t))
            assert result.count("verified") == args.files and not result.problems, result.problems
        print(
            f"{args.files} files x {args.size_mb} MiB on {args.dir or tempfile.gettempdir()}, "
            f"{args.rounds} rounds"
        )
        for name, r in rates.items():
            print(
                f"  {name:<14} median {statistics.median(r):7.0f} MB/s   "
                f"(rounds: {', '.join(f'{x:.0f}' for x in r)})"
            )
        ratio = statistics.median(rates["verify"]) / statistics.median(rates["sha256sum -c"])
        print(f"  ratio verify / sha256sum: {ratio:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
