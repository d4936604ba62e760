"""Secrets stay secret, secret files are checked, root is refused, and the agent's own files are private.

The leak tests plant real credentials (a Slack bot token in the environment, an SMTP password in a
file, a Google service-account JSON with its RSA private key), run scans that succeed, are held and
are quarantined, with alerts going to the local Slack and SMTP servers and the sheet read from the
local Sheets API, and then search everything the agent wrote for the secrets: every file under the
scanner's folders, storage and state (journal SQLite and its WAL, sidecars, quarantine reason
files, sheet cache), the daemon's own log (run with ``-v``), captured log records, what Slack and
the SMTP server received, ``scanner-agent check`` output, and the Prefect runs read back through
the client (parameters, state messages, task runs, artifacts, logs) plus the Prefect server's
database file itself. Each secret must appear nowhere.

The unit's ``systemd-analyze security`` exposure (at most 1.5) is checked by
``tests/test_systemd.py::test_exposure_is_at_most_one_and_a_half``; it is not repeated here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scanner_agent.testing.synthetic import write_corrupt, write_svs
from tests.daemon_helpers import DaemonProcess, records, unique_scanner_name, wait_for
from tests.harness import Folders, dump_toml, make_agent, process, write_config
from tests.servers.sheets_api import FakeSheetsApi, sheets_api_server, write_service_account
from tests.servers.slack_api import SlackApiServer
from tests.servers.smtp import SmtpServer

W, H = 1024, 768
SHEET_KEY = "1SecuritySheetKeyForScannerAgentTests000"
SMTP_USER = "scanner-agent"
FLAGS = ["Include in Name?", "REQUIRED", "REQUIRED", "REQUIRED", "REQUIRED", "", "", ""]
HEADER = ["Barcode", "Study", "Experiment", "Panel", "Scanner", "Scan Date", "Rescan Requested", "Notes"]


# --------------------------------------------------------------------------- the planted secrets


@dataclass
class Planted:
    """The secrets an agent is given, and the byte strings that would betray each one."""

    slack_token: str
    smtp_password: str
    service_account: Path
    smtp_password_file: Path
    slack_token_file: Path
    needles: dict[str, bytes] = field(default_factory=dict)

    def add_key_needles(self) -> None:
        info = json.loads(self.service_account.read_text())
        body = [ln for ln in info["private_key"].splitlines() if ln and "PRIVATE KEY" not in ln]
        assert len(body) > 10
        # Every line of the key's base64 body: any fragment long enough to matter is caught, and
        # a line is the same whether the key was printed raw or JSON-escaped.
        for i, line in enumerate(body):
            self.needles[f"private key line {i + 1}"] = line.encode()
        self.needles["private_key_id"] = info["private_key_id"].encode()


def plant(folder: Path, api: FakeSheetsApi) -> Planted:
    folder.mkdir(parents=True, exist_ok=True)
    token = "xoxb-PLANTED-" + secrets.token_hex(12)
    password = "PLANTED-pw-" + secrets.token_hex(12)
    pw_file = folder / "smtp-password"
    pw_file.write_text(password + "\n")
    os.chmod(pw_file, 0o600)
    tok_file = folder / "slack-token"
    tok_file.write_text(token + "\n")
    os.chmod(tok_file, 0o600)
    sa = write_service_account(folder, api)
    p = Planted(
        token,
        password,
        sa,
        pw_file,
        tok_file,
        needles={"Slack token": token.encode(), "SMTP password": password.encode()},
    )
    p.add_key_needles()
    return p


def leaks(haystacks: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    return [
        f"{n} found in {h}"
        for h, data in haystacks.items()
        for n, needle in needles.items()
        if needle in data
    ]


def files_written(*roots: Path, skip: tuple[Path, ...] = ()) -> dict[str, bytes]:
    """Every regular file under ``roots`` (a root may be a file; links are not followed), except ``skip``."""
    out: dict[str, bytes] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = root.read_bytes()
        for d, _dirs, fs in os.walk(root):
            for f in fs:
                p = Path(d, f)
                if p in skip or p.is_symlink() or not p.is_file():
                    continue
                out[str(p)] = p.read_bytes()
    return out


# --------------------------------------------------------------------------- what left the agent


def slack_received(slack: SlackApiServer) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i, c in enumerate(slack.calls):
        # Only the Authorization header may carry the token: that is how Slack is told who we are.
        headers = {k: v for k, v in c.headers.items() if k.lower() != "authorization"}
        out[f"slack call {i} ({c.method})"] = json.dumps([c.payload, headers]).encode() + c.body
    for fid, data in slack.uploads.items():
        out[f"slack upload {fid}"] = data
    return out


def mail_received(smtp: SmtpServer) -> dict[str, bytes]:
    with smtp.lock:
        return {f"mail {i}": raw for i, raw in enumerate(smtp.raw)} | {
            f"mail envelope {i}": json.dumps(e).encode() for i, e in enumerate(smtp.envelopes)
        }


def prefect_written(flow_name: str) -> dict[str, bytes]:
    """Everything the Prefect API holds about this scanner's runs, read back through the client."""

    async def go() -> dict[str, bytes]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterId,
            LogFilter,
            LogFilterFlowRunId,
        )

        out: dict[str, bytes] = {}
        async with get_client() as c:
            runs = await c.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), limit=200
            )
            ids = [r.id for r in runs]
            for r in runs:
                out[f"flow run {r.name} {r.id}"] = r.model_dump_json().encode()
                for s in await c.read_flow_run_states(r.id):
                    out[f"flow run {r.id} state {s.id}"] = s.model_dump_json(exclude={"data"}).encode()
            if not ids:
                return out
            for t in await c.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200
            ):
                out[f"task run {t.name}"] = t.model_dump_json().encode()
            for a in await c.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            ):
                out[f"artifact {a.key}"] = a.model_dump_json().encode()
            offset, n = 0, 0
            while True:
                page = await c.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset
                )
                for log in page:
                    out[f"prefect log {offset + n}"] = log.model_dump_json().encode()
                    n += 1
                if len(page) < 200:
                    break
                offset += 200
        return out

    return asyncio.run(go())


