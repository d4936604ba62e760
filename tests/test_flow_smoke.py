"""The pipeline end to end through a real Prefect server: one scan stored, with run and task names."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from scanner_agent.synthetic import write_svs
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
                from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
                trs = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
                return (run, flow.name), [t.name.rsplit("-", 1)[0] for t in trs]

        (run, flow_name), tasks = asyncio.run(read_run())
        assert flow_name == "Scan Image Flow: Cardinal"
        assert run.name == "620995" and run.state.is_completed()
        assert "scanner:Cardinal" in run.tags and "study:Prec01" in run.tags
        for t in ("Identify Barcode", "Read Sheet Metadata", "Validate Slide", "Build Name", "Move Image"):
            assert t in tasks
    finally:
        agent.close()
