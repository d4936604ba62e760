"""Run ``scanner-agent run`` as a real process and watch what it does through its journal.

Shared by the daemon tests (``test_daemon*.py``, ``faults/``) and the ``bench/`` scripts: start
and signal the daemon, wait on its journal (SQLite in WAL mode, so a second reader never blocks
it), write scans the way a scanner does, and read its flow runs back from the Prefect API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from scanner_agent.config import AgentConfig, load_config
from scanner_agent.core.states import ScanState
from scanner_agent.journal import Journal, ScanRecord
from tests.harness import write_config

T = TypeVar("T")

SCANNER_AGENT = Path(sys.executable).with_name("scanner-agent")
FLAGS_ROW = "Include in Name?,REQUIRED,REQUIRED,REQUIRED,REQUIRED,,,"
HEADER_ROW = "Barcode,Study,Experiment,Panel,Scanner,Scan Date,Rescan Requested,Notes"
SHEET_BARCODES = ["620995", "645750", "317335", "407871", "465551", "754788"]


def sheet_csv(barcodes: Iterable[str], *, study: str = "Prec01", experiment: str = "Run 2") -> str:
    """A metadata sheet (flags row, header row) with one complete row per barcode."""
    rows = [FLAGS_ROW, HEADER_ROW] + [f"{b},{study},{experiment},P1,Cardinal,,," for b in barcodes]
    return "\n".join(rows) + "\n"


def sheet_row(barcode: str, *, study: str = "Prec01", experiment: str = "Run 2") -> str:
    return f"{barcode},{study},{experiment},P1,Cardinal,,,\n"


def unique_scanner_name(prefix: str = "Daemon") -> str:
    """A scanner name no other test uses, so its flow ("Scan Image Flow: <name>") has only its runs."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    alive: DaemonProcess | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``.

    With ``alive``, fail at once (with the daemon's log) if that daemon exits meanwhile.
    """
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if alive is not None and alive.returncode() is not None:
            raise AssertionError(
                f"daemon exited ({alive.returncode()}) while waiting for {what}\n{alive.log_tail()}"
            )
        if time.monotonic() > end:
            tail = f"\n{alive.log_tail()}" if alive is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


class DaemonProcess:
    """``scanner-agent run --config <toml>`` as a child process in its own session, logging to a file.

    Inherits the environment (``PREFECT_API_URL`` from the test session or the benchmark), with
    ``env`` on top.
    Used as a context manager it is killed on exit if still running, so a failing test leaves
    no daemon behind.
    """

    def __init__(
        self,
        config: Path,
        log_path: Path | None = None,
        *,
        extra_args: Iterable[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = Path(config)
        self.cfg: AgentConfig = load_config(self.config)
        self.log_path = log_path or self.config.with_suffix(f".{uuid.uuid4().hex[:6]}.log")
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> DaemonProcess:
        # The child writes to its own copy of the descriptor; the parent's is closed at once.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(SCANNER_AGENT), *self.extra_args, "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        return self

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait_watching(self, timeout: float = 120) -> None:
        """Until this process has finished its start-up catch-up and says it is watching."""

        def watching() -> bool:
            if not self.cfg.journal.path.exists():
                return False
            h = read_health(self.cfg.journal.path)
            return h.get("pid") == self.pid and bool(h.get("watching_since")) and not h.get("stopped_at")

        wait_for(
            watching, timeout, f"the daemon (pid {self.pid}) to start watching", alive=self, interval=0.1
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> int:
        """SIGKILL: the daemon gets no chance to tidy up (as on power loss or the OOM killer)."""
        self.signal(signal.SIGKILL)
        return self.wait(30)

    def terminate(self, timeout: float = 300) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit within {timeout:.0f} s\n{self.log_tail()}") from None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "--- daemon log (tail) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])


def scanner_config(base: Path, *, barcodes: list[str] = SHEET_BARCODES, **sections: dict[str, Any]) -> Path:
    """A scanner under ``base`` with its own name (so its flow has only its runs) and a sheet with
    a complete row per barcode; ``sections`` override the config's defaults as in ``write_config``."""
    scanner = {"name": unique_scanner_name(), **sections.pop("scanner", {})}
    return write_config(
        base, name=scanner.pop("name"), sheet=sheet_csv(barcodes), scanner=scanner, **sections
    )


def sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def stored_slides(storage: Path, suffix: str = ".svs") -> list[Path]:
    """Slides visible at their final names (not in ``.incoming``, not superseded)."""
    return [
        p
        for p in storage.rglob(f"*{suffix}")
        if ".incoming" not in p.parts and "superseded" not in p.parts and p.is_file()
    ]


def drop(staging: Path, watch: Path) -> None:
    """Move finished files into the watch folder at once (rename: same filesystem)."""
    for p in sorted(staging.iterdir()):
        os.rename(p, watch / p.name)


def status_json(cfg: Path) -> dict[str, Any]:
    """``scanner-agent status --json`` as an operator runs it. Its exit status (0 healthy, 1 needs a
    person, 3 not running) must agree with what the JSON says."""
    out = subprocess.run(
        [str(SCANNER_AGENT), "status", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode in (0, 1, 3), out.stdout + out.stderr
    st: dict[str, Any] = json.loads(out.stdout)
    assert out.returncode == st["exit_code"] and (out.returncode == 3) == (not st["daemon"]["running"]), st
    return st


def read_health(journal_path: Path) -> dict[str, Any]:
    j = Journal(journal_path)
    try:
        return j.health()
    finally:
        j.close()


def records(journal_path: Path) -> list[ScanRecord]:
    """Every scan row, read through the journal's own class on a fresh connection."""
    j = Journal(journal_path)
    try:
        return j.all()
    finally:
        j.close()


def rows_for(journal_path: Path, path: Path) -> list[ScanRecord]:
    return [r for r in records(journal_path) if r.path == str(path)]


def stored(journal_path: Path) -> list[ScanRecord]:
    return [r for r in records(journal_path) if r.state == ScanState.STORED]


def write_slowly(
    data: bytes, dest: Path, *, chunk: int, interval: float, between_chunks: Callable[[], None] | None = None
) -> float:
    """Write ``data`` to ``dest`` through one handle, ``chunk`` bytes every ``interval`` s, as a
    scanner does; call ``between_chunks`` after each chunk. Returns the time (``time.time()``)
    of the last write, taken before the handle is closed."""
    with open(dest, "wb") as fh:
        for off in range(0, len(data), chunk):
            if off:
                time.sleep(interval)
            fh.write(data[off : off + chunk])
            fh.flush()
            if between_chunks is not None:
                between_chunks()
        last = time.time()
    return last


def partials(storage_root: Path) -> list[Path]:
    """Half-written copies in the storage's ``.incoming`` folders."""
    return [p for p in storage_root.rglob("*") if ".incoming" in p.parts and p.name != ".incoming"]


async def final_task_runs(client: Any, flow_run_id: Any, *, at_least: int = 0) -> list[Any]:
    """The task runs of a flow run once there are ``at_least``, each has a final state, and no new
    one has appeared for ``TASK_RUNS_SETTLE`` seconds (what there is after ~30 s otherwise).

    Prefect 3 records task runs from its event stream, after the flow run's own final state, so a
    read right after the run ends can miss one or find it still RUNNING. A caller that knows how
    many there must be says so in ``at_least``; the settle covers the ones it cannot know."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    by_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    loop = asyncio.get_running_loop()
    seen, since = -1, loop.time()
    for _ in range(300):
        runs: list[Any] = await client.read_task_runs(flow_run_filter=by_run)
        if len(runs) != seen:
            seen, since = len(runs), loop.time()
        settled = loop.time() - since >= TASK_RUNS_SETTLE and len(runs) >= at_least
        if settled and all(t.state is not None and t.state.is_final() for t in runs):
            break
        await asyncio.sleep(0.1)
    return runs


#: Seconds with no new task run before ``final_task_runs`` takes the list as whole.
TASK_RUNS_SETTLE = 1.5


def flow_runs(flow_name: str) -> list[Any]:
    """Every flow run of ``flow_name`` on the Prefect server (``PREFECT_API_URL``)."""

    async def go() -> list[Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName
        from prefect.client.schemas.sorting import FlowRunSort

        out: list[Any] = []
        async with get_client() as client:
            while True:  # the API answers at most 200 per request
                page = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                    sort=FlowRunSort.ID_DESC,
                    limit=200,
                    offset=len(out),
                )
                out += page
                if len(page) < 200:
                    return out

    return asyncio.run(go())


def rss_peak_kib(pid: int) -> int:
    """The process's peak resident set (``VmHWM``) in KiB."""
    return _status_field(pid, "VmHWM")


def rss_now_kib(pid: int) -> int:
    return _status_field(pid, "VmRSS")


def _status_field(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (``/proc/<pid>/stat`` utime + stime)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
