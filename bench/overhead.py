"""Benchmark: what orchestration adds per scan, over the bare verified move of the same file.

    .venv/bin/python -m bench.overhead [--scans 20] [--warmup 2] [--pause 3] [--sheet-rows 2000]
                                      [--database sqlite|postgres]

In-process, as the daemon does it: an ``Agent`` from a real configuration, a ``Dispatcher``
with one worker, and for each 1 MiB slide (a real SVS padded to 1 MiB) ``record_ready`` +
``submit`` and a wait until it is stored: the whole pipeline, a Prefect flow run with its
tasks against a local server. Measured in the same run on identical files:

* ``place_scan``: the bare verified move into storage, nothing else (the baseline);
* ``work``: the same steps the tasks do (barcode, sheet row, OpenSlide validation, QC, name,
  ``place_scan``, source removal), called as plain functions with no Prefect;
* ``plain``: the same pipeline by a second agent whose runs have no deployment (no Retry in
  the UI), to show what the deployment path costs per run.

Overhead = pipeline - place_scan (target: median <= 0.4 s), and Prefect's own share =
pipeline - work. Runs go back to back by default (as in a burst). On Prefect's SQLite server
about one run in three then has its creation answered 503 (SQLite busy: the server is still
writing the previous run's events), and Prefect's client sleeps ~2 s before it retries; the
count is printed. ``--pause 3`` shows an isolated scan (as in a trickle), ``--database postgres``
the server a lab with several scanners should run (docs/prefect-server.md). The breakdown splits
a run into its Prefect-recorded parts (run creation and start, the tasks, the flow body
between tasks, completion), median over the scans.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._prefect import RETRYABLE, prefect_api, server_log_count
from bench.latency import one_mb_slide, pct
from scanner_agent.core.states import ScanState


def _bare_work(services: Any, path: Path) -> float:
    """The flow's steps as plain calls (``pipeline.STEPS``): no runs, no states, no API."""
    from scanner_agent import storage
    from scanner_agent.pipeline import STEPS
    from scanner_agent.scanunit import ScanUnit

    step = {s.name: s.fn for s in STEPS}
    svc = services.scan
    t = time.perf_counter()
    unit = ScanUnit.from_path(path)
    bc = step["Identify Barcode"](svc, unit)
    row, table = step["Read Sheet Metadata"](svc, bc.barcode)
    info = step["Validate Slide"](svc, unit)
    if svc.settings.qc_enabled:
        step["Check Quality"](svc, info)
    dest = step["Build Name"](svc, unit, bc.barcode, row, table)
    dest = dest.with_name("work_" + dest.name)
    result = storage.place_scan(unit, dest.parent, dest.name, sidecar={"bench": True})
    storage.remove_source(unit, result)
    return time.perf_counter() - t


def _bare_place(path: Path, dest: Path) -> float:
    from scanner_agent.scanunit import ScanUnit
    from scanner_agent.storage import place_scan

    t = time.perf_counter()
    place_scan(ScanUnit.from_path(path), dest, path.name, sidecar={"bench": True})
    return time.perf_counter() - t


def _through_dispatcher(agent: Any, disp: Any, src: Path, blob: bytes, pause: float = 0) -> tuple[float, Any]:
    """Record the scan ready and submit it, as the daemon does; seconds until its run is over."""
    time.sleep(pause)
    src.write_bytes(blob)
    st = src.stat()
    t = time.perf_counter()
    rec, _ = agent.journal.record_ready(str(src), st.st_size, st.st_mtime_ns)
    disp.submit(rec.id, rec.ready_at)
    disp.wait_idle()
    wall = time.perf_counter() - t
    rec = agent.journal.get(rec.id)
    assert rec is not None and rec.state == ScanState.STORED, (rec.state, rec.reason) if rec else None
    return wall, rec


def _breakdown(run_ids: list[str], walls: list[float]) -> dict[str, list[float]]:
    """Per run: the run's Prefect-recorded span (Running -> Completed), the time outside it
    (creating the run, starting and finishing the engine), and the seconds in each task."""
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        async with get_client() as c:
            for rid, wall in zip(run_ids, walls, strict=True):
                run = await c.read_flow_run(UUID(rid))
                trs = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
                done = sorted(
                    (tr for tr in trs if tr.start_time and tr.end_time), key=lambda tr: tr.start_time
                )
                if not (run.start_time and run.end_time):
                    continue
                span = (run.end_time - run.start_time).total_seconds()
                tasks = [
                    (tr.name.rsplit("-", 1)[0], (tr.end_time - tr.start_time).total_seconds()) for tr in done
                ]
                out.setdefault("outside the run's Running span (create run, engine start/end)", []).append(
                    wall - span
                )
                out.setdefault("flow run Running -> Completed", []).append(span)
                out.setdefault("  flow body between tasks (journal, tags, artifact, states)", []).append(
                    span - sum(d for _, d in tasks)
                )
                for name, d in tasks:
                    out.setdefault(f"  task {name}", []).append(d)
        return out

    return asyncio.run(go())