def prefect_database() -> dict[str, bytes]:
    """The session's Prefect server database file(s), byte for byte (all runs of the session)."""
    home = Path(os.environ.get("PREFECT_HOME", ""))
    return {str(p): p.read_bytes() for p in home.glob("prefect.db*") if p.is_file()} if home.is_dir() else {}


# --------------------------------------------------------------------------- a lab wired to the local servers


@dataclass
class Lab(Folders):
    cfg: Path
    name: str
    planted: Planted
    slack: SlackApiServer
    smtp: SmtpServer
    api: FakeSheetsApi

    @property
    def journal(self) -> Path:
        return self.base / "state" / f"{self.name.lower()}.sqlite"

    def scans(self) -> dict[str, Path]:
        """One scan per outcome: stored, held (no row), quarantined (corrupt), quarantined (no barcode)."""
        template = write_svs(self.base / "template.svs", width=W, height=H)
        out = {}
        for key, name in (
            ("stored", "610001_a.svs"),
            ("held", "610009_a.svs"),
            ("no_barcode", "slide_x.svs"),
        ):
            out[key] = self.watch / name
            shutil.copyfile(template, self.watch / (name + ".tmp"))
            os.replace(self.watch / (name + ".tmp"), out[key])  # appears whole, as a finished scan does
        out["corrupt"] = write_corrupt(self.base / "610002_bad.svs", "truncated")
        os.replace(out["corrupt"], self.watch / "610002_bad.svs")
        out["corrupt"] = self.watch / "610002_bad.svs"
        return out


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[SlackApiServer, SmtpServer, FakeSheetsApi]]:
    with sheets_api_server() as api, SlackApiServer() as slack:
        smtp = SmtpServer(tmp_path / "tls", user=SMTP_USER, password="unset").start()
        try:
            yield slack, smtp, api
        finally:
            smtp.stop()


