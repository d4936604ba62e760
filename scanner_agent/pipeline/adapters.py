"""The real slide reader and storage behind the pipeline's ports: thin calls into the adapter packages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from scanner_agent import slides, storage
from scanner_agent.core.barcode import BarcodeResult
from scanner_agent.core.qc import QcResult
from scanner_agent.scanunit import ScanUnit


class OpenSlideReader:
    """Slides read with OpenSlide (``scanner_agent.slides``)."""

    def find_barcode(self, unit: ScanUnit, regex: re.Pattern[str]) -> BarcodeResult:
        return slides.find_barcode(unit, regex)

    def validate(self, unit: ScanUnit) -> slides.SlideInfo:
        return slides.validate_slide(unit)

    def assess(
        self, thumbnail_png: bytes, *, blur_threshold: float | None, min_tissue_fraction: float | None
    ) -> QcResult:
        return slides.assess_thumbnail(
            thumbnail_png, blur_threshold=blur_threshold, min_tissue_fraction=min_tissue_fraction
        )


class FileStorage:
    """Storage on a mounted filesystem (``scanner_agent.storage``)."""

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
    ) -> storage.TransferResult:
        return storage.place_scan(
            unit,
            dest_dir,
            name,
            sidecar=sidecar,
            supersede=supersede,
            superseded_label=superseded_label,
            storage_root=storage_root,
            margin=margin,
        )

    def remove_source(self, unit: ScanUnit, result: storage.TransferResult) -> None:
        storage.remove_source(unit, result)

    def quarantine(self, unit: ScanUnit, quarantine_dir: Path, reason: str) -> Path:
        return storage.quarantine(unit, quarantine_dir, reason)
