"""Test-session set-up: one real Prefect server per session, shared by every test that runs flows.

Prefect's embedded mode would start a temporary server in every process (8–17 s each), so the
session reserves a port and points ``PREFECT_API_URL`` at it before anything imports Prefect
(Prefect reads its settings at import); the server itself starts on first use. Set
``PREFECT_API_URL`` yourself to use a running server instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

_STATE: dict[str, object] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_configure(config: pytest.Config) -> None:
    home = tempfile.mkdtemp(prefix="scanner-agent-test-prefect-")
    _STATE["home"] = home
    os.environ.setdefault("PREFECT_HOME", home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "scanner_agent")
    if not os.environ.get("PREFECT_API_URL"):
        port = _free_port()
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        _STATE["port"] = port


def _start_server() -> None:
    port = _STATE["port"]
    home = Path(str(_STATE["home"]))
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
    }
    env.pop("PREFECT_API_URL", None)
    exe = Path(sys.executable).with_name("prefect")
    # The server writes to its own copy of the descriptor; ours is closed once it has started.
    with open(home / "server.log", "wb") as log:
        _STATE["proc"] = subprocess.Popen(
            [str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_prefect(timeout: float = 180) -> str:
    url = os.environ["PREFECT_API_URL"]
    if "port" in _STATE and "proc" not in _STATE:
        _start_server()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            pass
        proc = _STATE.get("proc")
        if proc is not None and proc.poll() is not None:  # type: ignore[union-attr]
            raise RuntimeError(f"prefect server exited; see {_STATE['home']}/server.log")
        time.sleep(0.3)
    raise RuntimeError(f"prefect server at {url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """The URL of the session's Prefect API (started on first use)."""
    return wait_for_prefect()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Send Prefect's queued logs and events while the server is still up: otherwise its workers
    retry against a stopped server at exit, which costs a minute and prints errors."""
    if "proc" not in _STATE:
        return
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception:
        pass


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = _STATE.get("proc")
    if proc is not None:
        proc.terminate()  # type: ignore[union-attr]
        try:
            proc.wait(20)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            proc.kill()  # type: ignore[union-attr]
    shutil.rmtree(str(_STATE.get("home", "")), ignore_errors=True)
