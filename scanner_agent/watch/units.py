"""Which scan units are in a watch folder, and which unit an event's path belongs to.

A unit is one slide file, an ``x.mrxs`` with its data folder ``x/`` (an Olympus ``x.vsi`` with
``_x_/``), or a folder of DICOM files. Links are never followed: a symlink is logged (once per
path, by a ``LinkWarnings`` the caller keeps) and skipped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from scanner_agent.core.patterns import (
    DEFAULT_PATTERNS,
    dicom_enabled,
    is_ignored,
    matches,
    maybe_dicom_by_name,
)
from scanner_agent.scanunit import ScanUnit

log = logging.getLogger(__name__)

_DICOM_MAGIC = b"DICM"
_DICOM_MAGIC_OFFSET = 128


class LinkWarnings:
    """Warns about a symlink in the watch folder once per path, not on every listing.

    The cap keeps a folder full of links from growing the set without bound (past it, the set
    starts over and links are named again).
    """

    def __init__(self, cap: int = 10_000) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def note(self, path: Path) -> None:
        key = str(path)
        if key in self._seen:
            return
        if len(self._seen) >= self._cap:
            self._seen.clear()
        self._seen.add(key)
        log.warning(
            "Ignoring symlink %s in the watch folder: a link is not a scan (links are never followed)", path
        )


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICOM_MAGIC_OFFSET)
            return fh.read(4) == _DICOM_MAGIC
    except OSError:
        return False


def is_dicom_folder(folder: Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> bool:
    """A folder is one DICOM scan when it directly holds a DICOM file and no other slide file.

    Other small files (a DICOMDIR, a manifest) travel with it; a folder that also holds, say, an
    ``.svs`` is a plain folder of separate scans instead.
    """
    if not dicom_enabled(patterns):
        return False
    found = False
    try:
        with os.scandir(folder) as it:
            for entry in it:
                name = entry.name
                if is_ignored(name) or entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                    continue
                if name.lower().endswith(".dcm"):
                    found = True
                elif matches(name, patterns):
                    return False  # a different slide format lives here: not a DICOM series
                elif not found and maybe_dicom_by_name(name) and _has_dicom_magic(Path(entry.path)):
                    found = True
    except OSError:
        return False
    return found


def _companion_of(folder: Path) -> Path | None:
    """The ``x.mrxs`` a folder ``x/`` belongs to (or the ``x.vsi`` of ``_x_/``), if it is next to it."""
    candidates = [folder.parent / (folder.name + ext) for ext in (".mrxs", ".MRXS", ".Mrxs")]
    name = folder.name
    if len(name) > 2 and name.startswith("_") and name.endswith("_"):
        candidates += [folder.parent / (name[1:-1] + ext) for ext in (".vsi", ".VSI", ".Vsi")]
    for candidate in candidates:
        if candidate.is_file() and not candidate.is_symlink():
            return candidate
    return None


def _data_folder_names(entries: Sequence[os.DirEntry[str]]) -> set[str]:
    """Lower-case names of the data folders that belong to a ``.mrxs`` or ``.vsi`` in ``entries``:
    part of that unit, never scans of their own."""
    names: set[str] = set()
    for e in entries:
        low = e.name.lower()
        if e.is_symlink():
            continue
        if low.endswith(".mrxs"):
            names.add(low[:-5])
        elif low.endswith(".vsi"):
            names.add(f"_{low[:-4]}_")
    return names


def discover_units(
    watch: Path, patterns: Sequence[str] = DEFAULT_PATTERNS, *, links: LinkWarnings | None = None
) -> list[ScanUnit]:
    """Every scan unit under ``watch`` (recursive), sorted by path.

    Raises ``OSError`` if ``watch`` itself cannot be listed (missing, unmounted): the caller must
    know the listing failed rather than see an empty folder. Unreadable sub-folders are logged
    and skipped so one bad folder does not hide the rest. ``links`` remembers the symlinks
    already warned about across calls (default: warn about each one found in this listing).
    """
    units: list[ScanUnit] = []
    _scan_dir(Path(watch), patterns, units, links or LinkWarnings(), top=True)
    units.sort(key=lambda u: str(u.primary))
    return units


def _scan_dir(
    folder: Path, patterns: Sequence[str], out: list[ScanUnit], links: LinkWarnings, *, top: bool
) -> None:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        if top:
            raise
        log.warning("Cannot list %s; skipping it this time", folder, exc_info=True)
        return
    # MIRAX and VSI data folders are part of their unit, never scans of their own.
    data_folders = _data_folder_names(entries)
    subdirs: list[Path] = []
    for entry in entries:
        name = entry.name
        path = Path(entry.path)
        if is_ignored(name):
            continue
        if entry.is_symlink():
            links.note(path)
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = entry.is_file(follow_symlinks=False)
        except OSError:
            continue
        if is_file and matches(name, patterns):
            out.append(ScanUnit.from_path(path))
        elif is_dir and name.lower() not in data_folders:
            subdirs.append(path)
    for sub in subdirs:
        if is_dicom_folder(sub, patterns):
            out.append(ScanUnit(primary=sub))
        else:
            _scan_dir(sub, patterns, out, links, top=False)


def unit_for_path(
    watch: Path,
    path: Path,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    *,
    links: LinkWarnings | None = None,
) -> ScanUnit | None:
    """The scan unit an event path belongs to, or None if the path is not part of a scan.

    ``watch/x/Data0003.dat`` maps to the ``x.mrxs`` unit, ``watch/series1/img5.dcm`` to the
    ``series1`` DICOM unit. A path that no longer exists but names a slide file still maps to
    its unit, so the caller can notice it vanished.
    """
    watch = Path(watch)
    path = Path(path)
    try:
        parts = path.relative_to(watch).parts
    except ValueError:
        return None
    if not parts or ".." in parts:
        return None
    current = watch
    for depth, name in enumerate(parts):
        current = current / name
        last = depth == len(parts) - 1
        if is_ignored(name):
            return None
        if current.is_symlink():
            (links or LinkWarnings()).note(current)
            return None
        if last and not current.is_dir():
            # A file (or a vanished path): a scan only if it is a slide file itself. Its parents
            # were checked above on the way down, so it is not inside a MIRAX or DICOM folder.
            return ScanUnit.from_path(current) if matches(name, patterns) else None
        # A directory on the way down (or the event's own directory): is it a scan?
        mrxs = _companion_of(current)
        if mrxs is not None:
            return ScanUnit.from_path(mrxs)
        if current.is_dir() and is_dicom_folder(current, patterns):
            return ScanUnit(primary=current)
        if not current.is_dir():
            return None  # a parent that vanished: nothing to look at
    return None


def _marker_regex(template: str) -> re.Pattern[str]:
    """A regex matching the marker names ``template`` gives, capturing the scan's stem or name."""
    out, pos = "", 0
    for m in re.finditer(r"\{(stem|name)\}", template):
        out += re.escape(template[pos : m.start()]) + f"(?P<{m.group(1)}>.+)"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]), re.IGNORECASE)


