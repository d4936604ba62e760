"""The ``scanner-agent`` console script as an operator runs it: a real subprocess, real files, real Prefect.

The subprocess inherits ``PREFECT_API_URL`` from the test session (the ``prefect_api`` fixture
starts that server), so its flow runs land on the same server the tests read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.core.states import ScanState
from scanner_agent.journal import Journal
from scanner_agent.testing.synthetic import write_svs
from tests.harness import SAMPLE_SHEET, dump_toml, write_config

SCRIPT = Path(sys.executable).with_name("scanner-agent")
STORED_NAME = "Prec01_Run-2_P1_Cardinal_620995.svs"


def cli(*args: str | os.PathLike[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed console script; the operator's environment, minus any root override."""
    env = {k: v for k, v in os.environ.items() if k != "SCANNER_AGENT_ALLOW_ROOT"}
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout, cwd="/"
    )


def patch_config(cfg: Path, section: str, **values: Any) -> Path:
    """Change keys of one section of a config written by ``write_config`` (its ``sheet=`` is CSV text)."""
    import tomllib

    data = tomllib.loads(cfg.read_text(encoding="utf-8"))
    data.setdefault(section, {}).update(values)
    cfg.write_text(dump_toml(data), encoding="utf-8")
    return cfg


def svs(path: Path, barcode: str | None) -> Path:
    return write_svs(path, barcode=barcode, width=1024, height=768)


@dataclass
class Site:
    base: Path
    cfg: Path
    stored_src: Path
    held_src: Path
    process: subprocess.CompletedProcess[str]

    def journal(self) -> Journal:
        return Journal(self.base / "state" / "cardinal.sqlite")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Site:
    """One scanner after `scanner-agent process` of a scan with a sheet row and one without."""
    base = tmp_path_factory.mktemp("cli-site")
    cfg = write_config(base)
    good = svs(base / "scanner" / "620995_a.svs", "620995")
    unknown = svs(base / "scanner" / "999999_a.svs", "999999")
    return Site(base, cfg, good, unknown, cli("process", "--config", cfg, good, unknown))


# --------------------------------------------------------------------------- process


def test_process_stores_and_exits_0(tmp_path: Path, prefect_api: str) -> None:
    cfg = write_config(tmp_path)
    src = svs(tmp_path / "scanner" / "620995_a.svs", "620995")
    data = src.read_bytes()
    r = cli("process", "--config", cfg, src)
    assert r.returncode == 0, r.stdout + r.stderr
    dest = tmp_path / "storage" / "Prec01" / "Run-2" / STORED_NAME
    assert r.stdout.splitlines() == [f"stored      {src} -> {dest}"]
    assert dest.read_bytes() == data and not src.exists()


def test_process_exits_1_when_a_scan_is_held_and_says_why(site: Site) -> None:
    r = site.process
    assert r.returncode == 1, r.stdout + r.stderr
    # One line per scan as its run ends (the workers run in parallel: in the order they end).
    lines = sorted(r.stdout.splitlines(), key=lambda line: not line.startswith("stored"))
    dest = site.base / "storage" / "Prec01" / "Run-2" / STORED_NAME
    assert lines[0] == f"stored      {site.stored_src} -> {dest}"
    assert lines[1].startswith(
        f"held        {site.held_src} -> No row for barcode 999999 in {site.base / 'sheet.csv'}"
    )
    assert len(lines) == 2
    assert site.held_src.exists() and dest.exists() and not site.stored_src.exists()


def test_process_names_a_path_that_does_not_exist(tmp_path: Path, prefect_api: str) -> None:
    cfg = write_config(tmp_path)
    missing = tmp_path / "scanner" / "nope.svs"
    r = cli("process", "--config", cfg, missing)
    assert f"{missing}: no such file or folder" in r.stderr
    assert r.returncode == 2 and r.stdout == ""  # a bad argument, not a silent success


# --------------------------------------------------------------------------- status


def test_status_lists_counts_and_held_scans_with_their_reason(site: Site) -> None:
    r = cli("status", "--config", site.cfg)
    assert r.returncode == 3, r.stderr  # LSB: the daemon is not running (only `process` ran)
    out = r.stdout
    assert "scanner-agent for Cardinal" in out and "daemon: not running" in out
    assert "scans: stored 1, held 1, failed 0" in out
    assert "stored today: 1" in out
    assert f"last stored: 620995 -> {site.base / 'storage' / 'Prec01' / 'Run-2' / STORED_NAME}" in out
    assert "held (waiting for the sheet):" in out
    assert "999999_a.svs [999999] unknown_barcode: No row for barcode 999999" in out


