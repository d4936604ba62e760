"""Soak: the daemon for a while under a steady scanner and random faults; does anything drift?

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 6] [--fault-every 40] [--seed N]

A real ``scanner-agent run`` (subprocess) watches a folder that a simulated scanner writes to at
``--rate`` scans a minute (real SVS slides, each written slowly through one handle, as scanners
do). About every ``--fault-every`` seconds a random fault strikes:

- ``corrupt``: a truncated slide with a known barcode (must be quarantined, never stored);
- ``unknown``: a valid slide whose barcode is not in the sheet (must be held, alerted);
- ``readonly``: storage (a tmpfs this script mounts) remounted read-only for 10-20 s (needs root);
- ``sigkill``: the daemon killed with SIGKILL and started again (once, at a random moment in the
  first third of the run, so that the daemon started after it lives long enough to measure).

At the end the scanner stops, the daemon drains its queue and is stopped, and the script prints:
scans written/stored/held/quarantined, lost (a valid scan neither stored nor still on the scanner:
must be 0), duplicates and ``.incoming`` leftovers (must be 0), alerts (Slack posts by title,
the journal's alert outbox), error lines in the daemon's logs, time from written to stored, and
the daemon's RSS a warm-up after it (last) started and at the end, with the growth in percent.
Alerts go to a Slack Web API on 127.0.0.1 (tests/servers/slack_api.py).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench._prefect import prefect_api
from scanner_agent.core.states import ScanState

W, H = 1024, 768
WARMUP_SECONDS = 30


@dataclass
class Written:
    """What the simulated scanner wrote, by barcode."""

    valid: dict[str, str] = field(default_factory=dict)  # barcode -> sha256
    at: dict[str, float] = field(default_factory=dict)  # barcode -> time the write finished
    corrupt: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Scanner(threading.Thread):
    """Writes one scan every ``60 / rate`` seconds into the watch folder, slowly, until stopped."""

    def __init__(
        self, watch: Path, slides: list[bytes], barcodes: list[str], rate: float, written: Written
    ) -> None:
        super().__init__(name="simulated scanner", daemon=True)
        self.watch, self.slides, self.barcodes, self.rate, self.written = (
            watch,
            slides,
            barcodes,
            rate,
            written,
        )
        self.stop = threading.Event()
        self.extra: list[tuple[str, bytes, str]] = []  # faults to write next: (file name, bytes, kind)
        self.extra_lock = threading.Lock()

    def run(self) -> None:
        from tests.daemon_helpers import write_slowly
        from tests.faults.tools import sha256_bytes, unique_variant

        i = 0
        while not self.stop.wait(60 / self.rate):
            with self.extra_lock:
                extra, self.extra = self.extra, []
            for name, data, kind in extra:
                write_slowly(data, self.watch / name, chunk=64 << 10, interval=0.05)
                with self.written.lock:
                    (self.written.corrupt if kind == "corrupt" else self.written.unknown).append(name)
            barcode = self.barcodes[i]
            data = unique_variant(self.slides[i % len(self.slides)], barcode)
            write_slowly(data, self.watch / f"{barcode}_scan.svs", chunk=64 << 10, interval=0.05)
            with self.written.lock:
                self.written.valid[barcode] = sha256_bytes(data)
                self.written.at[barcode] = time.time()
            i += 1


def _mount_storage(storage: Path) -> bool:
    if os.geteuid() != 0:
        return False
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(storage)], capture_output=True
    )
    return proc.returncode == 0


def _remount(storage: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(storage)], check=True, capture_output=True)


def _rows(journal: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM scans"))
    finally:
        db.close()


def _outbox(journal: Path) -> tuple[Counter[str], int]:
    """(alerts recorded as sent, by kind and channel), alerts still waiting in the outbox."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        sent = Counter(
            f"{k.split('|')[0] if not k.startswith('recovered|') else 'recovered ' + k.split('|')[1]}"
            for (k,) in db.execute("SELECT key FROM alert_sent")
        )
        pending = db.execute("SELECT COUNT(*) FROM alert_pending").fetchone()[0]
        return sent, int(pending)
    except sqlite3.Error:
        return Counter(), 0
    finally:
        db.close()


