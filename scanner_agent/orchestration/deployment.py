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

import logging
from typing import Any
from uuid import UUID

from scanner_agent.service.bootstrap import Agent

log = logging.getLogger(__name__)


def deployment_name(agent: Agent) -> str:
    return agent.name.lower().replace(" ", "-")


async def ensure_deployment(agent: Agent) -> UUID:
    """Create or update this scanner's deployment; returns its id."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.callables import parameter_schema

    from scanner_agent.orchestration.flows import scan_flow_for

    flow = scan_flow_for(agent.name)
    async with get_client() as client:
        flow_id = await client.create_flow(flow)
        dep_id = await client.create_deployment(
            flow_id=flow_id,
            name=deployment_name(agent),
            tags=[f"scanner:{agent.name}"],
            description=(
                f"Scans from {agent.name}'s folder {agent.cfg.scanner.watch}, run by the scanner-agent "
                "on that host. Press Retry on a failed run once its cause is fixed; the agent that holds "
                "the scan reprocesses it."
            ),
            entrypoint="scanner_agent/orchestration/flows.py:scan_image_flow",
            parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
            enforce_parameter_schema=False,
        )
    return dep_id


def ensure_deployment_sync(agent: Agent) -> UUID | None:
    import asyncio

    try:
        return asyncio.run(ensure_deployment(agent))
    except Exception as exc:
        log.warning(
            "could not register the Prefect deployment for %s (runs will not offer Retry): %s",
            agent.name,
            exc,
        )
        return None


async def retry_requests(agent: Agent, deployment_id: UUID) -> list[Any]:
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
