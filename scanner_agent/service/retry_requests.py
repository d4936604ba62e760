"""Retry requests from the Prefect UI: scans whose run a person set to Retry go back in the queue."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from scanner_agent.core.states import ScanState
from scanner_agent.service.bootstrap import Services
from scanner_agent.service.dispatcher import Dispatcher

log = logging.getLogger(__name__)

#: A retried run of a scan in one of these states runs the scan again; a stored or quarantined
#: scan's run is handed to the flow, which says on the run why there is nothing to do.
_RETRYABLE = (ScanState.HELD, ScanState.FAILED, ScanState.PROCESSING, ScanState.READY)


class RetryPoller:
    """A thread that asks Prefect every ``prefect.retry_poll_seconds`` for runs set to Retry."""

    def __init__(self, services: Services, dispatcher: Dispatcher, stop_event: threading.Event) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self.stop_event = stop_event

    def start(self) -> None:
        threading.Thread(target=self._loop, name="prefect-retry-poller", daemon=True).start()

    def _loop(self) -> None:
        interval = self.services.cfg.prefect.retry_poll_seconds
        while not self.stop_event.wait(interval):
            if self.services.deployment_id is None:
                continue
            try:
                asyncio.run(self.take_retries())
            except Exception as exc:
                log.debug("polling for retries failed: %s", exc)

    async def take_retries(self) -> None:
        from scanner_agent.orchestration.deployment import reject_run, retry_requests

        s = self.services
        j = s.journal
        deployment_id = s.deployment_id
        if deployment_id is None:
            return
        for run in await retry_requests(deployment_id):
            scan_id = (run.parameters or {}).get("scan_id")
            sid = _as_scan_id(scan_id)
            rec = j.get(sid) if sid is not None else None
            if rec is not None and (run.parameters or {}).get("path") not in (None, rec.path):
                # Scan ids restart in a new journal: the same id may be another file here.
                await reject_run(
                    run.id,
                    f"scanner-agent on {s.name}: this run is for "
                    f"{run.parameters['path']}, but scan {scan_id} in its journal is {rec.path}; "
                    "the run is from an earlier journal or another host. Process that file with "
                    "`scanner-agent process` on the host that has it.",
                )
                continue
            if rec is None:
                await reject_run(
                    run.id,
                    f"scanner-agent on {s.name} has no scan {scan_id!r} in its journal; "
                    "start scans by placing them in the scanner's folder or with `scanner-agent process`.",
                )
                continue
            if rec.id in self.dispatcher.in_flight:
                continue
            if rec.state in _RETRYABLE:
                j.transition(
                    rec.id,
                    ScanState.READY,
                    reason="retry requested in the Prefect UI",
                    flow_run_id=str(run.id),
                    ready_at=time.time(),
                )
            else:
                j.update(rec.id, flow_run_id=str(run.id))
            log.info("retry requested in the Prefect UI for %s (run %s)", Path(rec.path).name, run.id)
            self.dispatcher.submit(rec.id, time.time())


def _as_scan_id(value: object) -> int | None:
    """A run's ``scan_id`` parameter as a journal id (a person may have edited it into a string)."""
    if isinstance(value, int):
        return int(value)
    return int(str(value)) if str(value).isdigit() else None
