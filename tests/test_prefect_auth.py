"""A real Prefect server started with ``PREFECT_SERVER_API_AUTH_STRING``: the agent (``process``,
``run``), ``check`` and ``setup-prefect`` work with the client's ``PREFECT_API_AUTH_STRING``, and a
missing or wrong credential is one clear error, not "does not answer" or a failed run.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_agent.testing.synthetic import write_svs
from tests.harness import write_config

AUTH = "scanner:correct-horse-battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def auth_server() -> Iterator[str]:
    home = Path(tempfile.mkdtemp(prefix="scanner-agent-auth-prefect-"))
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": AUTH,
    }
    env.pop("PREFECT_API_URL", None)
    exe = Path(sys.executable).with_name("prefect")
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"prefect server exited; see {home}/server.log") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def agent(url: str, auth: str | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": url, "SCANNER_AGENT_ALLOW_ROOT": "1"}
    env.pop("PREFECT_API_AUTH_STRING", None)
    if auth is not None:
        env["PREFECT_API_AUTH_STRING"] = auth
    return subprocess.run(
        [sys.executable, "-m", "scanner_agent.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def config(tmp_path: Path, auth_server: str) -> Path:
    return write_config(tmp_path, prefect={"api_url": auth_server})


def prefect_line(out: str) -> str:
    [line] = [ln for ln in out.splitlines() if "prefect:" in ln]
    return line


def test_check_passes_with_the_credential(config: Path, auth_server: str) -> None:
    got = agent(auth_server, AUTH, "check", "--config", str(config))
    line = prefect_line(got.stdout)
    assert line.strip().startswith("✓") and "answers" in line, got.stdout + got.stderr
    assert "correct-horse-battery" not in got.stdout + got.stderr  # the secret is never printed


@pytest.mark.parametrize(
    ("auth", "words"),
    [
        (None, "requires a credential (401): set PREFECT_API_AUTH_STRING"),
        ("scanner:wrong", "refused our credential"),
    ],
    ids=["missing", "wrong"],
)
def test_check_names_a_missing_or_wrong_credential(
    config: Path, auth_server: str, auth: str | None, words: str
) -> None:
    got = agent(auth_server, auth, "check", "--config", str(config))
    line = prefect_line(got.stdout)
    assert got.returncode == 1 and line.strip().startswith("✗") and words in line, got.stdout
    assert "does not answer" not in line


@pytest.mark.parametrize("auth", [None, "scanner:wrong"], ids=["missing", "wrong"])
def test_run_refuses_to_start_with_a_refused_credential(
    config: Path, auth_server: str, auth: str | None
) -> None:
    got = agent(auth_server, auth, "run", "--config", str(config), timeout=120)
    assert got.returncode == 78, got.stderr[-2000:]  # EX_CONFIG: systemd does not restart-loop on it
    assert "PREFECT_API_AUTH_STRING" in got.stderr and auth_server in got.stderr


def test_setup_prefect_and_a_scan_work_with_the_credential(
    config: Path, auth_server: str, tmp_path: Path
) -> None:
    got = agent(auth_server, AUTH, "setup-prefect", "--config", str(config))
    assert got.returncode == 0 and "automations for Cardinal are in place" in got.stdout, got.stderr[-2000:]
    bad = agent(auth_server, "scanner:wrong", "setup-prefect", "--config", str(config))
    assert bad.returncode == 2 and "refused our credential" in bad.stderr, bad.stderr[-2000:]
    scan = write_svs(tmp_path / "scanner" / "S_620995.svs", barcode="620995", width=1024, height=768)
    got = agent(auth_server, AUTH, "process", "--config", str(config), str(scan))
    assert got.returncode == 0 and got.stdout.startswith("stored"), got.stdout + got.stderr[-3000:]
