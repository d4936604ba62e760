"""Run creation: one Prefect flow run per scan, created against the scanner's deployment and executed here.

``run_scan`` is what a dispatcher worker calls for each scan: it finds or creates the scan's run
(``_flow_run_for``), binds the scanner's services for the flow (flow parameters are JSON, so the
flow cannot be handed them) and executes the run in-process. If Prefect itself fails, the
journal still says what happened (``_after_engine_failure``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from scanner_agent.core.barcode import barcode_from_name
from scanner_agent.core.sheet_table import lookup
from scanner_agent.core.states import ScanState
from scanner_agent.journal import ScanRecord
from scanner_agent.orchestration.deployment import Deployment
from scanner_agent.orchestration.flows import bound_services, scan_flow_for
from scanner_agent.pipeline import ScanServices
from scanner_agent.scanunit import ScanUnit

log = logging.getLogger(__name__)


class Scanner(Protocol):
    """What run creation needs from the agent's services (``service.bootstrap.Services`` has it)."""

    @property
    def scan(self) -> ScanServices: ...

    @property
    def deployment(self) -> Deployment: ...


def run_url(ui_url: str, flow_run_id: str | None) -> str | None:
    """A link a person can click: the flow run's page in the Prefect UI (as configured, else as
    Prefect's own setting says)."""
    if not flow_run_id:
        return None
    import os

    base = (ui_url or os.environ.get("PREFECT_UI_URL", "")).rstrip("/")
    if not base:
        from prefect.settings import PREFECT_UI_URL

        base = (PREFECT_UI_URL.value() or "").rstrip("/")
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


def run_label(unit: ScanUnit, svc: ScanServices) -> str:
    """The run's name: the barcode when the file name has one (cheap), else the file name."""
    try:
        return barcode_from_name(unit.name, svc.settings.barcode_regex) or unit.name
    except ValueError:  # two barcodes, or look-alike digits: the run itself says why; name it by its file
        return unit.name


def run_tags(svc: ScanServices, label: str) -> list[str]:
    """Tags for a new run: the scanner, and the study when the (cached) sheet already knows the
    barcode, so the run needs no second API call to be tagged."""
    tags = [f"scanner:{svc.name}"]
    try:
        row = lookup(svc.sheet.table(), label)
    except Exception:
        row = None
    study = row.values.get("Study", "") if row is not None else ""
    if _is_barcode(label, svc):  # named by the barcode in its file name: tagged so from the start
        tags.append(f"barcode:{label}")
    return tags + ([f"study:{study}"] if study else [])


def _is_barcode(label: str, svc: ScanServices) -> bool:
    try:
        return barcode_from_name(label, svc.settings.barcode_regex) == label
    except ValueError:
        return False


def start_embedded_api() -> None:
    """With no Prefect server configured, start Prefect's embedded API once, here, before any
    worker thread needs it: each thread would otherwise race to start its own on one port."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().start()


async def run_scan(services: Scanner, scan_id: int, *, creator: Any = None) -> Any:
    """Run the scan's flow; if Prefect itself fails, the journal still says what happened.

    ``creator``: the Prefect client that creates the run (a worker's, with ``CREATOR_HTTPX``);
    by default the context's."""
    from prefect.flow_engine import run_flow

    svc = services.scan
    rec = svc.journal.get(scan_id)
    if rec is None:
        return None
    unit = ScanUnit.from_path(rec.path)
    flow = scan_flow_for(svc.name)
    params = {"scanner": svc.name, "scan_id": scan_id, "path": rec.path, "label": run_label(unit, svc)}
    try:
        flow_run = await _flow_run_for(services, rec, flow, params, creator)
        with bound_services(svc):
            return await run_flow(flow, flow_run=flow_run, parameters=params, return_type="state")  # type: ignore[misc]
    except BaseException as exc:
        _after_engine_failure(svc, scan_id, exc)
        if isinstance(exc, Exception):
            return None
        raise
    finally:
        _after_engine_failure(svc, scan_id, None)


async def _flow_run_for(
    services: Scanner, rec: ScanRecord, flow: Any, params: dict[str, Any], creator: Any = None
) -> Any:
    """The Prefect run for this scan: its earlier run when it has one (released from hold, retried,
    resumed after a crash: one run per scan, its history in the run's states), else a new run of
    this scanner's deployment so the UI offers Retry."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    deployment_id = await services.deployment.ensure()
    svc = services.scan
    tags = run_tags(svc, params["label"])
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
        if deployment_id is not None:
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters=params, name=params["label"], tags=tags
            )
        else:
            run = await client.create_flow_run(flow, name=params["label"], parameters=params, tags=tags)
    # Recorded before the flow starts: an agent killed in between then continues this run on its
    # next start, instead of leaving it Scheduled (then Late) for ever and creating a second one.
    svc.journal.update(rec.id, flow_run_id=str(run.id))
    return run


#: Retry-After, in seconds, given to the first 503s of one request: see ``_busy_server_hook``.
BUSY_RETRY_AFTER = (0.05, 0.15, 0.4)
#: Where the hook counts a request's 503s: on the request itself, which Prefect's client sends
#: again as it is, so no table of requests outlives them.
_BUSY_COUNT = "scanner_agent.busy_503s"


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
    request = response.request
    n = request.extensions.get(_BUSY_COUNT, 0)
    if n < len(BUSY_RETRY_AFTER):
        request.extensions[_BUSY_COUNT] = n + 1
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER[n])


#: httpx settings of each worker's run-creating client.
CREATOR_HTTPX = {"event_hooks": {"response": [_busy_server_hook]}}


def _after_engine_failure(svc: ScanServices, scan_id: int, exc: BaseException | None) -> None:
    """A run that ended without the flow recording an outcome (Prefect unreachable, a crash inside
    the engine) leaves the scan ``processing`` or ``ready``: make it a transient failure instead,
    so it is retried, and tell a person if Prefect itself is the problem."""
    rec = svc.journal.get(scan_id)
    if rec is None or rec.state not in (ScanState.PROCESSING, ScanState.READY):
        return
    why = (
        f"the flow run did not finish: {type(exc).__name__}: {exc}"
        if exc
        else "the flow run ended without an outcome"
    )
    svc.journal.transition(
        scan_id,
        ScanState.FAILED,
        reason=why,
        kind="prefect_unreachable",
        next_check=time.time() + svc.settings.retry_seconds,
    )
    svc.notifier.alert(
        "scan_error",
        f"{Path(rec.path).name}: {why}. The scan stays on the scanner and is retried.",
        file=Path(rec.path).name,
    )
