"""Progress on long work: Move Image's progress artifact in Prefect, and ``process``'s bar or lines.

The artifact tests use the session's real Prefect server and read the artifacts back through its
API; the threshold is lowered for the test (a 1 GB slide would only make the suite slow). The
``process`` tests run the console script with its stdout a pipe, and on a real pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.orchestration import flow_progress
from scanner_agent.testing.synthetic import write_svs
from tests.harness import make_agent, process, write_config

SCRIPT = Path(sys.executable).with_name("scanner-agent")


async def _progress_artifacts(flow_run_id: Any = None) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    flt = ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
    if flow_run_id is not None:
        flt.flow_run_id = ArtifactFilterFlowRunId(any_=[flow_run_id])
    async with get_client() as client:
        return list(await client.read_artifacts(artifact_filter=flt))


def test_staged_bytes_counts_a_growing_partial_file_and_folder(tmp_path: Path) -> None:
    partial = tmp_path / "x.svs.partial"
    assert flow_progress.staged_bytes(partial) == 0
    partial.write_bytes(b"a" * 1000)
    assert flow_progress.staged_bytes(partial) == 1000
    folder = tmp_path / "x.mrxs.partial"
    (folder / "x").mkdir(parents=True)
    (folder / "x.mrxs").write_bytes(b"b" * 10)
    (folder / "x" / "Data0000.dat").write_bytes(b"c" * 90)
    assert flow_progress.staged_bytes(folder) == 100


@pytest.mark.filterwarnings("ignore:Artifact creation outside:FutureWarning")
def test_ticker_reports_how_far_the_partial_file_got(tmp_path: Path, prefect_api: str) -> None:
    """The ticker reads the staging file's size: half written reads as 50 % in Prefect."""
    dest = tmp_path / "Study" / "Name_620995.svs"
    incoming = dest.parent / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "Name_620995.svs.partial").write_bytes(b"x" * 500)
    ticker = flow_progress.CopyTicker(
        incoming / "Name_620995.svs.partial", 1000, dest.name, tick_seconds=0.05
    )
    ticker.start()
    deadline = time.monotonic() + 60
    while ticker.updates < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    ticker.finish(stored=False)  # a copy that failed: the artifact keeps the last figure read
    assert ticker.artifact_id is not None and ticker.updates >= 1

    async def read() -> tuple[Any, Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

        # By id: the session's server holds every test's artifacts, more than one page of them.
        only = ArtifactFilter(id=ArtifactFilterId(any_=[ticker.artifact_id]))
        async with get_client() as client:
            [got] = await client.read_artifacts(artifact_filter=only)
            return got, None

    artifact, _ = asyncio.run(read())
    assert artifact.type == "progress" and float(artifact.data) == 50.0
    assert artifact.description == "Copying Name_620995.svs: 50 % of 0.00 GB"


def test_move_image_keeps_a_progress_artifact_for_a_big_scan(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(tmp_path)
    agent = make_agent(cfg)
    try:
        small = write_svs(tmp_path / "scanner" / "545891_a.svs", barcode="545891", width=256, height=256)
        big = write_svs(tmp_path / "scanner" / "620995_a.svs", barcode="620995", width=1024, height=768)
        # "Big" for this test: above the small slide, at most the larger one.
        monkeypatch.setattr(flow_progress, "PROGRESS_ARTIFACT_MIN_BYTES", big.stat().st_size)
        [rec_small, rec_big] = process(agent, small, big)
    finally:
        agent.close()
    assert (rec_small.state, rec_big.state) == ("stored", "stored"), (rec_small.reason, rec_big.reason)
    [artifact] = asyncio.run(_progress_artifacts(rec_big.flow_run_id))
    assert float(artifact.data) == 100.0 and artifact.task_run_id is not None
    assert artifact.description == f"Stored {Path(rec_big.dest).name}"
    assert asyncio.run(_progress_artifacts(rec_small.flow_run_id)) == [], "a small scan gets no artifact"


# --- scanner-agent process: plain lines off a terminal, a live bar on one ---------------------------


def _two_scans(base: Path) -> tuple[Path, list[Path]]:
    cfg = write_config(base)
    scans = [
        write_svs(base / "scanner" / "620995_a.svs", barcode="620995", width=512, height=384),
        write_svs(base / "scanner" / "999999_a.svs", barcode="999999", width=512, height=384),
    ]
    return cfg, scans


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SCANNER_AGENT_ALLOW_ROOT", "JOURNAL_STREAM")}


def test_process_off_a_terminal_prints_one_plain_line_per_scan(tmp_path: Path, prefect_api: str) -> None:
    cfg, scans = _two_scans(tmp_path)
    got = subprocess.run(
        [str(SCRIPT), "process", "--config", str(cfg), *map(str, scans)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert got.returncode == 1, got.stderr  # one scan held: a person must add its row
    lines = got.stdout.splitlines()
    assert len(lines) == 2, got.stdout
    assert any(line.startswith("stored") and str(scans[0]) in line for line in lines)
    assert any(line.startswith("held") and str(scans[1]) in line for line in lines)
    assert "\x1b[" not in got.stdout and "\r" not in got.stdout, "no bar redrawn into a log"


def test_process_on_a_terminal_draws_a_live_bar_with_scans_bytes_rate_and_eta(
    tmp_path: Path, prefect_api: str
) -> None:
    cfg, scans = _two_scans(tmp_path)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(SCRIPT), "process", "--config", str(cfg), *map(str, scans)],
            env={**_env(), "COLUMNS": "160", "TERM": "xterm"},
            stdin=follower,
            stdout=follower,
            stderr=subprocess.PIPE,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=300) == 1, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(leader)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "backfill" in screen and "2/2 scans" in screen, screen
    assert "ETA" in screen and "/s" in screen, screen  # rate
    assert "stored" in screen and "held" in screen
