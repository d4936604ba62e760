"""Runs a dead agent left active: set them Crashed (or Completed when the journal says stored).

A killed agent cannot tell Prefect that its run ended, so the next start (and a stop past its
timeout) says so here. The journal decides: a scan it records as stored was stored, whatever the
run last said.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from scanner_agent.core.states import ScanState
from scanner_agent.journal import Journal

log = logging.getLogger(__name__)


def mark_stale_runs_crashed(
    journal: Journal, flow_name: str, started_at: float, run_ids: list[str], *, message: str | None = None
) -> int:
    """Mark a scanner's runs (flow ``flow_name``) Crashed: the given ids, plus any of its runs still
    Running/Pending from before ``started_at`` (a killed agent cannot say so itself)."""
    try:
        return asyncio.run(_mark_crashed(journal, flow_name, started_at, run_ids, message))
    except Exception as exc:
        log.warning("could not mark stale Prefect runs Crashed: %s", exc)
        return 0


async def _mark_crashed(
    journal: Journal, flow_name: str, started_at: float, run_ids: list[str], message: str | None
) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed, Crashed

    msg = (
        message
        or "scanner-agent stopped while this run was active (killed or power loss); the scan was resumed"
    )
    n = 0
    async with get_client() as client:
        ids = {UUID(i) for i in run_ids}
        if message is None:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                    ),
                    # model_validate: Prefect types the field as its own DateTime and converts a datetime.
                    start_time=FlowRunFilterStartTime.model_validate(
                        {"before_": datetime.fromtimestamp(started_at, tz=UTC)}
                    ),
                ),
                limit=200,
            )
            ids |= {r.id for r in runs}
        for rid in ids:
            try:
                run = await client.read_flow_run(rid)
                if run.state and run.state.is_final():
                    continue
                rec = journal.by_flow_run(str(rid))
                if rec is not None and rec.state == ScanState.STORED:
                    # Stored and recorded; the agent only died before Prefect was told. "Crashed"
                    # would send a person looking for a resumed run that will never come.
                    await client.set_flow_run_state(
                        rid,
                        Completed(
                            message=f"Stored {rec.barcode or Path(rec.path).name} as {rec.dest} "
                            "(the agent stopped before it could report it)"
                        ),
                        force=True,
                    )
                    continue
                await client.set_flow_run_state(rid, Crashed(message=msg), force=True)
                n += 1
            except Exception:
                log.debug("could not mark run %s crashed", rid, exc_info=True)
    return n
