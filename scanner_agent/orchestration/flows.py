"""The Prefect flow: one run per scan, named by barcode, with tasks a person reads in the UI.

``Scan Image Flow: <scanner>`` runs ``pipeline.process_scan``; each of its steps (Identify
Barcode -> Read Sheet Metadata -> Validate Slide -> Check Quality -> Build Name -> Move Image (or
Move Rescanned Images) -> Free Scanner Disk) runs as a task of that name, and the run is left a
markdown artifact summing up the scan. Only the Prefect side is here: the decisions are the
pipeline's, and the journal (written by the pipeline) survives whatever happens to Prefect.

The flow body is ``async`` on purpose: Prefect's synchronous engine joins its heartbeat thread
at the end of every run, which costs ~1 s per scan; the async engine does not wait for it. The
tasks themselves are synchronous (file copies block; each dispatcher worker owns its loop).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar, cast

from prefect import Task, flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote

from scanner_agent.core.errors import ScanError
from scanner_agent.core.sheet_table import SheetTable
from scanner_agent.orchestration.flow_progress import with_copy_progress
from scanner_agent.pipeline import STEPS, ScanOutcome, ScanServices, Step, process_scan
from scanner_agent.systemd import journald

log = logging.getLogger(__name__)

T = TypeVar("T")


def _is_transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry only what a retry can fix: a sheet or storage that blinked, not a corrupt slide."""
    try:
        state.result()
    except ScanError as exc:
        return exc.transient
    except Exception:
        return False
    return False


_OPTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
# One quick retry for a share that blinked; a longer outage is the journal's job (it retries with
# backoff up to an hour) so a worker is not tied up waiting inside a run.
_MOVE_RETRIES: dict[str, Any] = {"retries": 1, "retry_delay_seconds": 5, "retry_condition_fn": _is_transient}
_RETRIES: dict[str, dict[str, Any]] = {
    "Read Sheet Metadata": {
        "retries": 2,
        "retry_delay_seconds": [2, 10],
        "retry_condition_fn": _is_transient,
    },
    "Move Image": _MOVE_RETRIES,
    "Move Rescanned Images": _MOVE_RETRIES,
}

#: Each pipeline step as the Prefect task the UI shows, by the step's name; the moves keep a
#: progress artifact up to date for a big scan (flow_progress.py).
TASKS: dict[str, Task[Any, Any]] = {
    step.name: task(name=step.name, **_OPTS, **_RETRIES.get(step.name, {}))(
        with_copy_progress(step.fn) if step.name in ("Move Image", "Move Rescanned Images") else step.fn
    )
    for step in STEPS
}


def run_as_task(step: Step[T], /, *args: Any) -> T:
    """The pipeline's step runner under Prefect: each step is its task.

    quote(): Prefect walks every task argument (for the UI's graph); a whole sheet of a few
    thousand rows costs ~0.3 s of CPU per call that way, and the GIL makes workers wait on it.
    The services are quoted too: they are never a task's result, so the graph loses nothing."""
    call = TASKS[step.name]
    return cast(T, call(*(quote(a) if isinstance(a, (SheetTable, ScanServices)) else a for a in args)))


class PrefectRun:
    """The pipeline's run port over the current Prefect flow run."""

    def __init__(self, svc: ScanServices) -> None:
        self.svc = svc
        self._run_id = str(runtime_flow_run.id) if runtime_flow_run.id else None
        # The run's name and tags as last written, so each update sends them whole (a PATCH of
        # tags replaces them) and none is sent when they are already right.
        self._name = str(runtime_flow_run.name or "")
        self._tags = set(runtime_flow_run.tags or [])

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def url(self) -> str | None:
        from scanner_agent.orchestration.runs import run_url

        return run_url(self.svc.settings.ui_url, self._run_id)

    async def tag_study(self, study: str) -> None:
        """Tag the run with its study when the dispatcher could not already (barcode only in the
        slide's metadata, or the row filled since): one PATCH, and none in the usual case."""
        if study:
            await self._update(self._name, self._tags | {f"scanner:{self.svc.name}", f"study:{study}"})

    async def name_by_barcode(self, barcode: str) -> None:
        """Once Identify Barcode has the barcode: the run named by it (it was named by its file
        when the name held none) and tagged ``barcode:<b>``, in one PATCH, none if already so."""
        await self._update(barcode, self._tags | {f"scanner:{self.svc.name}", f"barcode:{barcode}"})

    async def _update(self, name: str, tags: set[str]) -> None:
        if not self._run_id or (name == self._name and tags == self._tags):
            return
        from uuid import UUID

        from prefect.client.orchestration import get_client

        try:
            async with get_client() as client:
                await client.update_flow_run(
                    UUID(self._run_id), name=name if name != self._name else None, tags=sorted(tags)
                )
        except Exception:
            log.debug("could not rename or tag flow run %s", self._run_id, exc_info=True)
            return
        self._name, self._tags = name, tags

    async def artifact(self, markdown: str, *, key: str, description: str) -> None:
        try:
            await acreate_markdown_artifact(markdown, key=key, description=description)
        except Exception:
            log.debug("could not create artifact", exc_info=True)


# The flow's services: flow parameters are JSON (and shown in the UI), so the run is handed the
# scanner's name and ``run_scan`` binds the services for the run it executes. A context
# variable, not a process-wide table: nothing outlives the run, and two agents of one scanner
# name (tests) never see each other's services.
_SERVICES: ContextVar[ScanServices | None] = ContextVar("scanner_agent_services", default=None)


@contextlib.contextmanager
def bound_services(svc: ScanServices) -> Iterator[None]:
    """Make ``svc`` the services of the flow runs executed inside this block."""
    token = _SERVICES.set(svc)
    try:
        yield
    finally:
        _SERVICES.reset(token)


def services_for(scanner: str) -> ScanServices:
    svc = _SERVICES.get()
    if svc is None or svc.name != scanner:
        raise RuntimeError(f"no agent is running for scanner {scanner!r} in this process")
    return svc


def scan_flow_for(scanner: str) -> Any:
    """The flow object for one scanner (its name carries the scanner's, as the UI groups by flow)."""
    return scan_image_flow.with_options(name=f"Scan Image Flow: {scanner}")


@flow(
    name="Scan Image Flow",
    flow_run_name="{label}",
    persist_result=False,
    validate_parameters=False,
    log_prints=False,
)
async def scan_image_flow(scanner: str, scan_id: int, path: str, label: str) -> Any:
    """Process one complete scan from the scanner's folder into storage."""
    svc = services_for(scanner)
    run = PrefectRun(svc)
    # Every line logged about this scan carries its fields in journald (BARCODE= once it is known).
    with journald.scan_context(scanner=scanner, scan_id=scan_id, flow_run_id=run.run_id):
        outcome = await process_scan(svc, scan_id, Path(path), run=run, steps_runner=run_as_task)
    return final_state(outcome)


def final_state(outcome: ScanOutcome) -> State:
    """The run's final state: Completed or Failed, named as the automations expect."""
    if outcome.completed:
        return Completed(message=outcome.message, name=outcome.name)
    return Failed(message=outcome.message, name=outcome.name)


__all__ = ["scan_image_flow", "scan_flow_for", "run_as_task", "bound_services", "TASKS"]
