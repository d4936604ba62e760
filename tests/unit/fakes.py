"""In-memory stand-ins for the pipeline's services: a sheet, a slide reader, storage, alerts and a run.

Each records what it was asked, so a test reads back what the pipeline did; the storage fake
also checks the pipeline's crash-safety order (the journal says stored before the source goes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner_agent.core import errors
from scanner_agent.core.barcode import BarcodeResult, barcode_from_name
from scanner_agent.core.qc import QcResult
from scanner_agent.core.sheet_table import SheetTable, parse_table
from scanner_agent.core.states import ScanState
from scanner_agent.journal import Journal
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import SlideInfo
from scanner_agent.storage import TransferResult

FLAGS = ["Include in Name?", "REQUIRED", "REQUIRED", ""]
HEADER = ["Barcode", "Study", "Experiment", "Notes"]


class FakeSheet:
    """A metadata sheet held as rows of cells (flags and header added)."""

    def __init__(self, *rows: list[str]) -> None:
        self.rows = [list(r) for r in rows]

    def table(self, *, want: str | None = None) -> SheetTable:
        return parse_table([FLAGS, HEADER, *self.rows], source="fake sheet")

    def describe(self) -> str:
        return "fake sheet"

    def check(self) -> list[str]:
        return []


@dataclass
class FakeSlides:
    """Barcodes from the file name only; ``corrupt`` names are unreadable; ``broken`` raise a bug."""

    corrupt: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    qc_passed: bool = True

    def find_barcode(
        self,
        unit: ScanUnit,
        regex: re.Pattern[str],
        *,
        sources: tuple[str, ...] = ("name",),
        keep_label: bool = False,
    ) -> BarcodeResult:
        found = barcode_from_name(unit.name, regex)
        if found is None:
            raise errors.NoBarcode(f"no barcode in {unit.name}", path=str(unit.primary))
        return BarcodeResult(found, "file name")

    def validate(self, unit: ScanUnit) -> SlideInfo:
        if unit.name in self.broken:
            raise RuntimeError("a bug in the slide reader")
        if unit.name in self.corrupt:
            raise errors.CorruptSlide(f"{unit.primary} does not open", path=str(unit.primary))
        return SlideInfo("aperio", 100, 80, 1, 0.5, properties={}, thumbnail_png=b"png")

    def assess(
        self, thumbnail_png: bytes, *, blur_threshold: float | None, min_tissue_fraction: float | None
    ) -> QcResult:
        return QcResult(self.qc_passed, 500.0, 0.5, [] if self.qc_passed else ["out of focus"])


@dataclass
class FakeStorage:
    """Storage that copies nothing; records placements, removals and quarantines.

    ``fail_next``: errors the next placements raise, one per call. ``remove_source`` asserts the
    journal already says the scan is stored: the pipeline must never free the scanner's disk first.
    """

    journal: Journal
    placed: list[dict[str, Any]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    quarantine_fails: bool = False

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
    ) -> TransferResult:
        if self.fail_next:
            raise self.fail_next.pop(0)
        dest = dest_dir / name
        self.placed.append(
            {"dest": dest, "sidecar": sidecar, "supersede": supersede, "label": superseded_label}
        )
        return TransferResult(
            dest=dest,
            dest_roots=[dest],
            sidecar=dest.with_suffix(".json"),
            files=[],
            total_size=unit.total_size(),
            sha256="0" * 64,
            seconds=0.01,
            same_filesystem=True,
            already_present=False,
            superseded=[supersede] if supersede else [],
        )

    def remove_source(self, unit: ScanUnit, result: TransferResult) -> None:
        rec = self.journal.latest_for_path(str(unit.primary))
        assert rec is not None and rec.state == ScanState.STORED, (
            f"the source {unit.primary} was freed while the journal says {rec.state if rec else None}"
        )
        self.removed.append(unit.primary)

    def quarantine(self, unit: ScanUnit, quarantine_dir: Path, reason: str) -> Path:
        if self.quarantine_fails:
            raise OSError(28, "No space left on device")
        self.quarantined.append(unit.primary)
        return quarantine_dir / unit.name


@dataclass
class FakeAlerts:
    sent: list[dict[str, Any]] = field(default_factory=list)

    def alert(self, kind: str, message: str, **kw: Any) -> object:
        self.sent.append({"kind": kind, "message": message, **kw})
        return {}

    def kinds(self) -> list[str]:
        return [a["kind"] for a in self.sent]


@dataclass
class FakeRun:
    run_id: str | None = "run-1"
    name: str = ""
    tags: list[str] = field(default_factory=list)
    artifacts: list[dict[str, str]] = field(default_factory=list)

    def url(self) -> str | None:
        return f"http://ui.example/runs/flow-run/{self.run_id}"

    async def tag_study(self, study: str) -> None:
        if study:
            self.tags.append(f"study:{study}")

    async def name_by_barcode(self, barcode: str) -> None:
        self.name = barcode
        self.tags.append(f"barcode:{barcode}")

    async def artifact(self, markdown: str, *, key: str, description: str) -> None:
        self.artifacts.append({"markdown": markdown, "key": key, "description": description})


@dataclass
class Steps:
    """The plain step runner, recording the name of each step it ran."""

    ran: list[str] = field(default_factory=list)

    def __call__(self, step: Any, /, *args: Any) -> Any:
        self.ran.append(step.name)
        return step.fn(*args)
