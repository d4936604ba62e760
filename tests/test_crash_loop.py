"""The crash-loop guard with a real daemon: a scan the agent died processing twice in a row is set
aside on the third start (failed, "the agent stopped twice while processing it", one alert), the
agent goes on with the other scans, and ``scanner-agent retry --barcode B`` brings it back.

The daemon (``scanner-agent run``) is killed with SIGKILL, as the kernel's OOM killer or a crash in
a library outside the slide worker would stop it, each time while the scan is being copied
(``[transfer] max_mb_per_second`` keeps the copy slow enough to catch it in the act).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.core.crashloop import DEATHS_KEY, REASON
from scanner_agent.core.errors import AgentStoppedTwice
from scanner_agent.testing.synthetic import write_svs
from tests.daemon_helpers import SCANNER_AGENT, DaemonProcess, records, wait_for
from tests.harness import write_config
from tests.servers.slack_api import SlackApiServer

pytest_plugins = ["tests.servers.fixtures"]
TOKEN = "xoxb-crashloop-3131-SECRET"
BIG = "620995_big.svs"


def _row(journal: Path, name: str) -> Any:
    rows = [r for r in records(journal) if r.path.endswith(name)]
    return rows[-1] if rows else None


def _posts_about(slack: SlackApiServer, name: str) -> list[dict[str, Any]]:
    posts = [c.payload for c in slack.calls_to("chat.postMessage", ok_only=True)]
    return [p for p in posts if name in p.get("text", "") + json.dumps(p.get("blocks", []))]


def _drop(tmp_path: Path, watch: Path, name: str, **kw: Any) -> None:
    staged = write_svs(tmp_path / name, **kw)
    os.rename(staged, watch / name)


@pytest.fixture
def storage() -> Iterator[Path]:
    """Storage on another filesystem (tmpfs under /dev/shm), so the scan is copied, not linked."""
    path = Path("/dev/shm") / f"crash-loop-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _kill_while_processing(daemon: DaemonProcess, journal: Path, deaths_before: int) -> None:
    """SIGKILL the daemon while it is copying the big scan (after it counted ``deaths_before``)."""
    daemon.wait_watching()

    def copying() -> bool:
        rec = _row(journal, BIG)
        return bool(
            rec is not None
            and rec.state == "processing"
            and int(rec.details.get(DEATHS_KEY) or 0) == deaths_before
            and rec.details.get("planned_dest")  # past validation, in the (slow) copy
        )

    wait_for(copying, 120, f"{BIG} processing (after {deaths_before} death(s))", alive=daemon)
    assert daemon.kill() == -9


def test_a_scan_that_killed_the_agent_twice_is_set_aside_on_the_third_start(
    tmp_path: Path,
    storage: Path,
    slack: SlackApiServer,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    cfg = write_config(
        tmp_path / "site",
        name=f"Loop-{os.urandom(3).hex()}",
        scanner={"settle_seconds": 0.3, "max_parallel": 1},
        storage={"root": str(storage), "reserve_bytes": 0},  # another filesystem: really copied
        transfer={"max_mb_per_second": 1.0},  # the 6 MB scan takes ~6 s to copy
        alerts={"slack_channel": "#slide-scanning", "slack_api_url": slack.url},
    )
    watch = tmp_path / "site" / "scanner"
    _drop(tmp_path, watch, BIG, width=4096, height=3072)
    with DaemonProcess(cfg, tmp_path / "daemon-1.log") as first:
        journal = first.cfg.journal.path
        _kill_while_processing(first, journal, 0)
    with DaemonProcess(cfg, tmp_path / "daemon-2.log") as second:
        _kill_while_processing(second, journal, 1)  # resumed once, and died on it again
    assert _row(journal, BIG).state == "processing"

    with DaemonProcess(cfg, tmp_path / "daemon-3.log") as third:
        third.wait_watching()
        rec = _row(journal, BIG)
        assert (rec.state, rec.kind, rec.reason) == ("failed", AgentStoppedTwice.kind, REASON)
        assert rec.barcode == "620995" and not rec.next_check  # waits for a person, not a timer
        assert (watch / BIG).exists()  # nothing is lost: the scan stays on the scanner
        # Everything else goes on.
        _drop(tmp_path, watch, "645750_next.svs", width=1024, height=768)
        wait_for(
            lambda: getattr(_row(journal, "645750_next.svs"), "state", None) == "stored",
            120,
            "the next scan stored",
            alive=third,
        )
        assert _row(journal, BIG).state == "failed"  # not picked up again on its own
        posts = _posts_about(slack, BIG)
        assert len(posts) == 1 and REASON in json.dumps(posts[0]), posts

        # retry --barcode brings it back, deliberately; the running daemon stores it.
        out = subprocess.run(
            [str(SCANNER_AGENT), "retry", "--config", str(cfg), "--barcode", "620995"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and BIG in out.stdout, out
        wait_for(
            lambda: getattr(_row(journal, BIG), "state", None) == "stored", 180, f"{BIG} stored", alive=third
        )
        done = _row(journal, BIG)
        assert not done.details.get(DEATHS_KEY)  # reset at rest: a later death starts a new count
        assert len(_posts_about(slack, BIG)) == 1  # one alert, never repeated
        assert third.terminate(120) == 0, third.log_tail()
