"""The composition root: builds the real adapters (journal, sheet, alerts) from a configuration.

Everything the flow and the daemon need hangs off one ``Agent``. Tests build an Agent from a
real configuration pointing at local servers; nothing here is patched.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner_agent.alerts import Alert, Alerter, Channel, EmailChannel, SlackChannel
from scanner_agent.config import AgentConfig
from scanner_agent.core.barcode import compile_barcode_regex
from scanner_agent.core.errors import ConfigError
from scanner_agent.core.sheet_table import CsvSource, MetadataSource
from scanner_agent.journal import AlertOutbox, Journal

log = logging.getLogger(__name__)

# Flows look their agent up by scanner name: an Agent is not a flow parameter (it is not
# JSON, and parameters are shown in the UI), and one process may serve several scanners in tests.
_REGISTRY: dict[str, Agent] = {}
_REGISTRY_LOCK = threading.Lock()


def get_agent(scanner: str) -> Agent:
    with _REGISTRY_LOCK:
        try:
            return _REGISTRY[scanner]
        except KeyError:
            raise RuntimeError(f"no agent is running for scanner {scanner!r} in this process") from None


@dataclass
class Agent:
    cfg: AgentConfig
    journal: Journal
    sheet: MetadataSource
    alerter: Alerter
    barcode_regex: re.Pattern[str]
    started_at: float = field(default_factory=time.time)
    #: This scanner's Prefect deployment (registered on first use), so runs offer Retry in the UI.
    deployment_id: Any = None
    deployment_checked: bool = False

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Agent:
        journal = Journal(cfg.journal.path)
        agent = cls(
            cfg=cfg,
            journal=journal,
            sheet=build_sheet(cfg),
            alerter=build_alerter(cfg, journal.path),
            barcode_regex=compile_barcode_regex(cfg.scanner.barcode_regex),
        )
        with _REGISTRY_LOCK:
            _REGISTRY[cfg.scanner.name] = agent
        return agent

    @property
    def name(self) -> str:
        return self.cfg.scanner.name

    def run_url(self, flow_run_id: str | None) -> str | None:
        """A link a person can click: the flow run's page in the Prefect UI."""
        if not flow_run_id:
            return None
        base = self.cfg.ui_url()
        if not base:
            from prefect.settings import PREFECT_UI_URL

            base = (PREFECT_UI_URL.value() or "").rstrip("/")
        return f"{base}/runs/flow-run/{flow_run_id}" if base else None

    def alert(self, kind: str, message: str, **kw: Any) -> dict[str, str]:
        """Send an alert to every configured channel; never raises (a dead channel never stops a transfer)."""
        try:
            return self.alerter.send(Alert(kind=kind, scanner=self.name, message=message, **kw))
        except Exception:
            log.exception("could not send %s alert", kind)
            return {}

    def close(self) -> None:
        with _REGISTRY_LOCK:
            if _REGISTRY.get(self.name) is self:
                del _REGISTRY[self.name]
        self.journal.close()


def build_sheet(cfg: AgentConfig) -> MetadataSource:
    if cfg.sheet.spreadsheet_key:
        from scanner_agent.sheets import GoogleSheetSource

        assert cfg.sheet.credentials_file is not None
        return GoogleSheetSource(
            cfg.sheet.spreadsheet_key,
            credentials_file=cfg.sheet.credentials_file,
            worksheet=cfg.sheet.worksheet or None,
            refresh_seconds=cfg.sheet.refresh_seconds,
            cache_path=cfg.sheet_cache_path,
            api_url=cfg.sheet.api_url,
            timeout=cfg.sheet.timeout_seconds,
            barcode_column=cfg.sheet.barcode_column,
        )
    assert cfg.sheet.csv is not None
    return CsvSource(cfg.sheet.csv, barcode_column=cfg.sheet.barcode_column)


def build_channels(cfg: AgentConfig) -> list[Channel]:
    channels: list[Channel] = []
    a = cfg.alerts
    if a.slack_channel:
        token = cfg.slack_token()
        if token:
            channels.append(SlackChannel(token, a.slack_channel, api_url=a.slack_api_url))
    if a.email_to and a.smtp_host:
        channels.append(
            EmailChannel(
                a.smtp_host,
                a.smtp_port,
                sender=a.email_from,
                recipients=list(a.email_to),
                starttls=a.smtp_starttls,
                username=a.smtp_username or None,
                password=cfg.smtp_password(),
                ssl_context=smtp_ssl_context(cfg),
            )
        )
    return channels


def smtp_ssl_context(cfg: AgentConfig) -> ssl.SSLContext | None:
    """Trust ``alerts.smtp_ca_file`` for STARTTLS when set (else the system store, via EmailChannel)."""
    ca = cfg.alerts.smtp_ca_file
    if ca is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"alerts.smtp_ca_file: cannot load CA certificates from {ca}: {exc}") from None


def build_alerter(cfg: AgentConfig, journal_path: Path) -> Alerter:
    return Alerter(
        build_channels(cfg),
        AlertOutbox(journal_path),
        repeat_after_seconds=cfg.alerts.repeat_after_minutes * 60,
    )
