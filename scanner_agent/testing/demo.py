"""``scanner-agent demo``: the daemon's main job end to end on embedded defaults.

A simulated scanner writes real slide files slowly into ``demo-run/scanner`` (SVS and MIRAX
scans, an unknown barcode, a corrupt file, a requested rescan, a scan whose barcode is only
printed on its label); the real daemon watches,
waits for each scan to settle, looks it up in the local CSV sheet, validates it with OpenSlide,
and moves it into ``demo-run/storage``, one Prefect flow run per scan. Prefect runs on its
embedded API unless ``PREFECT_API_URL`` is set (its database is kept under demo-run/prefect).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scanner_agent.testing.simulator import SimKind

if TYPE_CHECKING:
    from scanner_agent.config import AgentConfig
    from scanner_agent.service.bootstrap import Services

DEMO_SCANS: list[tuple[str, SimKind, str, str]] = [
    # (file stem, kind, barcode, what the demo shows)
    ("620995_Prec01", "svs", "620995", "stored, named from the sheet"),
    ("645750", "mrxs", "645750", "a MIRAX scan (file + folder) stored as one unit"),
    ("317335_run2", "svs", "317335", "stored"),
    ("999999_unlisted", "svs", "999999", "held: no row in the sheet for this barcode"),
    ("407871_damaged", "corrupt", "407871", "quarantined: OpenSlide cannot read it"),
    ("545891_rescan", "svs", "545891", "a requested rescan (the sheet's Rescan Requested column)"),
    ("slide_0042", "label", "465551", "barcode only on its label (DataMatrix); run renamed to it"),
]


def run_demo(config_path: Path, *, keep: bool = False) -> int:
    """Run the daemon on ``config_path`` while a simulated scanner writes ``DEMO_SCANS``; its exit status.

    Stops once every scan is decided and nothing is queued (or after 5 minutes), then prints where
    to look. Without ``keep`` a ``demo-run`` folder left by an earlier demo is removed first.
    """
    from scanner_agent.config import load_config

    cfg0 = load_config(config_path)
    base = cfg0.state_dir.parent
    if not keep and base.name == "demo-run" and base.exists():
        shutil.rmtree(base)
    for d in (cfg0.scanner.watch, cfg0.storage.root, cfg0.state_dir):
        d.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(base / "prefect"))
        print(f"Prefect: embedded API (database in {base / 'prefect'}); starting it takes a few seconds…")
    else:
        print(f"Prefect: reporting to {os.environ['PREFECT_API_URL']}")
    if cfg0.metrics.listen:
        print(f"Metrics: curl http://{cfg0.metrics.listen}/metrics  (the counters move as scans are stored)")

    from scanner_agent.service.bootstrap import bootstrap
    from scanner_agent.service.daemon import Daemon
    from scanner_agent.sheets import CsvWriteBackPreview
    from scanner_agent.testing.simulator import SimScan, simulate

    cfg = load_config(config_path)
    services = bootstrap(cfg)
    if isinstance(services.sheet_writeback, CsvWriteBackPreview):  # what write-back would set in the sheet
        services.sheet_writeback.echo = lambda m: print(f"  {m}", flush=True)
    watching = threading.Event()

    def on_event(msg: str) -> None:
        """Print the daemon's event; the scanner starts once the daemon is watching."""
        print(f"  agent: {msg}", flush=True)
        if msg.startswith("watching"):
            watching.set()

    daemon = Daemon(services, on_event=on_event)
    scans = [
        SimScan(name=stem, kind=kind, barcode=bc, corrupt_kind="truncated")
        for stem, kind, bc, _ in DEMO_SCANS
    ]
    print("The simulated scanner writes these scans slowly, like a real one:")
    for stem, kind, bc, what in DEMO_SCANS:
        print(f"  {stem:<18} {kind:<7} barcode {bc}: {what}")
    done = threading.Event()

    def scanner() -> None:
        """Write the demo scans slowly into the watch folder."""
        watching.wait()
        try:
            simulate(
                cfg.scanner.watch,
                scans,
                chunk_bytes=512 << 10,
                chunk_interval=0.1,
                between=0.5,
                on_progress=lambda m: print(f"  scanner: {m}", flush=True),
            )
        finally:
            done.set()

    def supervisor() -> None:
        """Print progress; stop the daemon once every scan is decided and nothing is in flight."""
        done.wait()
        expected = len(DEMO_SCANS)
        deadline = time.monotonic() + 300
        last = ""
        while time.monotonic() < deadline:
            c = services.journal.counts()
            decided = c["stored"] + c["held"] + c["quarantined"] + c["failed"]
            now = (
                f"  progress: {c['stored']} stored, {c['held']} held, {c['quarantined']} quarantined, "
                f"{c['failed']} failed, {len(daemon.dispatcher.in_flight)} in flight"
            )
            if now != last:
                print(now, flush=True)
                last = now
            if decided >= expected and not daemon.dispatcher.in_flight and not daemon.dispatcher.queue_length:
                break
            time.sleep(0.5)
        daemon.stop_event.set()

    threading.Thread(target=scanner, name="demo-scanner", daemon=True).start()
    threading.Thread(target=supervisor, name="demo-supervisor", daemon=True).start()
    t0 = time.monotonic()
    try:
        rc = daemon.run()
    finally:
        summary = _summary(services, cfg, time.monotonic() - t0)
        services.close()
    print(summary)
    return rc


def _summary(services: Services, cfg: AgentConfig, seconds: float) -> str:
    """What happened to each scan, how long it took, and where to look next."""
    rows = services.journal.all()
    out = ["", f"Demo finished in {seconds:.0f} s. What happened to each scan:"]
    for r in rows:
        name = Path(r.path).name
        if r.state == "stored":
            out.append(f"  ✓ {name:<24} stored  -> {Path(r.dest or '').relative_to(cfg.storage.root.parent)}")
        else:
            where = r.details.get("quarantined_to")
            out.append(f"  ! {name:<24} {r.state:<7} {r.reason}" + (f" (moved to {where})" if where else ""))
    rescans = services.journal.open_rescans()
    if rescans:
        out.append("  Rescans still awaited: " + ", ".join(r["barcode"] for r in rescans))
    cfg_file = cfg.source_file
    out += [
        "",
        "Where to look:",
        f"  storage:        find {cfg.storage.root}",
        f"  journal status: .venv/bin/scanner-agent status --config {cfg_file}",
        f"  sheet report:   .venv/bin/scanner-agent reconcile --config {cfg_file}",
    ]
    if os.environ.get("PREFECT_API_URL"):
        ui = os.environ.get("PREFECT_UI_URL") or os.environ["PREFECT_API_URL"].removesuffix("/api")
        out.append(
            f"  Prefect UI:     {ui} (flow 'Scan Image Flow: {cfg.scanner.name}', one run per barcode)"
        )
    else:
        out.append(
            f"  Prefect UI:     PREFECT_HOME={os.environ.get('PREFECT_HOME')} "
            ".venv/bin/prefect server start, "
            f"then open http://127.0.0.1:4200/runs (flow 'Scan Image Flow: {cfg.scanner.name}')"
        )
    return "\n".join(out)
