"""The steps of one scan, each a plain function of the scan's services, named as the UI shows its task.

Identify Barcode -> Read Sheet Metadata -> Validate Slide -> Check Quality -> Build Name ->
Move Image (or Move Rescanned Images) -> Free Scanner Disk. Each raises a ``ScanError`` subclass
when the scan cannot go on; the checks on the scan's own files (links, vanished, rewritten) and
on the storage marker are here too, so the order they run in is the pipeline's alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scanner_agent.core.barcode import BarcodeResult
from scanner_agent.core.errors import LinkedScan, SourceChanged, SourceRewritten, StorageUnavailable
from scanner_agent.core.naming import build_folder, build_name
from scanner_agent.core.qc import QcResult
from scanner_agent.core.sheet_table import SheetRow, SheetTable, lookup
from scanner_agent.pipeline.ports import ScanServices, Step
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import SlideInfo
from scanner_agent.storage import TransferResult, destination


def identify_barcode(svc: ScanServices, unit: ScanUnit) -> BarcodeResult:
    s = svc.settings
    return svc.slides.find_barcode(
        unit, s.barcode_regex, sources=s.barcode_sources, keep_label=s.attach_label
    )


def read_sheet_metadata(svc: ScanServices, barcode: str) -> tuple[SheetRow, SheetTable]:
    table = svc.sheet.table(want=barcode)
    return lookup(table, barcode), table


def validate(svc: ScanServices, unit: ScanUnit) -> SlideInfo:
    return svc.slides.validate(unit)


def check_quality(svc: ScanServices, info: SlideInfo) -> QcResult:
    s = svc.settings
    return svc.slides.assess(
        info.thumbnail_png, blur_threshold=s.blur_threshold, min_tissue_fraction=s.min_tissue_fraction
    )


def build_destination(
    svc: ScanServices, unit: ScanUnit, barcode: str, row: SheetRow, table: SheetTable
) -> Path:
    fields = [(col, row.values.get(col, ""), required) for col, required in table.name_columns()]
    name = build_name(barcode, fields, unit.ext, row_number=row.row_number, source=table.source)
    folder = build_folder(svc.settings.layout, row.values, row_number=row.row_number, source=table.source)
    return destination(svc.settings.storage_root, folder, name)


def move(
    svc: ScanServices,
    unit: ScanUnit,
    dest: Path,
    sidecar: dict[str, Any],
    supersede: Path | None,
    label: str | None,
    judged: tuple[int, int] | None = None,
) -> TransferResult:
    s = svc.settings
    if judged is not None:
        require_judged_version(unit, judged)
    require_storage_marker(s.storage_root, s.marker_file)
    # storage_root: an unmounted share must fail, not be recreated as local folders under its mount point;
    # margin: the configured reserve (the transfer's own default ignored storage.reserve_bytes).
    return svc.storage.place_scan(
        unit,
        dest.parent,
        dest.name,
        sidecar=sidecar,
        supersede=supersede,
        superseded_label=label,
        storage_root=s.storage_root,
        margin=s.reserve_bytes,
    )


def free_scanner_disk(svc: ScanServices, unit: ScanUnit, result: TransferResult) -> bool:
    """True when the source was freed; False when retention keeps it (``remove_source*`` settings)."""
    return svc.storage.remove_source(unit, result) is not False


IDENTIFY_BARCODE = Step("Identify Barcode", identify_barcode)
READ_SHEET_METADATA = Step("Read Sheet Metadata", read_sheet_metadata)
VALIDATE_SLIDE = Step("Validate Slide", validate)
CHECK_QUALITY = Step("Check Quality", check_quality)
BUILD_NAME = Step("Build Name", build_destination)
MOVE_IMAGE = Step("Move Image", move)
MOVE_RESCANNED_IMAGES = Step("Move Rescanned Images", move)
FREE_SCANNER_DISK = Step("Free Scanner Disk", free_scanner_disk)

#: Every step, in the order a scan goes through them.
STEPS: tuple[Step[Any], ...] = (
    IDENTIFY_BARCODE,
    READ_SHEET_METADATA,
    VALIDATE_SLIDE,
    CHECK_QUALITY,
    BUILD_NAME,
    MOVE_IMAGE,
    MOVE_RESCANNED_IMAGES,
    FREE_SCANNER_DISK,
)


# --- checks on the scan's own files and on storage ---------------------------------------------


def require_storage_marker(root: Path, marker: str) -> None:
    """With ``storage.marker_file`` set, storage is only written when that file is there: a share
    that is not mounted leaves an empty mount point that looks like an empty, writable storage
    root, and a scan stored into it would be hidden on the local disk once the share returns."""
    if not marker:
        return
    if not (root / marker).exists():
        raise StorageUnavailable(
            f"storage root {root} has no {marker}: the share looks unmounted, so nothing is written there",
            path=str(root),
            action=f"Mount the storage share at {root} (it holds {marker}); the scan stays on "
            "the scanner and is retried. For a new, empty storage location, create the "
            f"marker once: touch {root / marker}",
        )


def require_judged_version(unit: ScanUnit, judged: tuple[int, int]) -> None:
    """The scan must still be the version judged complete (journal size, mtime): a scanner that resumed
    writing may have left it half-written, and a task retry would otherwise store whatever is there now."""
    try:
        fp = unit.fingerprint()
    except OSError:
        return  # vanished: place_scan says so
    if (fp.total_size, fp.newest_mtime_ns) != judged:
        raise SourceRewritten(
            f"{unit.primary} changed after it was judged complete ({judged[0]} -> {fp.total_size} "
            "bytes); not storing a version that may be half-written",
            path=str(unit.primary),
        )


def refuse_links(unit: ScanUnit) -> None:
    """A scan that is, or holds, a symbolic link is refused before anything reads it: a link can point
    anywhere (outside the scanner's folder), and the copy skips links, so a MIRAX folder with a linked
    data file would be stored incomplete while its source was removed."""
    links = [r for r in unit.roots() if r.is_symlink()]
    for root in unit.roots():
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root):
                links += [Path(dirpath, n) for n in dirnames + filenames if Path(dirpath, n).is_symlink()]
    if links:
        raise LinkedScan(
            f"{unit.primary} is or holds a symbolic link ({links[0]}); links are never followed or stored",
            path=str(unit.primary),
        )


def require_present(unit: ScanUnit, path: Path) -> None:
    """The scan at ``path`` is still on the scanner's disk (someone may have moved it since it was queued)."""
    if not unit.exists():
        raise SourceChanged(
            f"{path} is no longer on the scanner's disk",
            path=str(path),
            action="Check whether someone moved or deleted the scan; nothing was stored.",
        )
