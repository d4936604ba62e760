"""A Prefect API for a benchmark: ``PREFECT_API_URL`` if set, else a local server started for the run.

Call ``prefect_api()`` before anything imports Prefect (it reads its settings at import). The
server runs on SQLite in a temporary ``PREFECT_HOME`` with the UI off, and is stopped (and its
home removed) when the context exits. Daemons started afterwards inherit the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_OWN_HOME: list[Path] = []  # the PREFECT_HOME of the server this module started, if any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def prefect_api(timeout: float = 180) -> Iterator[str]:
    """Yield the API URL in use; start (and finally stop) a server when none is configured."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    given = os.environ.get("PREFECT_API_URL")
    if given:
        if not _healthy(given):
            raise SystemExit(f"PREFECT_API_URL={given} does not answer /health")
        yield given
        return
    home = Path(tempfile.mkdtemp(prefix="scanner-agent-bench-prefect-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_API_HOST": "127.0.0.1"}
    exe = Path(sys.executable).with_name("prefect")
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        print(f"starting a Prefect server for this run on {url} (set PREFECT_API_URL to use yours) ...", flush=True)
        end = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise SystemExit(f"prefect server exited; see {home / 'server.log'}")
            if time.monotonic() > end:
                raise SystemExit(f"prefect server did not answer within {timeout:.0f} s")
            time.sleep(0.3)
        os.environ["PREFECT_API_URL"] = url
        os.environ.setdefault("PREFECT_HOME", str(home))
        _OWN_HOME.append(home)
        yield url
    finally:
        _OWN_HOME.clear()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def server_log_count(needle: str) -> int | None:
    """How often ``needle`` appears in the log of the server this module started (None: not ours)."""
    log = _OWN_HOME[0] / "server.log" if _OWN_HOME else None
    if log is None or not log.exists():
        return None
    return log.read_text(errors="replace").count(needle)


class RetryCounter(logging.Handler):
    """Counts the Prefect client's retries on 503 (SQLite's "database is locked", answered by the
    server as Service Unavailable) and 429, which the client logs at DEBUG before sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retryable status code" in record.getMessage():
            self.count += 1


def count_client_retries() -> RetryCounter:
    """Attach a ``RetryCounter`` to this process's Prefect client logger (its DEBUG lines are
    counted, not printed)."""
    counter = RetryCounter()
    logger = logging.getLogger("prefect.client")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the DEBUG lines would otherwise reach Prefect's console handler
    logger.addHandler(counter)
    return counter
