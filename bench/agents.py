"""Benchmark: two agents (Cardinal, Raven) × N small scans, against three Prefect back ends.

    .venv/bin/python -m bench.agents [--scans 100] [--trickle 5] [--modes embedded,sqlite,postgres]

Each agent is a real ``scanner-agent run`` process with its own folders and journal. Modes:
(a) ``embedded``: no server; each agent starts Prefect's embedded API (own PREFECT_HOME, as on
two hosts); (b) ``sqlite``: one ``prefect server start`` on SQLite shared by both; (c)
``postgres``: the same server on a throw-away PostgreSQL cluster (skipped with a message when
PostgreSQL's binaries are not installed: ``apt-get install postgresql``).

Per mode it prints:
* burst: both agents get N scans at once; scans/s = 2N / (last stored - first ready);
* latency in the burst, ready in the journal -> the flow started (the journal's ``processing``
  event, written by the flow's first line), median and p95: mostly queueing behind
  ``max_parallel`` = 2 workers per agent;
* trickle latency: ``--trickle`` scans per agent one at a time on idle agents (no queue), from
  the journal and, with a server, from the flow run's ``start_time`` in Prefect;
* 503s: "database is locked" answers in the server's log (SQLite's single writer).
Ratios are to the embedded mode of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._prefect import RETRYABLE, Postgres, free_port
from scanner_agent.core.states import ScanState
from scanner_agent.journal import Journal
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import DaemonProcess, records, wait_for
from tests.harness import write_config

HEAD = (
    "Include in Name?,REQUIRED,REQUIRED,REQUIRED,REQUIRED,,,\n"
    "Barcode,Study,Experiment,Panel,Scanner,Scan Date,Rescan Requested,Notes\n"
)


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited; see {log}")
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; see {log}")


# --------------------------------------------------------------------------- back ends


class Server:
    """``prefect server start`` on SQLite (default) or on ``db_url``."""

    def __init__(self, home: Path, db_url: str | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
        }
        env.pop("PREFECT_API_URL", None)
        if db_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
        home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:  # the server keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("prefect")),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(self.url + "/health", 240, self.proc, self.log)

    def locked_503s(self) -> int:
        text = self.log.read_text(errors="replace")
        return text.count(RETRYABLE)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- agents and scans


def make_agent(base: Path, name: str, barcodes: list[str], api_url: str | None) -> Path:
    sheet = HEAD + "".join(f"{b},Bench,Run 1,P1,{name},,,\n" for b in barcodes)
    extra = {"prefect": {"api_url": api_url}} if api_url else {}
    return write_config(
        base / name.lower(),
        name=name,
        sheet=sheet,
        scanner={"settle_seconds": 0.5, "rescan_seconds": 30, "max_parallel": 2},
        **extra,
    )


def start_agent(cfg: Path, home: Path | None, api_url: str | None) -> DaemonProcess:
    saved = dict(os.environ)
    try:
        os.environ.pop("PREFECT_API_URL", None)
        if api_url:
            os.environ["PREFECT_API_URL"] = api_url
        if home is not None:
            os.environ["PREFECT_HOME"] = str(home)
            # The embedded API starts in the agent; on a busy 2-core machine it needs more than 20 s.
            os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
        d = DaemonProcess(cfg).start()  # copies os.environ now
    finally:
        os.environ.clear()
        os.environ.update(saved)
    d.wait_watching(300)
    return d


def drop(watch: Path, template: bytes, barcode: str) -> None:
    tmp = watch / f".{barcode}.writing"
    tmp.write_bytes(template)
    os.rename(tmp, watch / f"{barcode}_bench.svs")


def journal_path(cfg: Path) -> Path:
    return cfg.parent / "state" / f"{cfg.stem}.sqlite"


def processing_latencies(journal: Path, barcodes: set[str]) -> list[float]:
    """Ready in the journal -> the flow's first line (its ``processing`` event), per scan."""
    j = Journal(journal)
    try:
        out = []
        for rec in j.all():
            if rec.barcode in barcodes or Path(rec.path).name.split("_")[0] in barcodes:
                starts = [e["at"] for e in j.events(rec.id) if e["state"] == ScanState.PROCESSING]
                if starts and rec.ready_at:
                    out.append(starts[0] - rec.ready_at)
        return out
    finally:
        j.close()


