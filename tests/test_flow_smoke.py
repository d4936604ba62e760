"""The pipeline end to end through a real Prefect server: one scan stored, with run and task names."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import final_task_runs
from tests.harness import make_agent, process, write_config


def test_scan_is_stored_named_from_the_sheet_and_visible_in_prefect(tmp_path: Path, prefect_api: str) -> None:
    cfg = write_config(tmp_path)
    agent = make_agent(cfg)
    try:
        src = write_svs(tmp_path / "scanner" / "620995_x.svs", barcode="620995", width=1024, height=768)
        data = src.read_bytes()
        [rec] = process(agent, src)
        assert rec.state == "stored", rec.reason
        dest = tmp_path / "storage" / "Prec01" / "Run-2" / "Prec01_Run-2_P1_Cardinal_620995.svs"
        assert Path(rec.dest) == dest and dest.read_bytes() == data
        assert not src.exists()
        sidecar = json.loads(dest.with_suffix(".json").read_text())
        assert sidecar["barcode"] == "620995" and sidecar["sheet"]["row"] == 3

        async def read_run() -> tuple[object, list[str]]:
            from prefect.client.orchestration import get_client

            async with get_client() as c:
                run = await c.read_flow_run(rec.flow_run_id)
                flow = await c.read_flow(run.flow_id)
                trs = await final_task_runs(c, run.id, at_least=5)
                return (run, flow.name), [t.name.rsplit("-", 1)[0] for t in trs]

        (run, flow_name), tasks = asyncio.run(read_run())
        assert flow_name == "Scan Image Flow: Cardinal"
        assert run.name == "620995" and run.state.is_completed()
        assert "scanner:Cardinal" in run.tags and "study:Prec01" in run.tags
        for t in ("Identify Barcode", "Read Sheet Metadata", "Validate Slide", "Build Name", "Move Image"):
            assert t in tasks
    finally:
        agent.close()


def test_scan_runs_skip_the_suspension_observer_on_the_pinned_prefect(
    tmp_path: Path, prefect_api: str
) -> None:
    """The agent's one change to Prefect's engine (scanner_agent/orchestration/engine_tuning.py) takes effect,
    and a deployment run still completes with it. If a Prefect upgrade moves the name the change
    is made on, this fails and says where to look."""
    import prefect.flow_engine

    from scanner_agent.orchestration import engine_tuning

    assert engine_tuning.skip_suspension_observer(), "see scanner_agent/orchestration/engine_tuning.py"
    assert prefect.flow_engine.observe_flow_run_suspension is engine_tuning._no_suspension_observer
    agent = make_agent(write_config(tmp_path))
    try:
        src = write_svs(tmp_path / "scanner" / "620995_x.svs", barcode="620995", width=512, height=384)
        [rec] = process(agent, src)
        assert rec.state == "stored", rec.reason

        async def read_run() -> object:
            from prefect.client.orchestration import get_client

            async with get_client() as c:
                return await c.read_flow_run(rec.flow_run_id)

        run = asyncio.run(read_run())
        assert run.deployment_id is not None and run.state.is_completed()  # type: ignore[attr-defined]
    finally:
        agent.close()


def test_a_busy_server_is_asked_again_within_tenths_of_a_second_then_as_prefect_would() -> None:
    """The run-creating client's hook: short Retry-After on the first 503s of a request, then none."""
    import httpx

    from scanner_agent.orchestration.runs import BUSY_RETRY_AFTER, _busy_server_hook

    request = httpx.Request("POST", "http://127.0.0.1/api/deployments/x/create_flow_run")
    waits = []
    for _ in range(len(BUSY_RETRY_AFTER) + 2):
        response = httpx.Response(503, request=request)
        asyncio.run(_busy_server_hook(response))
        waits.append(response.headers.get("Retry-After"))
    assert waits == [str(w) for w in BUSY_RETRY_AFTER] + [None, None]

    ok = httpx.Response(201, request=httpx.Request("POST", "http://127.0.0.1/api/flow_runs/"))
    asyncio.run(_busy_server_hook(ok))
    assert "Retry-After" not in ok.headers
    told = httpx.Response(
        503, request=httpx.Request("GET", "http://127.0.0.1/api/health"), headers={"Retry-After": "7"}
    )
    asyncio.run(_busy_server_hook(told))
    assert told.headers["Retry-After"] == "7"  # the server's own answer stands
