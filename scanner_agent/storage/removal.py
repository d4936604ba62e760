"""Removing what is no longer needed: the source of a stored scan, partials a crash left in ``.incoming``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from scanner_agent.core.errors import SourceChanged, StorageUnavailable
from scanner_agent.fileio import TMP_SUFFIX, fsync_dir
from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage.oserrors import on_source
from scanner_agent.storage.paths import PARTIAL_SUFFIX
from scanner_agent.storage.records import SourceFile, TransferResult
from scanner_agent.storage.source import changes
from scanner_agent.storage.staging import remove_tree

log = logging.getLogger(__name__)


def remove_unit_files(unit: ScanUnit, files: tuple[SourceFile, ...]) -> None:
    """Unlink exactly the files that were copied, then the folders they leave empty."""
    # The .mrxs first: the scanner's folder never shows a .mrxs whose data is half gone.
    for f in sorted(files, key=lambda f: f.path != unit.primary):
        f.path.unlink(missing_ok=True)
    for root in reversed(unit.roots()):
        if root.is_dir() and not root.is_symlink():
            for dirpath, _dirs, _files in os.walk(root, topdown=False):  # deepest first
                try:
                    os.rmdir(dirpath)
                except OSError as exc:  # something not ours is inside: keep it
                    log.warning("left %s in place after removing the scan: %s", dirpath, exc.strerror)
    fsync_dir(unit.primary.parent)


def remove_marker(unit: ScanUnit, template: str) -> None:
    """Remove the scan's completion marker (``[scanner] completion_marker``) with the scan, so a later
    scan of the same name is not taken as complete by a flag left from this one."""
    marker = unit.marker_path(template)
    if marker is not None and marker.is_file() and not marker.is_symlink():
        marker.unlink(missing_ok=True)
        log.info("removed completion marker %s with its scan", marker)


def remove_source(unit: ScanUnit, result: TransferResult) -> None:
    """Delete the source of a stored scan, if it is still exactly what was copied and the copy is there."""
    if not result.source_files:
        raise ValueError(f"no record of what was copied from {unit.primary}; refusing to remove it")
    for f in result.files:
        p = result.dest.parent / f.rel
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise StorageUnavailable(
                f"stored copy {p} is not readable ({exc.strerror}); keeping the source {unit.primary}",
                path=str(p),
            ) from exc
        if size != f.size:
            raise StorageUnavailable(
                f"stored copy {p} is {size} bytes, expected {f.size}; keeping the source {unit.primary}",
                path=str(p),
            )
    # Files already gone are fine: an earlier call may have died halfway through.
    problems = changes(result.source_files, unit, allow_missing=True)
    if problems:
        raise SourceChanged(
            f"source changed since it was stored, keeping it: {'; '.join(problems[:5])}",
            path=str(unit.primary),
        )
    with on_source(unit.primary):
        remove_unit_files(unit, result.source_files)
    log.info("removed source %s (stored as %s)", unit.primary, result.dest)


def clean_incoming(
    storage_root: Path, incoming_dirname: str = ".incoming", *, older_than: float = 0, recursive: bool = True
) -> list[Path]:
    """Remove partials left in ``.incoming`` folders under ``storage_root`` by a crash.

    Only entries we create there (``*.partial``, ``*.tmp``) are removed, only when last modified
    more than ``older_than`` seconds ago, and nothing outside ``.incoming`` folders is touched.
    Safe because a partial is never the only copy: the source stays until ``remove_source``.
    ``recursive=False`` looks only at ``storage_root/.incoming`` (one destination folder),
    which is what a daemon restart needs: walking a whole lab share would take minutes.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than
    if not recursive:
        incoming = Path(storage_root, incoming_dirname)
        return _clean_one(incoming, cutoff) if incoming.is_dir() and not incoming.is_symlink() else []
    for dirpath, dirnames, _files in os.walk(storage_root):
        if incoming_dirname in dirnames:
            incoming = Path(dirpath, incoming_dirname)
            if not incoming.is_symlink():
                removed += _clean_one(incoming, cutoff)
        dirnames[:] = [d for d in dirnames if d != incoming_dirname]  # os.walk never follows links
    return removed


def _clean_one(incoming: Path, cutoff: float) -> list[Path]:
    removed: list[Path] = []
    for entry in os.scandir(incoming):
        if not entry.name.endswith((PARTIAL_SUFFIX, TMP_SUFFIX)):
            continue
        if entry.stat(follow_symlinks=False).st_mtime > cutoff:
            continue
        remove_tree(Path(entry.path))
        removed.append(Path(entry.path))
        log.info("removed leftover partial %s", entry.path)
    return removed
