"""``scanner-agent check``: every check a lab admin needs before starting the service, each one line.

Each check is a ``Result``: whether it passed, the line that says what was found, and whether a
failure is only a warning (the host's set-up is risky, but the agent will run; ``check`` still
exits 0). Sends nothing: Slack is checked with ``auth.test``, SMTP with a login, the sheet by
reading it, Prefect with its health and version endpoints (and its clock from their Date header).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from scanner_agent.config import AgentConfig, secret_file_problems
from scanner_agent.reports.host_checks import clock_skew, credentials_readable, shared_filesystem


class Result(NamedTuple):
    """One check: whether it passed, the line that says what was found, and if failing only warns."""

    ok: bool
    text: str
    warning: bool = False


def _writable_dir(path: Path, what: str, *, create: bool = False) -> Result:
    """Whether ``path`` is a folder this user can create a file in; ``create``: make it first if missing."""
    if not path.exists():
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return Result(False, f"{what} {path} does not exist and cannot be created: {exc.strerror}")
        else:
            return Result(False, f"{what} {path} does not exist")
    if not path.is_dir():
        return Result(False, f"{what} {path} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".scanner-agent-check-"):
            pass
    except OSError as exc:
        return Result(False, f"{what} {path} is not writable: {exc.strerror}")
    return Result(True, f"{what} {path} exists and is writable")


def run_checks(cfg: AgentConfig, *, network: bool = True) -> list[Result]:
    """Every check for ``cfg``, in the order a person fixes them: configuration, folders, secrets, sheet.

    Without ``network`` (``--offline``) a Google Sheet, the alert channels and Prefect are not asked.
    """
    out: list[Result] = [
        Result(True, f"configuration {cfg.source_file} is valid (scanner {cfg.scanner.name})")
    ]
    out.append(_writable_dir(cfg.scanner.watch, "scanner.watch"))
    out.append(_writable_dir(cfg.storage.root, "storage.root"))
    if cfg.storage.marker_file:
        marker = cfg.storage.root / cfg.storage.marker_file
        out.append(
            Result(
                marker.exists(),
                f"storage.marker_file {marker} "
                + (
                    "is there (the share is mounted)"
                    if marker.exists()
                    else "is missing: is the share mounted? (for a new storage location: touch it once)"
                ),
            )
        )
    out.append(_writable_dir(cfg.state_dir, "journal folder", create=True))
    # Create it only inside a folder that exists: creating <missing watch>/.quarantine would also
    # create the missing scanner.watch, and the next `check` would hide the typo (or unmounted share).
    out.append(
        _writable_dir(cfg.quarantine_dir, "quarantine folder", create=cfg.quarantine_dir.parent.is_dir())
    )
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not cfg.scanner.allow_root:
        out.append(Result(False, "running as root: `run` will refuse; use the scanner-agent service user"))
    for path, key in (
        (cfg.sheet.credentials_file, "sheet.credentials_file"),
        (cfg.alerts.slack_token_file, "alerts.slack_token_file"),
        (cfg.alerts.smtp_password_file, "alerts.smtp_password_file"),
    ):
        for p in secret_file_problems(path, key):
            out.append(Result(False, p))
        if path is not None:
            out.extend(Result(False, w, warning=True) for w in credentials_readable(path, key))
    out.extend(Result(False, w, warning=True) for w in shared_filesystem(cfg))
    out.extend(_sheet_checks(cfg, network))
    if network:
        out.extend(_alert_checks(cfg))
        out.extend(_prefect_check(cfg))
    return out


def _sheet_checks(cfg: AgentConfig, network: bool) -> list[Result]:
    """The sheet's problems, size and name columns, and layout columns it lacks; Google not asked offline."""
    from scanner_agent.core.errors import ScanError
    from scanner_agent.core.naming import layout_columns
    from scanner_agent.service.bootstrap import build_sheet

    if cfg.sheet.spreadsheet_key and not network:
        return [Result(True, "sheet: Google Sheet not checked (--offline)")]
    source = build_sheet(cfg)
    out: list[Result] = [Result(False, f"sheet: {p}") for p in source.check()]
    try:
        table = source.table()
    except ScanError as exc:
        return out + [Result(False, f"sheet {source.describe()}: {exc.message}")]
    out.append(
        Result(
            True,
            f"sheet {table.source}: {len(table.rows)} barcodes, name from "
            f"{', '.join(c for c, _ in table.name_columns()) or '(barcode only)'}",
        )
    )
    out.extend(Result(False, f"sheet: {p}") for p in table.problems)
    out.extend(_write_back_checks(cfg))
    for col in layout_columns(cfg.storage.layout):
        if col not in table.columns:
            out.append(
                Result(
                    False,
                    f"storage.layout names column {col!r}, which the sheet {table.source} does not have "
                    f"(columns: {', '.join(table.columns)})",
                )
            )
    return out


