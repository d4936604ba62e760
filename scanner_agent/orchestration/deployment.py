"""A Prefect deployment per scanner, so a person can press Retry on a scan's run in the UI.

Prefect's UI offers Retry only for runs of a deployment. Each agent registers one deployment
(``Scan Image Flow: Cardinal/cardinal``) and creates every scan's run against it, then executes
the run in-process at once: no runner or worker polls for it, so the normal path pays nothing
for being retryable (a runner's poll adds 10–15 s before a run starts).

A Retry pressed in the UI sets the run to ``AwaitingRetry``; ``poll_retries`` (every few seconds,
only runs of this agent's own deployment, so each host retries only the scans on its own disk)
puts the scan back in the queue, and the same run is executed again with its parameters.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)


def deployment_name(scanner: str) -> str:
    return scanner.lower().replace(" ", "-")


async def ensure_deployment(scanner: str, watch: Path) -> UUID:
    """Create or update this scanner's deployment; returns its id."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.callables import parameter_schema

    from scanner_agent.orchestration.flows import scan_flow_for

    flow = scan_flow_for(scanner)
    async with get_client() as client:
        flow_id = await client.create_flow(flow)
        dep_id = await client.create_deployment(
            flow_id=flow_id,
            name=deployment_name(scanner),
            tags=[f"scanner:{scanner}"],
            description=(
                f"Scans from {scanner}'s folder {watch}, run by the scanner-agent "
                "on that host. Press Retry on a failed run once its cause is fixed; the agent that holds "
                "the scan reprocesses it."
            ),
            entrypoint="scanner_agent/orchestration/flows.py:scan_image_flow",
            parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
            enforce_parameter_schema=False,
        )
    return dep_id


class Deployment:
    """This scanner's deployment, registered once, on the first run that needs it.

    Dispatcher workers each run their own event loop in their own thread, so the first ones may
    ask at the same moment: one registers (in a thread of its own, on a loop of its own), the
    others wait for its answer instead of creating runs without a deployment meanwhile. A failed
    registration is not tried again: runs then simply offer no Retry in the UI.
    ``register=False`` never registers (runs without a deployment, as ``bench.overhead`` compares).
    """

    def __init__(self, scanner: str, watch: Path, *, register: bool = True) -> None:
        self.scanner = scanner
        self.watch = watch
        self._lock = threading.Lock()
        self._settled = not register
        self._id: UUID | None = None

    @property
    def id(self) -> UUID | None:
        """The deployment's id once registered; None before, or if it could not be."""
        return self._id

    async def ensure(self) -> UUID | None:
        if self._settled:
            return self._id
        return await asyncio.to_thread(self._ensure_blocking)

    def _ensure_blocking(self) -> UUID | None:
        with self._lock:
            if not self._settled:
                try:
                    self._id = asyncio.run(ensure_deployment(self.scanner, self.watch))
                except Exception as exc:
                    log.warning(
                        "could not register the Prefect deployment (runs will not offer Retry): %s", exc
                    )
                self._settled = True
        return self._id


async def retry_requests(deployment_id: UUID) -> list[Any]:
    """Runs of this agent's deployment that a person set to AwaitingRetry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    async with get_client() as client:
        return list(
            await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["AwaitingRetry"]))
                ),
                limit=100,
            )
        )


async def reject_run(run_id: UUID, message: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    async with get_client() as client:
        await client.set_flow_run_state(run_id, Failed(message=message), force=True)