def run(args: argparse.Namespace) -> int:
    from scanner_agent.testing.synthetic import write_corrupt, write_svs
    from tests.daemon_helpers import DaemonProcess, rss_now_kib, rss_peak_kib, sheet_csv, unique_scanner_name
    from tests.faults.tools import TOKEN, alerts_section
    from tests.harness import write_config
    from tests.servers.slack_api import SlackApiServer

    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=args.dir))
    storage = base / "storage"
    storage.mkdir()
    mounted = _mount_storage(storage)
    faults = ["corrupt", "unknown"] + (["readonly"] if mounted else [])
    print(
        f"soak for {args.minutes:g} min: {args.rate:g} scans/min, a fault every ~{args.fault_every:g} s "
        f"({', '.join(faults)}; one sigkill), seed {args.seed}; files in {base}",
        flush=True,
    )
    if not mounted:
        print("  (not root or no tmpfs: the read-only storage fault is skipped)")
    planned = int(args.minutes * args.rate) + 10
    barcodes = [f"{700000 + i}" for i in range(planned)]
    slack = SlackApiServer(token=TOKEN).start()
    written = Written()
    logs: list[Path] = []
    counts: Counter[str] = Counter()
    try:
        name = unique_scanner_name("Soak")
        alerts = alerts_section(slack, base / "slack-token")
        cfg = write_config(
            base,
            name=name,
            sheet=sheet_csv(barcodes + [f"{650000 + i}" for i in range(50)]),
            scanner={"settle_seconds": 2, "rescan_seconds": 30, "retry_seconds": 5, "max_parallel": 2},
            storage={"root": str(storage), "reserve_bytes": 0},
            alerts=alerts,
        )
        watch = base / "scanner"
        slides = [
            write_svs(base / f"slide{i}.svs", barcode=None, width=W, height=H, seed=i).read_bytes()
            for i in range(4)
        ]

        def start_daemon() -> DaemonProcess:
            log = base / f"daemon-{len(logs)}.log"
            logs.append(log)
            d = DaemonProcess(cfg, log).start()
            d.wait_watching()
            return d

        daemon = start_daemon()
        rss_start = (daemon.pid, 0)
        scanner = Scanner(watch, slides, barcodes, args.rate, written)
        scanner.start()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_fault = t0 + rng.uniform(0.5, 1.5) * args.fault_every
        # One SIGKILL, early, so that the daemon started after it lives long enough to measure.
        kill_at = t0 + rng.uniform(0.1, 0.3) * args.minutes * 60
        bag: list[str] = []
        warm_at = t0 + WARMUP_SECONDS
        while time.monotonic() < end:
            time.sleep(0.5)
            if daemon.returncode() is not None:
                print(f"  ! daemon exited on its own ({daemon.returncode()}); starting it again", flush=True)
                counts["daemon exited on its own"] += 1
                daemon = start_daemon()
                warm_at = time.monotonic() + WARMUP_SECONDS
            if rss_start[1] == 0 and time.monotonic() >= warm_at:
                rss_start = (daemon.pid, rss_now_kib(daemon.pid))
            if time.monotonic() >= kill_at:
                kill_at = float("inf")
                fault = "sigkill"
            elif time.monotonic() >= next_fault:
                next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * args.fault_every
                fault = _next_fault(bag, faults, rng)
            else:
                continue
            counts[fault] += 1
            elapsed = time.monotonic() - t0
            if fault == "corrupt":
                bad = write_corrupt(base / "corrupt.svs", "truncated").read_bytes()
                with scanner.extra_lock:
                    scanner.extra.append((f"{650000 + counts['corrupt']}_damaged.svs", bad, "corrupt"))
            elif fault == "unknown":
                with scanner.extra_lock:
                    scanner.extra.append(
                        (
                            f"{990000 + counts['unknown']}_scan.svs",
                            slides[0] + f"unknown{counts['unknown']}".encode(),
                            "unknown",
                        )
                    )
            elif fault == "readonly":
                hold = rng.uniform(10, 20)
                _remount(storage, "ro")
                time.sleep(hold)
                _remount(storage, "rw")
                fault = f"readonly for {hold:.0f} s"
            elif fault == "sigkill":
                daemon.kill()
                daemon = start_daemon()
                rss_start = (daemon.pid, 0)
                warm_at = time.monotonic() + WARMUP_SECONDS
            print(f"  {elapsed:6.0f} s  fault: {fault}", flush=True)
        scanner.stop.set()
        scanner.join(120)
        journal = daemon.cfg.journal.path

        def settled() -> bool:
            rows = _rows(journal)
            stored = {r["barcode"] for r in rows if r["state"] == ScanState.STORED and r["source_removed"]}
            busy = [r for r in rows if r["state"] in (ScanState.READY, ScanState.PROCESSING, ScanState.SEEN)]
            return set(written.valid) <= stored and not busy

        drain_end = time.monotonic() + 180
        while not settled() and time.monotonic() < drain_end:
            time.sleep(1)
        if rss_start[1] == 0:
            rss_start = (daemon.pid, rss_now_kib(daemon.pid))
        rss_end = rss_now_kib(daemon.pid)
        peak = rss_peak_kib(daemon.pid)
        code = daemon.terminate(300)
        ran = time.monotonic() - t0
        return _report(
            args,
            base,
            storage,
            watch,
            journal,
            written,
            logs,
            counts,
            slack,
            name,
            ran,
            code,
            rss_start,
            rss_end,
            peak,
            daemon.pid,
        )
    finally:
        slack.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(storage)], check=False)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def _next_fault(bag: list[str], faults: list[str], rng: random.Random) -> str:
    """Faults come from a shuffled bag, so each kind strikes about as often as the others."""
    if not bag:
        bag.extend(rng.sample(faults, len(faults)))
    return bag.pop()