def test_status_json_has_counts_and_the_held_list(site: Site) -> None:
    r = cli("status", "--config", site.cfg, "--json")
    assert r.returncode == 3, r.stderr  # LSB: the daemon is not running (only `process` ran)
    st = json.loads(r.stdout)
    assert st["scanner"] == "Cardinal"
    assert st["counts"]["stored"] == 1 and st["counts"]["held"] == 1 and st["counts"]["failed"] == 0
    assert st["stored_today"]["scans"] == 1
    assert st["last_stored"]["barcode"] == "620995"
    [held] = st["held"]
    assert (
        held["file"] == "999999_a.svs" and held["barcode"] == "999999" and held["kind"] == "unknown_barcode"
    )
    assert held["reason"].startswith("No row for barcode 999999") and held["next_check"]
    assert held["flow_run_id"]
    assert st["failed"] == [] and st["quarantined"] == []
    assert st["daemon"]["running"] is False


# --------------------------------------------------------------------------- check


def test_check_passes_on_a_good_config(tmp_path: Path, prefect_api: str) -> None:
    cfg = write_config(tmp_path)
    r = cli("check", "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "✗" not in r.stdout
    # The test's scanner and storage folders share one filesystem: a warning, not a problem.
    assert r.stdout.splitlines()[-1] == f"{cfg}: OK, 1 warning(s)"
    assert f"prefect: server {prefect_api} answers" in r.stdout
    assert "clock: this host and the Prefect server agree within" in r.stdout


def test_check_json_lists_each_check_and_warns_of_one_filesystem(tmp_path: Path, prefect_api: str) -> None:
    cfg = write_config(tmp_path)
    r = cli("check", "--config", cfg, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc["ok"], doc["problems"], doc["warnings"]) == (True, 0, 1)
    [warned] = [c for c in doc["checks"] if not c["ok"]]
    assert warned["warning"] and "are on one filesystem" in warned["text"]
    assert all(set(c) == {"ok", "text", "warning"} for c in doc["checks"])


def test_check_json_exits_1_on_a_problem(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, scanner={"watch": str(tmp_path / "no-such-scanner")})
    r = cli("check", "--config", cfg, "--json", "--offline")
    assert r.returncode == 1, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is False


@contextlib.contextmanager
def skewed_prefect_server(skew_seconds: float) -> Iterator[str]:
    """A stand-in Prefect API whose clock is ``skew_seconds`` off: health and version, with a Date header."""
    import email.utils
    import http.server
    import threading

    import prefect

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(prefect.__version__ if self.path.endswith("/version") else True).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(time.time() + skew_seconds, usegmt=True)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_check_warns_of_a_clock_minutes_off_the_prefect_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with skewed_prefect_server(-300) as url:
        monkeypatch.setenv("PREFECT_API_URL", url)
        r = cli("check", "--config", write_config(tmp_path, alerts={}), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr  # a warning: the agent still runs
    [line] = [x for x in r.stdout.splitlines() if "clock:" in x]
    # The Date header has whole seconds, so the measured offset is 300 s give or take one.
    m = re.match(r"! clock: this host is (\d+) s ahead of the Prefect server", line.lstrip())
    assert m and 299 <= int(m.group(1)) <= 301, line
    assert "more than 60 s" in line


def test_check_warns_when_the_service_user_cannot_read_the_credentials(tmp_path: Path) -> None:
    """Judged from the file's modes for the unit's user (here an existing unprivileged one)."""
    import pwd

    from scanner_agent.reports.host_checks import credentials_readable

    user = next((u for u in ("nobody", "daemon") if u in {p.pw_name for p in pwd.getpwall()}), None)
    if user is None:
        pytest.skip("no unprivileged user on this host")
    folder = Path(tempfile.mkdtemp(prefix="scanner-agent-secret-"))  # pytest's tmp_path is 0700
    try:
        folder.chmod(0o755)
        secret = folder / "google.json"
        secret.write_text("{}")
        secret.chmod(0o600)
        if pwd.getpwnam(user).pw_uid == secret.stat().st_uid:
            pytest.skip("the test's files belong to that user")
        [warning] = credentials_readable(secret, "sheet.credentials_file", user=user)
        assert f"cannot be read by the service's user {user}" in warning and str(secret) in warning
        secret.chmod(0o644)
        assert credentials_readable(secret, "sheet.credentials_file", user=user) == []
        folder.chmod(0o700)  # readable file, but a folder on the way the user cannot search
        assert len(credentials_readable(secret, "sheet.credentials_file", user=user)) == 1
    finally:
        shutil.rmtree(folder)
    assert credentials_readable(secret, "sheet.credentials_file", user="no-such-user-here") == []


# --------------------------------------------------------------------------- version and help


def test_version_and_every_commands_exit_codes_in_its_help() -> None:
    from importlib.metadata import version

    r = cli("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"scanner-agent {version('scanner-agent')}")
    from scanner_agent.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        h = cli(name, "--help")
        assert h.returncode == 0 and "exit codes:" in " ".join(h.stdout.split()), name
    assert "3 the daemon is not running" in " ".join(cli("status", "--help").stdout.split())


def test_check_reports_a_prefect_server_that_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked through Prefect's own client (its auth and TLS settings), without a minute of retries."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    r = cli("check", "--config", write_config(tmp_path), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"prefect: server {url} does not answer" in r.stdout


def _bad_unknown_key(base: Path) -> tuple[Path, list[str]]:
    cfg = write_config(base, scanner={"colour": "red"})
    return cfg, ["scanner.colour", "unknown key"]


def _bad_missing_folder(base: Path) -> tuple[Path, list[str]]:
    cfg = write_config(base, scanner={"watch": str(base / "no-such-scanner")})
    return cfg, [
        f"scanner.watch {base / 'no-such-scanner'} does not exist",
        f"quarantine folder {base / 'no-such-scanner' / '.quarantine'} does not exist",
    ]


def _bad_layout_column(base: Path) -> tuple[Path, list[str]]:
    cfg = write_config(base, storage={"layout": "{Study}/{Lab}"})
    return cfg, ["storage.layout names column 'Lab'", str(base / "sheet.csv")]


def _bad_csv_not_utf8(base: Path) -> tuple[Path, list[str]]:
    cfg = write_config(base)
    (base / "sheet.csv").write_bytes(SAMPLE_SHEET.replace("Prec01,Run 2", "Préc01,Run 2").encode("latin-1"))
    return cfg, [str(base / "sheet.csv"), "not UTF-8"]


def _bad_csv_missing(base: Path) -> tuple[Path, list[str]]:
    cfg = patch_config(write_config(base), "sheet", csv=str(base / "gone.csv"))
    return cfg, [str(base / "gone.csv")]


def _bad_regex_no_group(base: Path) -> tuple[Path, list[str]]:
    cfg = write_config(base, scanner={"barcode_regex": r"(\d{6})"})
    return cfg, ["scanner.barcode_regex", "no named group 'barcode'"]


def _bad_regex_invalid(base: Path) -> tuple[Path, list[str]]:
    cfg = write_config(base, scanner={"barcode_regex": r"(?P<barcode>\d{6}"})
    return cfg, ["scanner.barcode_regex", "not a valid regular expression"]


@pytest.mark.parametrize(
    "make",
    [
        _bad_unknown_key,
        _bad_missing_folder,
        _bad_layout_column,
        _bad_csv_not_utf8,
        _bad_csv_missing,
        _bad_regex_no_group,
        _bad_regex_invalid,
    ],
    ids=lambda f: f.__name__.removeprefix("_bad_"),
)
def test_check_fails_on_a_bad_config_naming_what_is_wrong(tmp_path: Path, make: Any) -> None:
    cfg, wanted = make(tmp_path)
    r = cli("check", "--config", cfg, "--offline")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    for text in wanted:
        assert text in out, f"{text!r} not in:\n{out}"
    assert "Traceback" not in out
    assert not (
        tmp_path / "no-such-scanner"
    ).exists()  # check changes nothing, so the next check still sees it


def test_check_reports_a_rejected_slack_token_without_printing_it(tmp_path: Path, prefect_api: str) -> None:
    from tests.servers.slack_api import SlackApiServer

    secret = "xoxb-wrong-4f9c2e7a1b"
    token_file = tmp_path / "slack-token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    with SlackApiServer(token="xoxb-the-right-one") as slack:
        cfg = write_config(
            tmp_path,
            alerts={
                "slack_channel": "#slide-scanning",
                "slack_api_url": slack.url,
                "slack_token_file": str(token_file),
            },
        )
        r = cli("check", "--config", cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "✗ Slack auth.test failed" in out
    assert secret not in out and secret[5:] not in out


# --------------------------------------------------------------------------- retry


def test_process_and_retry_json(tmp_path: Path, prefect_api: str) -> None:
    cfg = patch_config(write_config(tmp_path), "sheet", recheck_seconds=3600)
    src = svs(tmp_path / "scanner" / "999999_a.svs", "999999")
    r = cli("process", "--config", cfg, "--json", src, tmp_path / "missing.svs")
    assert r.returncode == 2, r.stdout + r.stderr  # a path that is not there
    doc = json.loads(r.stdout)
    assert doc["missing"] == 1 and [s["state"] for s in doc["scans"]] == ["held"]
    assert doc["scans"][0]["path"] == str(src) and doc["scans"][0]["barcode"] == "999999"
    r = cli("retry", "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    [queued] = json.loads(r.stdout)["queued"]
    assert (queued["file"], queued["state"], queued["barcode"]) == ("999999_a.svs", "held", "999999")


def test_retry_requeues_held_scans_now(tmp_path: Path, prefect_api: str) -> None:
    cfg = patch_config(write_config(tmp_path), "sheet", recheck_seconds=3600)
    src = svs(tmp_path / "scanner" / "999999_a.svs", "999999")
    assert cli("process", "--config", cfg, src).returncode == 1
    j = Journal(tmp_path / "state" / "cardinal.sqlite")
    try:
        [rec] = j.in_state(ScanState.HELD)
        assert rec.next_check > time.time() + 3000  # held for an hour

        r = cli("retry", "--config", cfg, "--barcode", "123456")
        assert (r.returncode, r.stdout.strip()) == (0, "nothing to retry")
        assert j.get(rec.id).next_check == rec.next_check

        before = time.time()
        r = cli("retry", "--config", cfg, "--barcode", "999999")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("retry queued: 999999_a.svs (held: No row for barcode 999999")
        after = j.get(rec.id)
        assert after.state == ScanState.HELD and after.reason == rec.reason and after.kind == rec.kind
        assert before - 1 <= after.next_check <= time.time()  # due now: the daemon's next tick takes it
        assert [r.id for r in j.due()] == [rec.id]
        assert src.exists()
    finally:
        j.close()


def test_quarantined_scan_is_recovered_the_way_its_action_says(tmp_path: Path, prefect_api: str) -> None:
    from scanner_agent.core.errors import NoBarcode

    cfg = write_config(tmp_path)
    src = svs(tmp_path / "scanner" / "slide_abc.svs", None)
    data = src.read_bytes()
    r = cli("process", "--config", cfg, src)
    assert r.returncode == 1 and r.stdout.startswith(f"quarantined {src} -> No barcode for {src}")
    moved = tmp_path / "scanner" / ".quarantine" / "slide_abc.svs"
    assert moved.read_bytes() == data

    # `retry` only re-queues held and failed scans, so the action must not send a person there.
    assert "scanner-agent process" in NoBarcode.default_action and "retry" not in NoBarcode.default_action
    assert cli("retry", "--config", cfg).stdout.strip() == "nothing to retry"
    fixed = moved.with_name("620995_abc.svs")
    moved.rename(fixed)
    r = cli("process", "--config", cfg, fixed)
    assert r.returncode == 0, r.stdout + r.stderr
    dest = tmp_path / "storage" / "Prec01" / "Run-2" / STORED_NAME
    assert r.stdout.strip() == f"stored      {fixed} -> {dest}"
    assert dest.read_bytes() == data and not fixed.exists()


# --------------------------------------------------------------------------- run


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only meaningful when run as root"
)
def test_run_refuses_root_without_allow_root(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, scanner={"allow_root": False})
    r = cli("run", "--config", cfg, timeout=60)
    assert r.returncode == 78, r.stdout + r.stderr  # EX_CONFIG: the systemd unit does not restart on it
    assert "refusing to run as root" in r.stderr and "allow_root" in r.stderr
    assert not (tmp_path / "state").exists()  # it stopped before opening the journal or watching anything
