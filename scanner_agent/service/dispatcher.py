"""The dispatcher: a bounded pool that turns ready scans into Prefect flow runs, oldest first.

Each worker is a thread with its own event loop that lives as long as the worker, holding
Prefect's client contexts open: creating API clients per run costs more than the run itself
(TLS contexts, connection set-up). A burst of 200 scans queues here; the watcher is never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanner_agent.orchestration.engine_tuning import skip_suspension_observer
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Agent

log = logging.getLogger(__name__)

_STOP = (float("inf"), -1, -1)


class Dispatcher:
    def __init__(
        self, agent: Agent, workers: int, *, on_journal_error: Callable[[sqlite3.Error], None] | None = None
    ) -> None:
        self.agent = agent
        self.workers = workers
        #: Told when a scan could not be recorded (the journal's disk is full): the daemon stops.
        self.on_journal_error = on_journal_error
        self._q: queue.PriorityQueue[tuple[float, int, int]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._queued: set[int] = set()
        self._inflight: dict[int, float] = {}
        self._threads: list[threading.Thread] = []
        self._accepting = True
        self._idle = threading.Condition(self._lock)
        self.completed = 0

    # --- control ------------------------------------------------------------------------------

    def start(self) -> None:
        start_embedded_api()
        skip_suspension_observer()
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"scan-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, scan_id: int, ready_at: float | None = None) -> bool:
        """Queue a scan (by journal id) unless it is already queued or running."""
        with self._lock:
            if not self._accepting or scan_id in self._queued or scan_id in self._inflight:
                return False
            self._queued.add(scan_id)
        self._q.put((ready_at if ready_at is not None else time.time(), next(self._seq), scan_id))
        return True

    def stop(self, timeout: float) -> bool:
        """Stop taking scans, let in-flight ones finish within ``timeout``. True if all finished."""
        with self._lock:
            self._accepting = False
            self._queued.clear()
        # Drain what was waiting: those scans stay `ready` in the journal and resume next start.
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self._q.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (for `process` and tests)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._queued or self._inflight:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left if left is not None else 1.0)
        return True

    @property
    def queue_length(self) -> int:
        with self._lock:
            return len(self._queued)

    @property
    def in_flight(self) -> list[int]:
        with self._lock:
            return list(self._inflight)

    # --- workers -----------------------------------------------------------------------------

    def _worker(self) -> None:
        asyncio.run(self._aworker())

    async def _aworker(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.context import AsyncClientContext, SyncClientContext

        # Clients live as long as the worker: each new one costs ~0.2 s of TLS set-up.
        with SyncClientContext.get_or_create():
            async with (
                AsyncClientContext.get_or_create(),
                get_client(httpx_settings=CREATOR_HTTPX) as creator,
            ):
                while True:
                    _, _, scan_id = await asyncio.to_thread(self._q.get)
                    if scan_id < 0:
                        return
                    with self._lock:
                        if scan_id not in self._queued:  # dropped by stop()
                            continue
                        self._queued.discard(scan_id)
                        self._inflight[scan_id] = time.time()
                    try:
                        await run_scan(self.agent, scan_id, creator=creator)
                    except Exception as exc:
                        log.exception("scan %s: the flow run could not be completed", scan_id)
                        if isinstance(exc, sqlite3.Error) and self.on_journal_error is not None:
                            self.on_journal_error(exc)
                    finally:
                        with self._idle:
                            self._inflight.pop(scan_id, None)
                            self.completed += 1
                            self._idle.notify_all()


def start_embedded_api() -> None:
    """With no Prefect server configured, start Prefect's embedded API once, here, before any
    worker thread needs it: each thread would otherwise race to start its own on one port."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().start()


async def run_scan(agent: Agent, scan_id: int, *, creator: Any = None) -> Any:
    """Run the scan's flow; if Prefect itself fails, the journal still says what happened.

    ``creator``: the Prefect client that creates the run (a worker's, with ``CREATOR_HTTPX``);
    by default the context's."""
    from prefect.flow_engine import run_flow

    from scanner_agent.orchestration.flows import run_label, scan_flow_for

    rec = agent.journal.get(scan_id)
    if rec is None:
        return None
    unit = ScanUnit.from_path(rec.path)
    flow = scan_flow_for(agent.name)
    params = {"scanner": agent.name, "scan_id": scan_id, "path": rec.path, "label": run_label(unit, agent)}
    try:
        flow_run = await _flow_run_for(agent, rec, flow, params, creator)
        return await run_flow(flow, flow_run=flow_run, parameters=params, return_type="state")  # type: ignore[misc]
    except BaseException as exc:
        _after_engine_failure(agent, scan_id, exc)
        if isinstance(exc, Exception):
            return None
        raise
    finally:
        _after_engine_failure(agent, scan_id, None)