def run(args: argparse.Namespace) -> None:
    from scanner_agent.config import load_config
    from scanner_agent.service.bootstrap import bootstrap
    from scanner_agent.service.dispatcher import Dispatcher
    from tests.daemon_helpers import sheet_csv, unique_scanner_name
    from tests.harness import make_agent, write_config

    n = args.scans + args.warmup
    base = Path(tempfile.mkdtemp(prefix="bench-overhead-", dir=args.dir))
    agents: list[Any] = []
    try:
        barcodes = [f"{600000 + i}" for i in range(n)]
        filler = [f"{700000 + i}" for i in range(max(0, args.sheet_rows - n))]  # a lab's sheet has history
        sheet = sheet_csv(barcodes + filler)
        agent = make_agent(write_config(base, name=unique_scanner_name("Overhead"), sheet=sheet))
        # The same pipeline without a deployment: Prefect 3.8 starts a suspension observer (a thread,
        # its own event loop and a websocket to the server) for every run that has a deployment.
        plain = bootstrap(
            load_config(write_config(base / "plain", name=unique_scanner_name("OverheadPlain"), sheet=sheet)),
            register_deployment=False,
        )
        agents += [agent, plain]
        watch = base / "scanner"
        blobs = {bc: one_mb_slide(base / "tmp.svs", bc) for bc in barcodes}
        disp, plain_disp = Dispatcher(agent, 1), Dispatcher(plain, 1)
        disp.start()
        plain_disp.start()
        plains: list[float] = []
        walls: list[float] = []
        run_ids: list[str] = []
        places: list[float] = []
        works: list[float] = []
        busy_before = server_log_count(RETRYABLE)
        for i, bc in enumerate(barcodes):
            # Interleaved, so drift on a shared machine hits all three alike.
            p = base / "place-src" / f"{bc}.svs"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(blobs[bc])
            place = _bare_place(p, base / "place-dest")
            w = watch / f"work_{bc}.svs"
            w.write_bytes(blobs[bc])
            work = _bare_work(agent, w)
            # Alternate which goes first: the first API write after a run can wait ~2 s for the
            # SQLite server's own flush of that run's events, and that should not land on one side only.
            plain_src = base / "plain" / "scanner" / f"{bc}.svs"
            if i % 2:
                wall, rec = _through_dispatcher(agent, disp, watch / f"{bc}.svs", blobs[bc], args.pause)
                plain_wall, _ = _through_dispatcher(plain, plain_disp, plain_src, blobs[bc], args.pause)
            else:
                plain_wall, _ = _through_dispatcher(plain, plain_disp, plain_src, blobs[bc], args.pause)
                wall, rec = _through_dispatcher(agent, disp, watch / f"{bc}.svs", blobs[bc], args.pause)
            if i >= args.warmup:
                plains.append(plain_wall)
                walls.append(wall)
                places.append(place)
                works.append(work)
                run_ids.append(rec.flow_run_id or "")
        disp.stop(30)
        plain_disp.stop(30)
        busy = server_log_count(RETRYABLE)
        parts = _breakdown(run_ids, walls)
    finally:
        for a in agents:
            a.close()
        shutil.rmtree(base, ignore_errors=True)

    over = [w - p for w, p in zip(walls, places, strict=True)]
    prefect_share = [w - k for w, k in zip(walls, works, strict=True)]
    spacing = f"{args.pause:g} s quiet before each run" if args.pause else "runs back to back"
    print(
        f"\n{args.scans} scans of 1 MiB through Dispatcher -> run_scan -> flow run, sheet of "
        f"{max(n, args.sheet_rows):,} rows, {spacing} ({args.warmup} warm-up not counted); seconds"
    )
    print(f"  {'':62s} {'p50':>7s} {'p90':>7s} {'max':>7s}")

    def row(label: str, vals: list[float]) -> None:
        print(f"  {label:62s} {statistics.median(vals):7.3f} {pct(vals, 0.9):7.3f} {max(vals):7.3f}")

    row("pipeline (submit -> stored, whole flow run)", walls)
    row("baseline: bare place_scan", places)
    row("work: the tasks' functions called directly, no Prefect", works)
    row("OVERHEAD = pipeline - place_scan", over)
    row("  Prefect's own share = pipeline - work", prefect_share)
    row("pipeline without a deployment (plain flow run, no UI Retry)", plains)
    row(
        "  cost of the deployment path = pipeline - plain",
        [w - p for w, p in zip(walls, plains, strict=True)],
    )
    print("  breakdown from the Prefect API:")
    for label, vals in parts.items():
        row("  " + label, vals)
    med = statistics.median(over)
    print(
        f"\n  overhead median {med:.3f} s (target <= 0.4 s: {'met' if med <= 0.4 else 'NOT met'}), "
        f"p90 {pct(over, 0.9):.3f} s; "
        f"pipeline is {statistics.median(walls) / statistics.median(places):.0f}x "
        f"the bare place_scan"
    )
    if busy is not None and busy_before is not None:
        print(
            f"  requests the server answered 503 because its database was busy (the client sleeps ~2 s, "
            f"then retries): {busy - busy_before} over {2 * n} runs"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2, help="first scans not counted (deployment, imports)")
    ap.add_argument(
        "--pause",
        type=float,
        default=0,
        help="seconds of quiet before each run (0: back to back, as in a burst; 3: an isolated scan)",
    )
    ap.add_argument("--sheet-rows", type=int, default=0, help="pad the sheet to this many rows (e.g. 2000)")
    ap.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the database of the server started for the run (ignored with PREFECT_API_URL)",
    )
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the per-task lines would bury the table
    with prefect_api(database=args.database):
        run(args)


if __name__ == "__main__":
    main()
