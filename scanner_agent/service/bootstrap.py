"""The composition root: ``bootstrap(cfg)`` builds every service of one agent, once, explicitly.

``Services`` holds the real adapters (journal, sheet, alerts, slide reader, storage), the
pipeline's ``ScanServices`` made of them, this scanner's Prefect deployment and its daily
report. The daemon, the CLI and the dispatcher are handed it; nothing looks it up. Tests build
it from a real configuration pointing at local servers; nothing here is patched.
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from scanner_agent.alerts import Alert, Alerter, Channel, EmailChannel, SlackChannel
from scanner_agent.config import AgentConfig
from scanner_agent.core.errors import ConfigError
from scanner_agent.journal import AlertOutbox, Journal
from scanner_agent.orchestration.daily_report import DailyReporter
from scanner_agent.orchestration.deployment import Deployment
from scanner_agent.orchestration.events import build_event_sink
from scanner_agent.orchestration.runs import run_url
from scanner_agent.pipeline import FileStorage, IsolatedSlideReader, OpenSlideReader, ScanServices, Settings
from scanner_agent.service.reporting import Reports
from scanner_agent.sheets import CsvSource, MetadataSource, write_back_sink
from scanner_agent.storage import IoPriority, Retention, TransferGate

log = logging.getLogger(__name__)


class Services:
    """Everything one agent (one scanner) runs on, built once by ``bootstrap``."""

    def __init__(
        self,
        cfg: AgentConfig,
        journal: Journal,
        sheet: MetadataSource,
        alerter: Alerter,
        *,
        register_deployment: bool = True,
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.sheet = sheet
        self.alerter = alerter
        self.started_at = time.time()
        #: Paces copies and sets their I/O priority; the daemon connects it to its watcher.
        self.transfer_gate = transfer_gate(cfg)
        settings = Settings.from_config(cfg)
        #: Every slide parse runs in worker processes with ``[scanner] slide_memory_mb`` and
        #: ``slide_timeout_seconds``; a slide that crashes one is quarantined, the agent goes on.
        self.slide_reader = IsolatedSlideReader(
            OpenSlideReader(passthrough=cfg.scanner.passthrough_patterns),
            memory_mb=cfg.scanner.slide_memory_mb,
            timeout_seconds=cfg.scanner.slide_timeout_seconds,
            workers=min(2, cfg.scanner.max_parallel),
        )
        self.barcode_regex = settings.barcode_regex
        #: Every outcome (stored, held, failed, quarantined, rescan-missing, verify-failed) goes to
        #: these sinks: the sheet's status columns and Prefect events, when configured.
        self.reports = Reports()
        #: ``[prefect] events``: a Prefect event per outcome, queued in the journal's file, sent in order.
        self.events = build_event_sink(cfg.prefect.events, journal.path)
        if self.events is not None:
            self.reports.add(self.events)
        #: ``[sheet] write_back``: each outcome's status cells in the sheet (a CSV sheet: only logged).
        self.sheet_writeback = write_back_sink(cfg, self.alert)
        if self.sheet_writeback is not None:
            self.reports.add(self.sheet_writeback)
        #: What one scan's run is given (``pipeline.process_scan``).
        self.scan = ScanServices(
            settings=settings,
            journal=journal,
            sheet=sheet,
            slides=self.slide_reader,
            storage=FileStorage(retention_of(cfg), cfg.scanner.completion_marker, self.transfer_gate),
            notifier=self,
            reports=self.reports,
        )
        #: This scanner's Prefect deployment (registered on first use), so runs offer Retry in the UI.
        self.deployment = Deployment(cfg.scanner.name, cfg.scanner.watch, register=register_deployment)
        #: The scanner's daily table in Prefect's Artifacts page (the daemon's slow timers publish it).
        self.daily_report = DailyReporter(cfg.scanner.name, cfg.journal.path)

    @property
    def name(self) -> str:
        return self.cfg.scanner.name

    @property
    def deployment_id(self) -> UUID | None:
        return self.deployment.id

    def run_url(self, flow_run_id: str | None) -> str | None:
        """A link a person can click: the flow run's page in the Prefect UI."""
        return run_url(self.scan.settings.ui_url, flow_run_id)

    def alert(self, kind: str, message: str, **kw: Any) -> dict[str, str]:
        """Send an alert to every configured channel; never raises (a dead channel never stops a transfer)."""
        try:
            return self.alerter.send(Alert(kind=kind, scanner=self.name, message=message, **kw))
        except Exception:
            log.exception("could not send %s alert", kind)
            return {}

    def close(self) -> None:
        self.slide_reader.close()
        if self.events is not None:
            self.events.close()  # bounded: a last try to send; the rest stays queued for the next start
        if self.sheet_writeback is not None:
            self.sheet_writeback.close()
        self.journal.close()


def retention_of(cfg: AgentConfig) -> Retention:
    """The scanner's source retention policy (``remove_source``, ``remove_source_after_days``)."""
    return Retention(cfg.scanner.remove_source, cfg.scanner.remove_source_after_days)


def bootstrap(cfg: AgentConfig, *, register_deployment: bool = True) -> Services:
    """Build every service of one agent from its configuration."""
    journal = Journal(cfg.journal.path)
    return Services(
        cfg,
        journal,
        build_sheet(cfg),
        build_alerter(cfg, journal.path),
        register_deployment=register_deployment,
    )


def transfer_gate(cfg: AgentConfig) -> TransferGate:
    """``[transfer]``: the rates, and the I/O priority tried once here (one warning if refused)."""
    t = cfg.transfer
    prio = IoPriority(t.io_class, t.io_priority_level)
    prio.check()
    return TransferGate(
        t.max_mb_per_second * 1e6 if t.max_mb_per_second else None,
        scanning_rate=t.scanning_mb_per_second * 1e6,
        yield_while_scanning=t.yield_while_scanning,
        io_priority=prio,
    )


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
        attach_label=cfg.alerts.attach_label,
    )
