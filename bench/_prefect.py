"""A Prefect API for a benchmark: ``PREFECT_API_URL`` if set, else a local server started for the run.

Call ``prefect_api()`` before anything imports Prefect (it reads its settings at import). The
server runs on SQLite (or on a throw-away PostgreSQL cluster) in a temporary ``PREFECT_HOME``
with the UI off, and is stopped (and its home removed) when the context exits. Daemons started
afterwards inherit the environment. The server logs each request it answers with 503 because
SQLite was busy (the client then sleeps ~2 s and retries), so a benchmark can count them.
"""

from __future__ import annotations

import contextlib
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
PG_BIN = Path("/usr/lib/postgresql")
#: What the server logs (with PREFECT_API_LOG_RETRYABLE_ERRORS) for each request it answers 503.
RETRYABLE = "Encountered retryable exception in request"


def free_port() -> int:
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
def prefect_api(
    timeout: float = 180, *, database: str = "sqlite", home_parent: Path | None = None
) -> Iterator[str]:
    """Yield the API URL in use; start (and finally stop) a server when none is configured, on
    ``database`` "sqlite" (Prefect's default) or "postgres" (a throw-away cluster), with its home
    (and database) in a fresh folder under ``home_parent`` (default: the temporary folder)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    given = os.environ.get("PREFECT_API_URL")
    if given:
        if not _healthy(given):
            raise SystemExit(f"PREFECT_API_URL={given} does not answer /health")
        yield given
        return
    home = Path(tempfile.mkdtemp(prefix="scanner-agent-bench-prefect-", dir=home_parent))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
    }
    pg = None
    if database == "postgres":
        os.chmod(home, 0o755)  # the postgres user must reach its cluster below
        pg = Postgres(home / "pg")
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = pg.url
    exe = Path(sys.executable).with_name("prefect")
    with open(home / "server.log", "wb") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        print(
            f"starting a Prefect server for this run on {url} (set PREFECT_API_URL to use yours) ...",
            flush=True,
        )
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
        if pg is not None:
            pg.stop()
        shutil.rmtree(home, ignore_errors=True)


def server_log_count(needle: str) -> int | None:
    """How often ``needle`` appears in the log of the server this module started (None: not ours)."""
    log = _OWN_HOME[0] / "server.log" if _OWN_HOME else None
    if log is None or not log.exists():
        return None
    return log.read_text(errors="replace").count(needle)


class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1, run as the ``postgres`` user (it refuses root)."""

    def __init__(self, base: Path) -> None:
        versions = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.is_dir() else []
        if not versions:
            raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = versions[-1].parent
        self.data = base / "pgdata"
        self.port = free_port()
        base.mkdir(parents=True, exist_ok=True)
        self.data.mkdir()
        shutil.chown(base, "postgres")
        shutil.chown(self.data, "postgres")
        self._as_pg(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        self._as_pg(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(base / "pg.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c max_connections=200",
            "start",
        )
        for sql in ("CREATE USER prefect PASSWORD 'prefect'", "CREATE DATABASE prefect OWNER prefect"):
            self._as_pg(
                str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", sql
            )
        self.url = f"postgresql+asyncpg://prefect:prefect@127.0.0.1:{self.port}/prefect"

    def _as_pg(self, *cmd: str) -> None:
        run = ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)
        subprocess.run(run, check=True, capture_output=True, cwd="/")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
