"""The real slide reader and storage behind the pipeline's ports: thin calls into the adapter packages.

``IsolatedSlideReader`` runs an ``OpenSlideReader``'s calls in ``slides.SlideWorkers`` (child
processes with a memory cap and a time limit): a slide that crashes, exhausts or hangs a parser is
quarantined as ``SlideReaderCrashed`` naming the file and what happened, and the agent goes on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scanner_agent import slides, storage
from scanner_agent.core.barcode import BarcodeResult
from scanner_agent.core.errors import SlideReaderCrashed
from scanner_agent.core.qc import QcResult
from scanner_agent.scanunit import ScanUnit


class OpenSlideReader:
    """Slides read with OpenSlide (``scanner_agent.slides``); ``passthrough`` patterns are formats
    OpenSlide cannot read, stored unvalidated."""

    def __init__(self, passthrough: Sequence[str] = ()) -> None:
        self.passthrough = tuple(passthrough)

    def find_barcode(
        self, unit: ScanUnit, regex: re.Pattern[str], *, sources: tuple[str, ...], keep_label: bool
    ) -> BarcodeResult:
        return slides.find_barcode(unit, regex, sources=sources, keep_label=keep_label)

    def validate(self, unit: ScanUnit) -> slides.SlideInfo:
        return slides.validate_slide(unit, passthrough=self.passthrough)

    def assess(
        self, thumbnail_png: bytes, *, blur_threshold: float | None, min_tissue_fraction: float | None
    ) -> QcResult:
        if not thumbnail_png:  # a pass-through format: nothing was decoded, so nothing to judge
            return QcResult(True, float("nan"), float("nan"), ["not assessed: no image was decoded"])
        return slides.assess_thumbnail(
            thumbnail_png, blur_threshold=blur_threshold, min_tissue_fraction=min_tissue_fraction
        )


class IsolatedSlideReader:
    """A slide reader whose every call runs in a worker process (``slides.SlideWorkers``).

    Calls are forwarded as they are (method name, positional and keyword arguments), so the wrapped
    reader may grow arguments without this class changing. A worker that dies on a signal, runs out
    of ``memory_mb`` or outlasts ``timeout_seconds`` becomes ``SlideReaderCrashed`` naming the file.
    """

    def __init__(
        self, reader: OpenSlideReader, *, memory_mb: int, timeout_seconds: float, workers: int = 1
    ) -> None:
        self.reader = reader
        self.workers = slides.SlideWorkers(
            reader, memory_mb=memory_mb, timeout_seconds=timeout_seconds, size=workers
        )

    def find_barcode(self, unit: ScanUnit, *args: Any, **kwargs: Any) -> BarcodeResult:
        result: BarcodeResult = self._call("find_barcode", unit, "reading it", unit, *args, **kwargs)
        return result

    def validate(self, unit: ScanUnit, *args: Any, **kwargs: Any) -> slides.SlideInfo:
        info: slides.SlideInfo = self._call("validate", unit, "reading it", unit, *args, **kwargs)
        return info

    def assess(self, thumbnail_png: bytes, *args: Any, **kwargs: Any) -> QcResult:
        qc: QcResult = self._call("assess", None, "scoring its thumbnail", thumbnail_png, *args, **kwargs)
        return qc

    def close(self) -> None:
        self.workers.close()

    def _call(self, method: str, unit: ScanUnit | None, doing: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.workers.call(method, *args, **kwargs)
        except slides.WorkerFailed as failed:
            subject = str(unit.primary) if unit is not None else "The slide"
            raise SlideReaderCrashed(
                f"{subject}: {crash_words(failed, doing)}", path=str(unit.primary) if unit else None
            ) from None


def crash_words(failed: slides.WorkerFailed, doing: str) -> str:
    """What happened to the worker, said of the slide: "OpenSlide crashed (SIGSEGV) reading it"."""
    if failed.cause == "timeout":
        return f"{doing} took longer than {failed.seconds:g} s ([scanner] slide_timeout_seconds)"
    if failed.cause == "memory":
        return (
            f"{doing} needed more memory than the slide reader's {failed.memory_mb} MB limit "
            "([scanner] slide_memory_mb): a decompression bomb, or raise the limit"
        )
    if failed.cause == "signal" and failed.detail == "SIGKILL":
        return f"the slide reader was killed (SIGKILL) {doing}, perhaps by the kernel's out-of-memory killer"
    if failed.cause == "signal" and failed.detail == "SIGABRT":
        return (
            f"OpenSlide aborted (SIGABRT) {doing}, as its libraries do when memory runs out "
            f"(limit {failed.memory_mb} MB, [scanner] slide_memory_mb)"
        )
    if failed.cause == "signal":
        return f"OpenSlide crashed ({failed.detail}) {doing}"
    return f"the slide reader stopped ({failed.detail}) {doing}"


class FileStorage:
    """Storage on a mounted filesystem (``scanner_agent.storage``), keeping the scanner's copy as
    ``retention`` says and taking the lab's completion marker (``marker``) away with the scan."""

    def __init__(
        self,
        retention: storage.Retention | None = None,
        marker: str = "",
        gate: storage.TransferGate | None = None,
    ) -> None:
        self.retention = retention or storage.Retention()
        self.marker = marker
        #: Paces the copies and sets their I/O priority (``[transfer]``); None: full speed.
        self.gate = gate

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
            gate=self.gate,
        )

    def remove_source(self, unit: ScanUnit, result: storage.TransferResult) -> bool:
        """Free the scanner's copy now if the retention policy says so; False: kept (for the
        retention timer, or for good)."""
        if not self.retention.immediate:
            return False
        storage.remove_source(unit, result)
        storage.remove_marker(unit, self.marker)
        return True

    def quarantine(self, unit: ScanUnit, quarantine_dir: Path, reason: str) -> Path:
        where = storage.quarantine(unit, quarantine_dir, reason)
        storage.remove_marker(unit, self.marker)  # a flag, no data: it must not mark a later scan done
        return where