def with_google_sheet(cfg: Path, credentials: Path, **keys: Any) -> Path:
    """Point a harness config at a Google sheet instead of its CSV (the harness only writes CSV sheets)."""
    data = tomllib.loads(cfg.read_text())
    data["sheet"] = {"spreadsheet_key": SHEET_KEY, "credentials_file": str(credentials), **keys}
    cfg.write_text(dump_toml(data))
    (cfg.parent / "sheet.csv").unlink()
    return cfg


def build_lab(
    tmp_path: Path,
    servers: tuple[SlackApiServer, SmtpServer, FakeSheetsApi],
    monkeypatch: pytest.MonkeyPatch,
    *,
    prefix: str,
    slack_token: str | None = None,
    smtp_password: str | None = None,
    sheet_rows: list[list[str]] | None = None,
) -> Lab:
    """A scanner configured with planted secrets; the servers accept them unless told otherwise."""
    slack, smtp, api = servers
    planted = plant(tmp_path / "secrets", api)
    slack.state.token = slack_token or planted.slack_token
    smtp.password = smtp_password or planted.smtp_password
    api.add_spreadsheet(SHEET_KEY, {"Slides": [FLAGS, HEADER, *(sheet_rows or [])]})
    monkeypatch.setenv("SLACK_BOT_TOKEN", planted.slack_token)
    monkeypatch.delenv("SCANNER_AGENT_ALLOW_ROOT", raising=False)
    name = unique_scanner_name(prefix)
    alerts = {
        "slack_channel": "#slide-scanning",
        "slack_api_url": slack.url,
        "email_to": ["lab@example.org"],
        "email_from": "scanner@example.org",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_starttls": True,
        "smtp_username": SMTP_USER,
        "smtp_password_file": str(planted.smtp_password_file),
        "smtp_ca_file": str(smtp.cert_path),
        "prefect_ui_url": "http://prefect.example.org:4200",
    }
    cfg = with_google_sheet(
        write_config(tmp_path / "lab", name=name, alerts=alerts),
        planted.service_account,
        api_url=api.url,
        refresh_seconds=1,
        recheck_seconds=60,
    )
    return Lab(tmp_path / "lab", cfg, name, planted, slack, smtp, api)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's ``main`` sets Prefect variables and quiets library loggers for the process; undo both."""
    for k in (
        "PREFECT_UI_URL",
        "PREFECT_LOGGING_EXTRA_LOGGERS",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW",
    ):
        if k in os.environ:
            monkeypatch.setenv(k, os.environ[k])
        else:
            monkeypatch.delenv(k, raising=False)
    names = ("httpx", "httpcore", "watchdog", "urllib3", "slack_sdk", "google", "PIL")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


# --------------------------------------------------------------------------- the leak tests


