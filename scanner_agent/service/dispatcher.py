"""The dispatcher: a bounded pool of workers that runs ready scans, oldest first.

Each worker is a thread with its own event loop that lives as long as the worker, holding
Prefect's client contexts open: creating API clients per run costs more than the run itself
(TLS contexts, connection set-up). A burst of 200 scans queues here; the watcher is never blocked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from scanner_agent.orchestration.engine_tuning import skip_suspension_observer
from scanner_agent.orchestration.runs import CREATOR_HTTPX, run_scan, start_embedded_api
from scanner_agent.service.bootstrap import Services
from scanner_agent.systemd import journald

log = logging.getLogger(__name__)

_STOP = (float("inf"), -1, -1)


class Dispatcher:
    def __init__(
        self,
        services: Services,
        workers: int,
        *,
        on_journal_error: Callable[[sqlite3.Error], None] | None = None,
    ) -> None:
        self.services = services
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
        #: Told each scan id whose run ended, whatever the outcome (the metrics count stored scans).
        self.on_finished: Callable[[int], None] | None = None

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
                        ctx = {"scan_id": scan_id}  # journald's SCAN_ID= on every line about the scan
                        with journald.scan_context(**ctx):
                            await run_scan(self.services, scan_id, creator=creator)
                    except Exception as exc:
                        log.exception("scan %s: the flow run could not be completed", scan_id, extra=ctx)
                        if isinstance(exc, sqlite3.Error) and self.on_journal_error is not None:
                            self.on_journal_error(exc)
                    finally:
                        with self._idle:
                            self._inflight.pop(scan_id, None)
                            self.completed += 1
                            self._idle.notify_all()
                        if self.on_finished is not None:
                            try:
                                self.on_finished(scan_id)
                            except Exception:  # a metrics slip never stops a worker
                                log.exception("scan %s: after-run hook failed", scan_id)