def is_marker_name(name: str, template: str) -> bool:
    """Whether ``name`` is a completion marker's name under ``template`` (``"{stem}.done"``)."""
    return bool(template) and _marker_regex(template).fullmatch(name) is not None


def scan_for_marker(
    marker: Path, template: str, patterns: Sequence[str] = DEFAULT_PATTERNS
) -> ScanUnit | None:
    """The scan a completion marker belongs to (a file or DICOM folder beside it), or None."""
    m = _marker_regex(template).fullmatch(marker.name) if template else None
    if m is None:
        return None
    try:
        with os.scandir(marker.parent) as it:
            entries = [e for e in it if not is_ignored(e.name) and not e.is_symlink()]
    except OSError:
        return None
    for e in sorted(entries, key=lambda e: e.name):
        path = Path(e.path)
        if e.is_file(follow_symlinks=False) and matches(e.name, patterns):
            unit = ScanUnit.from_path(path)
        elif e.is_dir(follow_symlinks=False) and is_dicom_folder(path, patterns):
            unit = ScanUnit(primary=path)
        else:
            continue
        if unit.marker_path(template) == marker:
            return unit
    return None


def orphan_markers(watch: Path, template: str, units: Sequence[ScanUnit]) -> list[Path]:
    """Completion markers under ``watch`` with no scan beside them (a flag left behind, or written
    before its scan): never scans themselves, named so a person can tidy them."""
    if not template:
        return []
    expected = {u.marker_path(template) for u in units}
    inside = {root for u in units for root in u.roots()}
    regex = _marker_regex(template)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(watch):
        base = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d) and base / d not in inside)
        for fn in sorted(filenames):
            p = base / fn
            if regex.fullmatch(fn) and p not in expected and not p.is_symlink():
                found.append(p)
    return found
