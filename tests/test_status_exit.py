"""``scanner-agent status`` exit codes, as monitoring reads them (LSB): each case through the real script.

0 the daemon runs and nothing needs a person; 1 it runs but something does (a failed or
quarantined scan, a hold past its alert, an alert undelivered for a while, an unhealthy
watcher); 3 the daemon is not running. The journal is a real one, written the way the daemon
writes it; "running" is the daemon's health report naming a live pid (this test's own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scanner_agent.core.alerts import Alert
from scanner_agent.core.states import ScanState
from scanner_agent.journal import AlertOutbox, Journal
from tests.harness import write_config

SCRIPT = Path(sys.executable).with_name("scanner-agent")


def status(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run(
        [str(SCRIPT), "status", "--config", str(cfg), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _journal(base: Path, clock: Callable[[], float] = time.time) -> Journal:
    return Journal(base / "state" / "cardinal.sqlite", clock=clock)


def _running(j: Journal, *, watcher_alive: bool = True) -> None:
    j.set_health(
        pid=os.getpid(),
        watch="/data/scanner",
        observer="inotify",
        watcher_alive=watcher_alive,
        watcher_error=None if watcher_alive else "inotify watch limit reached",
        watching_since=time.time(),
        queue=0,
        in_flight=[],
    )


def _scan(j: Journal, name: str, state: str, reason: str) -> None:
    rec, _ = j.record_ready(f"/data/scanner/{name}", 1000, 1)
    j.transition(rec.id, ScanState.PROCESSING, reason="flow run started")
    j.transition(rec.id, state, reason=reason, kind="test")


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def test_running_and_healthy_exits_0(cfg: Path, tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _running(j)
    _scan(j, "620995.svs", ScanState.STORED, "stored")
    _scan(j, "999999.svs", ScanState.HELD, "no sheet row for 999999")  # held, not yet past its alert
    j.close()
    got = status(cfg)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "needs a person" not in got.stdout


def test_daemon_not_running_exits_3(cfg: Path, tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.set_health(pid=os.getpid(), stopped_at=time.time())
    j.close()
    got = status(cfg)
    assert got.returncode == 3, got.stdout + got.stderr
    assert "daemon: not running" in got.stdout


def test_no_daemon_ever_exits_3(cfg: Path) -> None:
    assert status(cfg).returncode == 3


def test_a_dead_pid_exits_3(cfg: Path, tmp_path: Path) -> None:
    """Killed without a stop (SIGKILL, power loss): the health report names a pid that is gone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    j = _journal(tmp_path)
    j.set_health(pid=child.pid, watcher_alive=True)
    j.close()
    assert status(cfg).returncode == 3


@pytest.mark.parametrize("state", [ScanState.FAILED, ScanState.QUARANTINED])
def test_a_failed_or_quarantined_scan_exits_1(cfg: Path, tmp_path: Path, state: str) -> None:
    j = _journal(tmp_path)
    _running(j)
    _scan(j, "620995.svs", state, "the slide does not open")
    j.close()
    got = status(cfg)
    assert got.returncode == 1, got.stdout + got.stderr
    assert f"needs a person: 1 scan(s) {state}" in got.stdout


def test_a_hold_past_its_alert_exits_1(cfg: Path, tmp_path: Path) -> None:
    long_ago = time.time() - 25 * 3600  # hold_alert_hours defaults to 24
    j = _journal(tmp_path, clock=lambda: long_ago)
    _scan(j, "999999.svs", ScanState.HELD, "no sheet row for 999999")
    j.close()
    j = _journal(tmp_path)
    _running(j)
    j.close()
    got = status(cfg, "--json")
    assert got.returncode == 1, got.stdout + got.stderr
    doc = json.loads(got.stdout)
    assert doc["exit_code"] == 1
    assert doc["attention"] == ["1 scan(s) held longer than 24 h (past their alert)"]


def test_an_alert_backlog_exits_1_but_a_fresh_retry_does_not(cfg: Path, tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _running(j)
    j.close()
    outbox = AlertOutbox(tmp_path / "state" / "cardinal.sqlite")
    alert = Alert(kind="held_too_long", scanner="Cardinal", message="999999 held")
    outbox.enqueue(alert, "slack", "connection refused")  # just failed: the next pass may deliver it
    assert status(cfg).returncode == 0
    outbox.enqueue(alert, "email", "connection refused", now=time.time() - 3600)
    got = status(cfg)
    assert got.returncode == 1, got.stdout + got.stderr
    assert "1 alert(s) undelivered for more than 15 min" in got.stdout


def test_an_unhealthy_watcher_exits_1(cfg: Path, tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _running(j, watcher_alive=False)
    j.close()
    got = status(cfg)
    assert got.returncode == 1, got.stdout + got.stderr
    assert "the watcher is unhealthy (inotify watch limit reached)" in got.stdout


def test_a_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[scanner]\nname = 'x'\n")
    assert status(bad).returncode == 2
