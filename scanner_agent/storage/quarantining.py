"""Quarantine: move a scan that cannot be stored beside a ``<name>.reason.txt``, by the storing protocol."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from scanner_agent.fileio import write_atomic
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage.checks import DEFAULT_MARGIN, prepare_storage, same_filesystem
from scanner_agent.storage.oserrors import on_source, on_storage
from scanner_agent.storage.paths import PARTIAL_SUFFIX, root_names
from scanner_agent.storage.placement import place_staged
from scanner_agent.storage.removal import remove_unit_files
from scanner_agent.storage.sidecar import SIDECAR_MODE
from scanner_agent.storage.source import require_unchanged, snapshot
from scanner_agent.storage.staging import remove_tree, stage

log = logging.getLogger(__name__)


def _free_quarantine_name(unit: ScanUnit, folder: Path) -> str:
    stem, ext = unit.stem, ("" if unit.is_folder else unit.primary.suffix)
    n = 1
    while True:
        candidate = stem if n == 1 else f"{stem}-{n}"
        names = [candidate + ext, candidate, f"{candidate + ext}.reason.txt", f"{candidate}.json"]
        if not any(os.path.lexists(folder / x) for x in names):
            return candidate + ext
        n += 1


def quarantine(
    unit: ScanUnit,
    quarantine_dir: Path,
    reason: str,
    *,
    incoming_dirname: str = ".incoming",
    bufsize: int = 8 << 20,
    margin: int = DEFAULT_MARGIN,
) -> Path:
    """Move a scan that cannot be stored into ``quarantine_dir`` beside a ``<name>.reason.txt``.

    Same protocol as storing (linked on the same filesystem, else copied and verified), so at
    every moment a crash could happen the whole scan is still where it was, or already here.
    """
    quarantine_dir = Path(quarantine_dir)
    incoming = quarantine_dir / incoming_dirname
    prepare_storage(quarantine_dir, incoming, None)
    name = _free_quarantine_name(unit, quarantine_dir)
    files = snapshot(unit, name)
    multi = len(root_names(unit, name)) > 1 or unit.is_folder
    partial = incoming / (name + PARTIAL_SUFFIX)
    remove_tree(partial)
    with on_source(unit.primary):
        same_fs = same_filesystem(unit.primary, incoming)
    try:
        stage(list(files), partial, multi, same_fs, quarantine_dir, margin, bufsize, True, None)
        require_unchanged(files, unit)
        with on_storage(quarantine_dir):
            place_staged(partial, quarantine_dir, root_names(unit, name), multi)
    except BaseException:
        remove_tree(partial)
        raise
    note = f"{datetime.now(UTC).isoformat()}\nsource: {unit.primary}\nreason: {reason}\n"
    with on_storage(quarantine_dir):
        write_atomic(
            quarantine_dir / f"{name}.reason.txt", note.encode(), tmp_dir=incoming, mode=SIDECAR_MODE
        )
    with on_source(unit.primary):
        remove_unit_files(unit, files)
    log.warning("quarantined %s as %s: %s", unit.primary, quarantine_dir / name, reason)
    return quarantine_dir / name
