"""What the scan pipeline is given: its settings, the services it calls, and the ports it runs through.

Everything ``process_scan`` touches outside the scan's own files comes in here, so a test can
hand it in-memory fakes: the sheet (``MetadataSource``), the slide reader, the storage, the
notifier (alerts) and two ports the orchestration layer implements with Prefect: a
``StepRunner`` (each step as a task, named as the UI shows it) and a ``RunPort`` (the run's id,
its link, its tags, its summary artifact). The journal is the real one (SQLite) everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from scanner_agent.core.barcode import BarcodeResult, compile_barcode_regex
from scanner_agent.core.outcomes import ReportSink, ScanReport
from scanner_agent.core.qc import QcResult
from scanner_agent.scanunit import ScanUnit
from scanner_agent.sheets import MetadataSource
from scanner_agent.slides import SlideInfo
from scanner_agent.storage import TransferResult

if TYPE_CHECKING:
    from scanner_agent.config import AgentConfig
    from scanner_agent.journal import Journal

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """The configuration values one scan's run reads, taken from the agent's config once."""

    scanner: str
    barcode_regex: re.Pattern[str]
    storage_root: Path
    layout: str
    marker_file: str
    reserve_bytes: int
    quarantine_dir: Path
    qc_enabled: bool
    blur_threshold: float | None
    min_tissue_fraction: float | None
    retry_seconds: float
    recheck_seconds: float
    rescan_deadline_hours: float
    #: The Prefect UI's address as configured ("" when not: the orchestrator asks its own setting).
    ui_url: str = ""
    #: ``[scanner] barcode_sources``: where Identify Barcode looks, in order.
    barcode_sources: tuple[str, ...] = ("name", "metadata", "label")
    #: ``[alerts] attach_label``: a "no barcode" error carries the label picture for the alert.
    attach_label: bool = False

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Settings:
        return cls(
            scanner=cfg.scanner.name,
            barcode_regex=compile_barcode_regex(cfg.scanner.barcode_regex),
            storage_root=cfg.storage.root,
            layout=cfg.storage.layout,
            marker_file=cfg.storage.marker_file,
            reserve_bytes=cfg.storage.reserve_bytes,
            quarantine_dir=cfg.quarantine_dir,
            qc_enabled=cfg.qc.enabled,
            blur_threshold=cfg.qc.blur_threshold,
            min_tissue_fraction=cfg.qc.min_tissue_fraction,
            retry_seconds=cfg.scanner.retry_seconds,
            recheck_seconds=cfg.sheet.recheck_seconds,
            rescan_deadline_hours=cfg.rescans.deadline_hours,
            ui_url=(cfg.alerts.prefect_ui_url or cfg.prefect.ui_url).rstrip("/"),
            barcode_sources=tuple(cfg.scanner.barcode_sources),
            attach_label=cfg.alerts.attach_label,
        )


class SlideReader(Protocol):
    """Reads what the pipeline needs out of a slide."""

    def find_barcode(
        self, unit: ScanUnit, regex: re.Pattern[str], *, sources: tuple[str, ...], keep_label: bool
    ) -> BarcodeResult: ...

    def validate(self, unit: ScanUnit) -> SlideInfo: ...

    def assess(
        self, thumbnail_png: bytes, *, blur_threshold: float | None, min_tissue_fraction: float | None
    ) -> QcResult: ...


class Storage(Protocol):
    """Moves a scan's files: into storage, aside into quarantine, and off the scanner's disk."""

    def place_scan(
        self,
        unit: ScanUnit,
        dest_dir: Path,
        name: str,
        *,
        sidecar: dict[str, Any],
        supersede: Path | None,
        superseded_label: str | None,
        storage_root: Path,
        margin: int,
    ) -> TransferResult: ...

    def remove_source(self, unit: ScanUnit, result: TransferResult) -> bool | None:
        """Free the scanner's copy; False when the retention policy keeps it."""
        ...

    def quarantine(self, unit: ScanUnit, quarantine_dir: Path, reason: str) -> Path: ...


class Notifier(Protocol):
    """Sends an alert to every configured channel; never raises."""

    def alert(self, kind: str, message: str, **kw: Any) -> object: ...


class RunPort(Protocol):
    """The run this scan is processed in, as the orchestrator sees it."""

    @property
    def run_id(self) -> str | None: ...

    def url(self) -> str | None:
        """A link a person can click to the run, or None."""
        ...

    async def tag_study(self, study: str) -> None:
        """Tag the run with the scan's study (best effort)."""
        ...

    async def name_by_barcode(self, barcode: str) -> None:
        """Name the run by the barcode and tag it ``barcode:<b>`` once it is known (best effort)."""
        ...

    async def artifact(self, markdown: str, *, key: str, description: str) -> None:
        """Leave the scan's summary on the run (best effort)."""
        ...


@dataclass(frozen=True)
class Step(Generic[T]):
    """One step of the pipeline, named as the Prefect UI shows its task."""

    name: str
    fn: Callable[..., T]


class StepRunner(Protocol):
    """Runs a step: the orchestration layer as a Prefect task, tests by calling it."""

    def __call__(self, step: Step[T], /, *args: Any) -> T: ...


def call_directly(step: Step[T], /, *args: Any) -> T:
    """The plain step runner: no orchestration, the step's function called in place."""
    return step.fn(*args)


class NoReports:
    """The report sink of an agent nothing downstream listens to."""

    def report(self, outcome: ScanReport) -> None:
        return None


@dataclass(frozen=True)
class ScanServices:
    """Everything one scan's run is given, built once per agent by ``service.bootstrap``."""

    settings: Settings
    journal: Journal
    sheet: MetadataSource
    slides: SlideReader
    storage: Storage
    notifier: Notifier
    #: Where each outcome is told (the sheet's status cells, Prefect events); never blocks a scan.
    reports: ReportSink = field(default_factory=NoReports)

    @property
    def name(self) -> str:
        return self.settings.scanner


@dataclass(frozen=True)
class ScanOutcome:
    """How a scan's run ended, for the orchestrator's final state: completed or failed, with the
    message and, when it is not the plain one, the state's name (``Held``, ``Already stored``...)."""

    completed: bool
    message: str
    name: str | None = None