def prefect_latencies(api_url: str, recs: list[Any]) -> list[float]:
    async def go() -> list[float]:
        from prefect.client.orchestration import get_client

        out = []
        async with get_client() as c:
            for rec in recs:
                run = await c.read_flow_run(rec.flow_run_id)
                if run.start_time and rec.ready_at:
                    out.append(run.start_time.timestamp() - rec.ready_at)
        return out

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api_url}):
            return asyncio.run(go())
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_mode(mode: str, root: Path, n: int, trickle: int, template: bytes) -> dict[str, Any]:
    base = root / mode
    server: Server | None = None
    pg: Postgres | None = None
    agents: list[DaemonProcess] = []
    try:
        t_setup = time.monotonic()
        if mode == "sqlite":
            server = Server(base / "server")
        elif mode == "postgres":
            pg = Postgres(base / "pg")
            server = Server(base / "server", db_url=pg.url)
        api = server.url if server else None
        names = ("Cardinal", "Raven")
        # Per agent: n burst scans, then `trickle` timed ones, then one warm-up (the embedded API
        # starts on the first run; a deployment is registered on the first run).
        codes = {nm: [f"{i + 1}{k:05d}" for k in range(n + trickle + 1)] for i, nm in enumerate(names)}
        cfgs = {nm: make_agent(base, nm, codes[nm], api) for nm in names}
        for nm in names:
            agents.append(start_agent(cfgs[nm], base / f"home-{nm.lower()}" if api is None else None, api))
        setup_s = time.monotonic() - t_setup

        # Trickle first (idle agents, warm): one scan at a time per agent.
        trickle_recs: list[Any] = []
        for k in [trickle, *range(trickle)]:  # the warm-up first
            for nm in names:
                code = codes[nm][n + k]
                drop(cfgs[nm].parent / "scanner", template, code)
            for nm, d in zip(names, agents, strict=True):
                code = codes[nm][n + k]
                rec = wait_for(
                    lambda nm=nm, code=code: next(
                        (
                            r
                            for r in records(journal_path(cfgs[nm]))
                            if r.barcode == code and r.state == ScanState.STORED
                        ),
                        None,
                    ),
                    180,
                    f"{nm} {code} stored",
                    alive=d,
                    interval=0.05,
                )
                if k < trickle:
                    trickle_recs.append((nm, rec))
        trickle_lat = []
        for nm in names:
            trickle_lat += processing_latencies(journal_path(cfgs[nm]), set(codes[nm][n : n + trickle]))
        trickle_prefect = prefect_latencies(api, [r for _, r in trickle_recs]) if api else []

        # Burst: N scans into each agent at once.
        for k in range(n):
            for nm in names:
                drop(cfgs[nm].parent / "scanner", template, codes[nm][k])
        for nm, d in zip(names, agents, strict=True):
            wait_for(
                lambda nm=nm: (
                    sum(1 for r in records(journal_path(cfgs[nm])) if r.state == ScanState.STORED)
                    >= n + trickle + 1
                ),
                60 + 6 * n,
                f"{nm}: all scans stored",
                alive=d,
                interval=0.5,
            )
        burst = []
        for nm in names:
            want = set(codes[nm][:n])
            burst += [r for r in records(journal_path(cfgs[nm])) if r.barcode in want]
        bad = [r for r in burst if r.state != ScanState.STORED]
        t0 = min(r.ready_at for r in burst)
        t1 = max(r.stored_at for r in burst)
        burst_lat = []
        for nm in names:
            burst_lat += processing_latencies(journal_path(cfgs[nm]), set(codes[nm][:n]))
        return {
            "mode": mode,
            "setup_s": setup_s,
            "scans": len(burst),
            "not_stored": len(bad),
            "scans_per_s": len(burst) / (t1 - t0),
            "burst_seconds": t1 - t0,
            "burst_median": statistics.median(burst_lat),
            "burst_p95": pct(burst_lat, 0.95),
            "trickle_median": statistics.median(trickle_lat) if trickle_lat else float("nan"),
            "trickle_p95": pct(trickle_lat, 0.95),
            "trickle_prefect_median": statistics.median(trickle_prefect) if trickle_prefect else float("nan"),
            "locked_503": server.locked_503s() if server and mode == "sqlite" else 0,
        }
    finally:
        for d in agents:
            if d.returncode() is None:
                try:
                    d.terminate(60)
                except AssertionError:
                    d.kill()
        if server:
            server.stop()
        if pg:
            pg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=100, help="scans per agent in the burst")
    ap.add_argument(
        "--trickle", type=int, default=5, help="scans per agent one at a time (latency on idle agents)"
    )
    ap.add_argument("--modes", default="embedded,sqlite,postgres")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="scanner-agent-bench-agents-"))
    os.chmod(root, 0o755)  # the postgres user must reach its cluster below
    tmpl = write_svs(root / "template.svs", barcode="000000", width=1024, height=768).read_bytes()
    results = []
    try:
        for mode in args.modes.split(","):
            print(f"--- {mode}: 2 agents x {args.scans} scans (+{args.trickle} trickle each) ...", flush=True)
            try:
                r = run_mode(mode, root, args.scans, args.trickle, tmpl)
            except FileNotFoundError as exc:
                print(f"    skipped: {exc}")
                continue
            results.append(r)
            print(
                f"    {r['scans']} scans in {r['burst_seconds']:.1f} s = {r['scans_per_s']:.2f} scans/s; "
                f"not stored {r['not_stored']}; set-up {r['setup_s']:.0f} s",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if not results:
        return 1
    ref = next((r for r in results if r["mode"] == "embedded"), results[0])
    print(
        f"\n{'mode':<10} {'scans/s':>8} {'x emb':>6} {'burst lat med/p95 s':>20} {'idle lat med/p95 s':>19} "
        f"{'idle Prefect start s':>21} {'locked':>7}"
    )
    for r in results:
        print(
            f"{r['mode']:<10} {r['scans_per_s']:>8.2f} {r['scans_per_s'] / ref['scans_per_s']:>6.2f} "
            f"{r['burst_median']:>9.2f} / {r['burst_p95']:<8.2f} "
            f"{r['trickle_median']:>8.2f} / {r['trickle_p95']:<8.2f} "
            f"{r['trickle_prefect_median']:>21.2f} {r['locked_503']:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