async def _flow_run_for(
    agent: Agent, rec: Any, flow: Any, params: dict[str, Any], creator: Any = None
) -> Any:
    """The Prefect run for this scan: its earlier run when it has one (released from hold, retried,
    resumed after a crash: one run per scan, its history in the run's states), else a new run of
    this scanner's deployment so the UI offers Retry."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    from scanner_agent.orchestration.deployment import ensure_deployment

    if not agent.deployment_checked:
        agent.deployment_checked = True
        try:
            agent.deployment_id = await ensure_deployment(agent)
        except Exception as exc:
            log.warning("could not register the Prefect deployment (runs will not offer Retry): %s", exc)
    from scanner_agent.orchestration.flows import run_tags

    tags = run_tags(agent, params["label"])
    async with contextlib.nullcontext(creator) if creator is not None else get_client() as client:
        if rec.flow_run_id:
            try:
                run = await client.read_flow_run(UUID(rec.flow_run_id))
            except Exception:
                run = None
            if run is not None and not (run.state and run.state.is_completed()):
                if not (run.state and run.state.name == "AwaitingRetry"):
                    await client.set_flow_run_state(
                        run.id, AwaitingRetry(message=f"scanner-agent: {rec.reason or 'again'}"), force=True
                    )
                return await client.read_flow_run(run.id)
        if agent.deployment_id is not None:
            run = await client.create_flow_run_from_deployment(
                agent.deployment_id, parameters=params, name=params["label"], tags=tags
            )
        else:
            run = await client.create_flow_run(flow, name=params["label"], parameters=params, tags=tags)
    # Recorded before the flow starts: an agent killed in between then continues this run on its
    # next start, instead of leaving it Scheduled (then Late) for ever and creating a second one.
    agent.journal.update(rec.id, flow_run_id=str(run.id))
    return run


#: Retry-After, in seconds, given to the first 503s of one request: see ``_busy_server_hook``.
BUSY_RETRY_AFTER = (0.05, 0.15, 0.4)
_busy_attempts: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


async def _busy_server_hook(response: Any) -> None:
    """httpx response hook for the client that creates scan runs: a 503 gets a short Retry-After.

    On Prefect's SQLite server, creating a run right after the previous one ended is often
    answered 503 (SQLite busy while the server records that run's events), and Prefect's client
    then sleeps 2 s before it asks again, unless the answer carries Retry-After, which it
    honours. Measured: 31 of 44 back-to-back runs paid the 2 s (bench.overhead). A 503 means
    nothing was written, so asking again soon is safe; after the first few, the client's own
    backoff (16 s, then 32 s) applies, so a server that stays busy is still given time.
    """
    if response.status_code != 503 or "Retry-After" in response.headers:
        return
    n = _busy_attempts.get(response.request, 0)
    if n < len(BUSY_RETRY_AFTER):
        _busy_attempts[response.request] = n + 1
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER[n])


#: httpx settings of each worker's run-creating client.
CREATOR_HTTPX = {"event_hooks": {"response": [_busy_server_hook]}}


def _after_engine_failure(agent: Agent, scan_id: int, exc: BaseException | None) -> None:
    """A run that ended without the flow recording an outcome (Prefect unreachable, a crash inside
    the engine) leaves the scan ``processing`` or ``ready``: make it a transient failure instead,
    so it is retried, and tell a person if Prefect itself is the problem."""
    rec = agent.journal.get(scan_id)
    if rec is None or rec.state not in ("processing", "ready"):
        return
    why = (
        f"the flow run did not finish: {type(exc).__name__}: {exc}"
        if exc
        else "the flow run ended without an outcome"
    )
    agent.journal.transition(
        scan_id,
        "failed",
        reason=why,
        kind="prefect_unreachable",
        next_check=time.time() + agent.cfg.scanner.retry_seconds,
    )
    agent.alert(
        "scan_error",
        f"{Path(rec.path).name}: {why}. The scan stays on the scanner and is retried.",
        file=Path(rec.path).name,
    )