def _report(
    args: argparse.Namespace,
    base: Path,
    storage: Path,
    watch: Path,
    journal: Path,
    written: Written,
    logs: list[Path],
    counts: Counter[str],
    slack: object,
    name: str,
    ran: float,
    code: int,
    rss_start: tuple[int, int],
    rss_end: int,
    peak: int,
    pid: int,
) -> int:
    from tests.faults.tools import leftovers, sha256_file, slack_posts, stored_files

    rows = _rows(journal)
    by_state = Counter(r["state"] for r in rows)
    stored = [r for r in rows if r["state"] == ScanState.STORED]
    per_barcode = Counter(r["barcode"] for r in stored)
    duplicates = sum(n - 1 for n in per_barcode.values() if n > 1)
    files = stored_files(storage)
    images = [p for p in files if p.suffix == ".svs" and "superseded" not in p.parts]
    duplicates += len([p for p in files if "superseded" in p.parts and p.suffix == ".svs"])
    on_scanner = {p.name for p in watch.rglob("*") if p.is_file()}
    lost, wrong = [], []
    stored_by_barcode = {r["barcode"]: r for r in stored}
    for barcode, sha in written.valid.items():
        rec = stored_by_barcode.get(barcode)
        if rec is None:
            if f"{barcode}_scan.svs" not in on_scanner:
                lost.append(barcode)
        elif sha256_file(Path(rec["dest"])) != sha:
            wrong.append(barcode)
    not_stored_yet = [b for b in written.valid if b not in stored_by_barcode and b not in lost]
    quarantined = [r for r in rows if r["state"] == ScanState.QUARANTINED]
    held = [r for r in rows if r["state"] == ScanState.HELD]
    left = leftovers(storage)
    latencies = [r["stored_at"] - written.at[r["barcode"]] for r in stored if r["barcode"] in written.at]
    posts = Counter(
        re.sub(r" (for )?\d{6}\b", "", t.rsplit(" on ", 1)[0]).lstrip("⚠️✅ ")
        for t in slack_posts(slack, name).titles()
    )
    sent, pending = _outbox(journal)
    # Prefect logs every failed run and task at ERROR, the expected ones (quarantined, held) too;
    # the agent's own ERROR/CRITICAL lines are the ones that say something went wrong.
    agent_errors: Counter[str] = Counter()
    run_errors = 0
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(r"\S+ \S+ (ERROR|CRITICAL)\s+(\S+): (.*)", line)
            if m and m.group(2).startswith("prefect"):
                run_errors += 1
            elif m:
                agent_errors[
                    f"{m.group(1)} {m.group(2)}: {re.sub(r'/[^ ]+', '<path>', m.group(3))[:110]}"
                ] += 1
    tracebacks = sum(log.read_text(errors="replace").count("Traceback") for log in logs)

    print(f"\nsoak: {ran / 60:.1f} min, {len(logs)} daemon start(s), final exit status {code}")
    print(f"  faults: {dict(counts)}")
    print(
        f"  written by the scanner: {len(written.valid)} valid, {len(written.corrupt)} corrupt, "
        f"{len(written.unknown)} unknown barcode"
    )
    print(f"  journal: {dict(by_state)}")
    print(f"  stored: {len(stored)} (files in storage: {len(images)} images, {len(files)} files)")
    print(
        f"  quarantined: {len(quarantined)} (expected {len(written.corrupt)}), held: {len(held)} "
        f"(expected {len(written.unknown)})"
    )
    print(
        f"  LOST: {len(lost)} {lost[:5]}   WRONG BYTES: {len(wrong)}   DUPLICATES: {duplicates}   "
        f"LEFTOVERS in .incoming: {len(left)}   still on the scanner unstored: {len(not_stored_yet)}"
    )
    if latencies:
        q = (
            statistics.quantiles(latencies, n=20, method="inclusive")
            if len(latencies) >= 2
            else latencies * 19
        )
        print(
            f"  written -> stored: median {statistics.median(latencies):.1f} s, p95 {q[-1]:.1f} s, "
            f"max {max(latencies):.1f} s"
        )
    print(f"  alerts posted to Slack: {sum(posts.values())} {dict(posts)}")
    print(f"  alert outbox: {sum(sent.values())} recorded sent {dict(sent)}, {pending} pending")
    print(
        f"  daemon logs: {sum(agent_errors.values())} ERROR/CRITICAL lines from the agent, {run_errors} from "
        f"Prefect (failed runs and tasks, expected ones included), {tracebacks} tracebacks"
    )
    for line, n in agent_errors.most_common(8):
        print(f"    {n:4d} x {line}")
    start_kib = rss_start[1]
    growth = (rss_end - start_kib) / start_kib * 100 if start_kib else float("nan")
    print(
        f"  daemon RSS (pid {pid}): {start_kib / 1024:.1f} MiB {WARMUP_SECONDS} s after it started, "
        f"{rss_end / 1024:.1f} MiB at the end ({growth:+.1f} %), peak {peak / 1024:.1f} MiB"
    )
    if args.keep:
        print(f"  kept: {base}")
    return 1 if lost or wrong or duplicates or left else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=6, help="scans per minute from the simulated scanner")
    ap.add_argument("--fault-every", type=float, default=40, help="mean seconds between faults")
    ap.add_argument(
        "--seed", type=int, default=None, help="seed of the fault schedule (default: random, printed)"
    )
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true", help="keep the soak's folders and logs")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    with prefect_api():
        raise SystemExit(run(args))


if __name__ == "__main__":
    main()