def _write_back_checks(cfg: AgentConfig) -> list[Result]:
    """``[sheet] write_back``: the status columns exist and the account may write (no data changes)."""
    from scanner_agent.sheets import SheetWriteBack, write_back_sink

    sink = write_back_sink(cfg)
    if not isinstance(sink, SheetWriteBack):
        return [Result(True, "sheet write-back: CSV sheet, cells are only logged")] if sink else []
    try:
        problems = sink.check()
    finally:
        sink.queue.close()
    ok = Result(True, "sheet write-back: status columns found, writable")
    return [Result(False, p) for p in problems] or [ok]


def _alert_checks(cfg: AgentConfig) -> list[Result]:
    """Each configured alert channel's own check (Slack ``auth.test``, SMTP login); nothing sent."""
    from scanner_agent.service.bootstrap import build_channels

    try:
        channels = build_channels(cfg)
    except Exception as exc:
        return [Result(False, f"alerts: {exc}")]
    if not channels:
        return [
            Result(
                True, "alerts: no Slack or e-mail configured (failures are only in the journal and Prefect)"
            )
        ]
    out: list[Result] = []
    for ch in channels:
        problems = ch.check()
        out += [Result(False, p) for p in problems] or [
            Result(True, f"alerts: {ch.name} works (nothing was sent)")
        ]
    return out


def _prefect_check(cfg: AgentConfig) -> list[Result]:
    """The Prefect server (``$PREFECT_API_URL``, else the configured one) answers, with our major version."""
    url = os.environ.get("PREFECT_API_URL") or cfg.prefect.api_url
    if not url:
        return [Result(True, "prefect: no server configured; runs use Prefect's embedded API on this host")]
    import prefect
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    # Prefect's own client, so the server is asked the way runs will ask it: with
    # PREFECT_API_AUTH_STRING or PREFECT_API_KEY, and Prefect's TLS settings. No retries: a
    # server that is down should be reported now, not after a minute of backoff.
    try:
        with (
            temporary_settings(updates={PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(sync_client=True) as client,
        ):
            failed = client.api_healthcheck()
            if failed is not None:
                raise failed
            v = client.api_version()
            skew = clock_skew(client)
    except Exception as exc:
        from scanner_agent.orchestration.auth import auth_problem

        refused = auth_problem(exc, url)  # a server with PREFECT_SERVER_API_AUTH_STRING set
        return [Result(False, f"prefect: {refused or f'server {url} does not answer: {exc}'}")]
    ours = prefect.__version__
    out = [Result(skew is None or abs(skew) <= 60, _skew_text(url, skew), warning=True)]
    if str(v).split(".")[0] != ours.split(".")[0]:
        return [
            Result(False, f"prefect: server {url} runs {v}, this agent has {ours}: major versions differ")
        ]
    return [Result(True, f"prefect: server {url} answers (version {v}; agent {ours})"), *out]


def _skew_text(url: str, skew: float | None) -> str:
    if skew is None:
        return f"clock: server {url} sent no Date header; clocks not compared"
    if abs(skew) <= 60:
        return f"clock: this host and the Prefect server agree within {max(1.0, abs(skew)):.0f} s"
    return (
        f"clock: this host is {abs(skew):.0f} s {'behind' if skew > 0 else 'ahead of'} the Prefect server "
        f"{url} (more than 60 s): run times, heartbeats and crash detection go wrong; enable NTP "
        "(timedatectl set-ntp true) on both"
    )