def test_no_secret_in_anything_the_daemon_wrote_or_sent(
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    servers: Any,
    capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    lab = build_lab(
        tmp_path,
        servers,
        monkeypatch,
        prefix="Secrets",
        sheet_rows=[
            ["610001", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
            ["610002", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""],
        ],
    )
    log_path = tmp_path / "daemon.log"
    with DaemonProcess(lab.cfg, log_path, extra_args=["-v"]) as daemon:
        daemon.wait_watching(180)
        scans = lab.scans()

        def settled() -> bool:
            states = sorted(r.state for r in records(lab.journal))
            return states == ["held", "quarantined", "quarantined", "stored"] and len(lab.smtp.raw) >= 3

        wait_for(settled, 240, "the four scans to be stored, held and quarantined, and alerted", alive=daemon)
        assert daemon.terminate(120) == 0

    # The secrets were really used: Slack saw the token, SMTP accepted the password, Google issued a token.
    assert any(c.headers.get("Authorization") == f"Bearer {lab.planted.slack_token}" for c in lab.slack.calls)
    assert (SMTP_USER, True) in lab.smtp.logins and lab.api.tokens
    assert not scans["stored"].exists() and scans["held"].exists()

    from scanner_agent.cli import main

    capsys.readouterr()
    assert main(["check", "--config", str(lab.cfg)]) in (0, 1)
    check_out = capsys.readouterr()

    needles = dict(lab.planted.needles)
    # The search itself works: every planted needle is found where it was planted.
    planted_files = files_written(
        lab.planted.service_account, lab.planted.smtp_password_file, lab.planted.slack_token_file
    )
    assert {hit.split(" found in ")[0] for hit in leaks(planted_files, needles)} == set(needles)
    needles |= {f"Google access token {i}": t.encode() for i, t in enumerate(lab.api.tokens)}
    haystacks = files_written(lab.base, tmp_path / "daemon.log")
    assert any(k.endswith(".sqlite") for k in haystacks) and any(k.endswith(".reason.txt") for k in haystacks)
    assert any(k.endswith(".json") and "/storage/" in k for k in haystacks)
    assert b"DEBUG" in haystacks[str(log_path)]  # -v: the most the agent ever logs
    haystacks |= slack_received(lab.slack) | mail_received(lab.smtp)
    haystacks["scanner-agent check output"] = (check_out.out + check_out.err).encode()
    from_prefect = prefect_written(f"Scan Image Flow: {lab.name}")
    assert any(k.startswith("prefect log") for k in from_prefect) and any(
        k.startswith("artifact") for k in from_prefect
    )
    haystacks |= from_prefect | prefect_database()
    assert len(lab.smtp.raw) >= 3 and len([c for c in lab.slack.calls if c.method == "chat.postMessage"]) >= 3

    assert leaks(haystacks, needles) == []


def test_failing_credentials_never_echo_the_secret(
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    servers: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    """Wrong Slack token, wrong SMTP password, a damaged service-account key: every error is
    reported (log, journal, alert outbox, Prefect, `check`) without quoting the secret."""
    caplog.set_level(logging.DEBUG)
    lab = build_lab(
        tmp_path,
        servers,
        monkeypatch,
        prefix="BadCreds",
        slack_token="xoxb-the-real-one",
        smtp_password="the-real-one",
        sheet_rows=[["620001", "Prec01", "Run 2", "P1", "Cardinal", "", "", ""]],
    )
    info = json.loads(lab.planted.service_account.read_text())
    lines = info["private_key"].splitlines()
    info["private_key"] = "\n".join(lines[: len(lines) // 2] + lines[-1:]) + "\n"  # cut in half: unusable
    lab.planted.service_account.write_text(json.dumps(info))
    lab.watch.mkdir(exist_ok=True)
    template = write_svs(lab.base / "template.svs", width=W, height=H)
    held = lab.watch / "620001_a.svs"
    nobarcode = lab.watch / "slide_y.svs"
    shutil.copyfile(template, held)
    shutil.copyfile(template, nobarcode)

    agent = make_agent(lab.cfg)
    try:
        recs = process(agent, nobarcode, held)
        assert [(r.state, r.kind) for r in recs] == [
            ("quarantined", "no_barcode"),
            ("held", "sheet_unreachable"),
        ]
        pending = agent.journal._db.execute("SELECT COUNT(*) FROM alert_pending").fetchone()[0]
        assert pending >= 2  # both channels refused: the alerts wait in the outbox
    finally:
        agent.close()
    assert any(ok is False for _user, ok in lab.smtp.logins)  # the wrong password was really tried
    assert lab.slack.calls and not lab.api.tokens  # the damaged key never got a token

    from scanner_agent.cli import main

    capsys.readouterr()
    assert main(["check", "--config", str(lab.cfg)]) == 1
    check_out = capsys.readouterr()

    haystacks = files_written(lab.base)
    haystacks["captured log records"] = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
    ).encode()
    haystacks["captured log text"] = caplog.text.encode()
    haystacks["scanner-agent check output"] = (check_out.out + check_out.err).encode()
    haystacks |= slack_received(lab.slack) | prefect_written(f"Scan Image Flow: {lab.name}")
    assert "Slack" in check_out.out or "slack" in check_out.out
    assert leaks(haystacks, dict(lab.planted.needles)) == []


# --------------------------------------------------------------------------- secret files, root, modes


def _check(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from scanner_agent.cli import main

    capsys.readouterr()
    code = main(["check", "--offline", "--config", str(cfg)])
    return code, capsys.readouterr().out


def test_check_warns_about_secret_files_others_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cli_env: None
) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    files = {
        "sheet.credentials_file": secret_dir / "sa.json",
        "alerts.slack_token_file": secret_dir / "slack-token",
        "alerts.smtp_password_file": secret_dir / "smtp-password",
    }
    for p in files.values():
        p.write_text("not-a-real-secret\n")
    cfg = with_google_sheet(
        write_config(
            tmp_path / "lab",
            name="Modes",
            alerts={
                "slack_channel": "#x",
                "slack_token_file": str(files["alerts.slack_token_file"]),
                "email_to": ["a@example.org"],
                "email_from": "b@example.org",
                "smtp_host": "127.0.0.1",
                "smtp_password_file": str(files["alerts.smtp_password_file"]),
            },
        ),
        files["sheet.credentials_file"],
    )

    for p in files.values():
        os.chmod(p, 0o644)
    code, out = _check(cfg, capsys)
    assert code == 1, out
    for key, p in files.items():
        [line] = [ln for ln in out.splitlines() if key in ln and "readable" in ln]
        assert str(p) in line and "644" in line and f"chmod 600 {p}" in line and line.lstrip().startswith("✗")

    for p in files.values():
        os.chmod(p, 0o600)
    code, out = _check(cfg, capsys)
    assert "readable" not in out and code == 0, out


def test_process_refuses_root_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cli_env: None
) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("only meaningful when run as root")
    from scanner_agent.cli import main

    monkeypatch.delenv("SCANNER_AGENT_ALLOW_ROOT", raising=False)
    cfg = write_config(tmp_path / "lab", name="Rooted", scanner={"allow_root": False})
    scan = tmp_path / "lab" / "scanner" / "630001.svs"
    scan.write_bytes(b"x")

    capsys.readouterr()
    # `run` is checked as a real process by tests/test_cli.py::test_run_refuses_root_without_allow_root:
    # it exits 78 (EX_CONFIG, so systemd does not restart it), not 2. `process` is the other command
    # that moves scans.
    assert main(["process", "--config", str(cfg), str(scan)]) == 2
    err = capsys.readouterr().err
    assert "refusing to run as root" in err and "allow_root" in err and "SCANNER_AGENT_ALLOW_ROOT" in err
    assert (
        scan.exists() and not (tmp_path / "lab" / "state" / "rooted.sqlite").exists()
    )  # nothing was started

    code, out = _check(cfg, capsys)
    assert code == 1 and "running as root" in out


def test_journal_is_private_and_sidecars_group_readable_whatever_the_umask(
    tmp_path: Path, prefect_api: str
) -> None:
    old = os.umask(0)  # the most permissive umask: the modes must not depend on it
    try:
        cfg = write_config(tmp_path / "lab", name="Umask")
        agent = make_agent(cfg)
        try:
            good = write_svs(tmp_path / "lab" / "scanner" / "620995_a.svs", width=W, height=H)
            bad = write_corrupt(tmp_path / "lab" / "scanner" / "645750_bad.svs", "garbage")
            stored, quarantined = process(agent, good, bad)
            assert (stored.state, quarantined.state) == ("stored", "quarantined")
            journal = agent.journal.path
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in journal.parent.glob(journal.name + "*")}
        finally:
            agent.close()
    finally:
        os.umask(old)
    assert {journal.name, journal.name + "-wal", journal.name + "-shm"} <= set(modes)
    assert all(m == 0o600 for m in modes.values()), {k: oct(v) for k, v in modes.items()}
    sidecar = Path(stored.dest).with_suffix(".json")
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o640
    reason = Path(quarantined.details["quarantined_to"] + ".reason.txt")
    assert stat.S_IMODE(reason.stat().st_mode) == 0o640
