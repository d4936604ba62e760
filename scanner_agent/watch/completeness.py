"""Which scans are in a watch folder, and when is each one finished being written.

A scanner writes a slide in place over minutes, so "a file exists" never means "a scan is
ready". This module finds the scan units (one file, ``x.mrxs`` + ``x/``, or a DICOM folder),
maps any path an event names back to its unit, and decides readiness: the unit's fingerprint
(sizes and mtimes) has not changed for a settle window, the format's own signal (MIRAX
``SLIDE_CREATION_FINISHED``) does not say "still writing", and no local process holds one of
its files open for writing. Everything here is plain functions and one small state class; the
watcher (``watcher.py``) feeds it events and timers.
"""

from __future__ import annotations

import configparser
import fnmatch
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scanner_agent.scanunit import Fingerprint, ScanUnit

log = logging.getLogger(__name__)

#: Slide formats a scanner leaves in its output folder. ``*.dcm`` switches on DICOM folder
#: detection (a folder of DICOM files is one unit) as well as lone ``.dcm`` files at the top.
#: ``*.scn`` (Leica), ``*.vms`` (Hamamatsu VMS) and ``*.svslide`` (Sakura) are OpenSlide formats
#: some labs still produce; ``*.tiff`` is the long spelling scanners also use.
DEFAULT_PATTERNS: tuple[str, ...] = (
    "*.svs",
    "*.tif",
    "*.tiff",
    "*.ndpi",
    "*.bif",
    "*.mrxs",
    "*.scn",
    "*.vms",
    "*.svslide",
    "*.dcm",
)

# Names scanners, copy tools and desktops use for files that are not (yet) a scan.
_IGNORED_GLOBS: tuple[str, ...] = (
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.filepart",
    "*.!ut",
    "*.swp",
    "*.lock",
    "*.lck",
    "~*",
    ".*",
)
_IGNORED_NAMES = frozenset(
    {
        "thumbs.db",
        "desktop.ini",
        "$recycle.bin",
        "system volume information",
        "lost+found",
    }
)

_DICOM_MAGIC = b"DICM"
_DICOM_MAGIC_OFFSET = 128

# A symlink in the watch folder is logged once per path, not on every listing; the cap keeps a
# folder full of links from growing this set without bound.
_logged_symlinks: set[str] = set()
_LOGGED_SYMLINKS_CAP = 10_000


def is_ignored(name: str) -> bool:
    """True for temp, partial-download, hidden and desktop-clutter names, which are never scans."""
    low = name.lower()
    if not low or low in _IGNORED_NAMES:
        return True
    return any(fnmatch.fnmatchcase(low, g) for g in _IGNORED_GLOBS)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # Scanners and Windows shares disagree on case (.SVS vs .svs): match case-insensitively.
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def _dicom_enabled(patterns: Sequence[str]) -> bool:
    return _matches("slide.dcm", patterns)


def _note_symlink(path: Path) -> None:
    key = str(path)
    if key in _logged_symlinks:
        return
    if len(_logged_symlinks) >= _LOGGED_SYMLINKS_CAP:
        _logged_symlinks.clear()
    _logged_symlinks.add(key)
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


def _maybe_dicom_by_name(name: str) -> bool:
    """Names worth opening to look for the DICM magic: no extension, or a UID-like numeric one.

    Reading every ``Data0001.dat`` or ``Slidedat.ini`` to rule it out would cost I/O for nothing.
    """
    suffix = Path(name).suffix
    return suffix == "" or suffix[1:].isdigit()


def _is_dicom_file(path: Path, name: str) -> bool:
    if name.lower().endswith(".dcm"):
        return True
    return _maybe_dicom_by_name(name) and _has_dicom_magic(path)


def is_dicom_folder(folder: Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> bool:
    """A folder is one DICOM scan when it directly holds a DICOM file and no other slide file.

    Other small files (a DICOMDIR, a manifest) travel with it; a folder that also holds, say, an
    ``.svs`` is a plain folder of separate scans instead.
    """
    if not _dicom_enabled(patterns):
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
                elif _matches(name, patterns):
                    return False  # a different slide format lives here: not a DICOM series
                elif not found and _maybe_dicom_by_name(name) and _has_dicom_magic(Path(entry.path)):
                    found = True
    except OSError:
        return False
    return found


def _companion_of(folder: Path) -> Path | None:
    """The ``x.mrxs`` a folder ``x/`` belongs to, if there is one next to it."""
    for ext in (".mrxs", ".MRXS", ".Mrxs"):
        candidate = folder.parent / (folder.name + ext)
        if candidate.is_file() and not candidate.is_symlink():
            return candidate
    return None


def discover_units(watch: Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[ScanUnit]:
    """Every scan unit under ``watch`` (recursive), sorted by path.

    Raises ``OSError`` if ``watch`` itself cannot be listed (missing, unmounted): the caller must
    know the listing failed rather than see an empty folder. Unreadable sub-folders are logged
    and skipped so one bad folder does not hide the rest.
    """
    watch = Path(watch)
    units: list[ScanUnit] = []
    _scan_dir(watch, patterns, units, top=True)
    units.sort(key=lambda u: str(u.primary))
    return units


def _scan_dir(folder: Path, patterns: Sequence[str], out: list[ScanUnit], *, top: bool) -> None:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        if top:
            raise
        log.warning("Cannot list %s; skipping it this time", folder, exc_info=True)
        return
    # MIRAX data folders are part of their .mrxs unit, never scans of their own.
    mrxs_stems = {
        e.name[:-5].lower() for e in entries if e.name.lower().endswith(".mrxs") and not e.is_symlink()
    }
    subdirs: list[Path] = []
    for entry in entries:
        name = entry.name
        path = Path(entry.path)
        if is_ignored(name):
            continue
        if entry.is_symlink():
            _note_symlink(path)
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = entry.is_file(follow_symlinks=False)
        except OSError:
            continue
        if is_file and _matches(name, patterns):
            out.append(ScanUnit.from_path(path))
        elif is_dir and name.lower() not in mrxs_stems:
            subdirs.append(path)
    for sub in subdirs:
        if is_dicom_folder(sub, patterns):
            out.append(ScanUnit(primary=sub))
        else:
            _scan_dir(sub, patterns, out, top=False)


def unit_for_path(watch: Path, path: Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> ScanUnit | None:
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
            _note_symlink(current)
            return None
        if last and not current.is_dir():
            # A file (or a vanished path): a scan only if it is a slide file itself. Its parents
            # were checked above on the way down, so it is not inside a MIRAX or DICOM folder.
            return ScanUnit.from_path(current) if _matches(name, patterns) else None
        # A directory on the way down (or the event's own directory): is it a scan?
        mrxs = _companion_of(current)
        if mrxs is not None:
            return ScanUnit.from_path(mrxs)
        if current.is_dir() and is_dicom_folder(current, patterns):
            return ScanUnit(primary=current)
        if not current.is_dir():
            return None  # a parent that vanished: nothing to look at
    return None


def _slidedat(folder: Path) -> Path | None:
    direct = folder / "Slidedat.ini"
    if direct.is_file():
        return direct
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lower() == "slidedat.ini" and entry.is_file(follow_symlinks=False):
                    return Path(entry.path)
    except OSError:
        pass
    return None


def format_says_done(unit: ScanUnit) -> bool | None:
    """The format's own "finished" flag: True/False for MIRAX, None (no signal) for others.

    MIRAX: ``x/Slidedat.ini`` ``[GENERAL] SLIDE_CREATION_FINISHED``. A missing or unreadable
    Slidedat.ini means the scanner has not got that far: False. A Slidedat.ini with no such key
    (older software) gives no signal: None, and the settle window alone decides.
    """
    if unit.primary.suffix.lower() != ".mrxs":
        return None
    if unit.companion is None or not unit.companion.is_dir():
        return False
    ini_path = _slidedat(unit.companion)
    if ini_path is None:
        return False
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        # utf-8-sig drops the BOM 3DHISTECH software writes; errors="replace" keeps a stray
        # Latin-1 byte in a free-text field from hiding the flag.
        with open(ini_path, encoding="utf-8-sig", errors="replace") as fh:
            parser.read_file(fh)
    except (OSError, configparser.Error):
        return False
    section = next((s for s in parser.sections() if s.strip().upper() == "GENERAL"), None)
    if section is None:
        return False
    value = parser.get(section, "SLIDE_CREATION_FINISHED", fallback=None)  # keys are case-folded
    if value is None:
        return None
    return value.strip().strip('"').lower() in {"true", "1", "yes"}


def open_for_writing(unit: ScanUnit, proc: Path = Path("/proc")) -> bool:
    """Whether a process on this machine holds one of the unit's files open for writing.

    Reads ``/proc/<pid>/fd`` links and ``fdinfo`` flags. Processes of other users are invisible
    without privileges, and writers on another machine (network shares) always are, so False
    means "not seen", never "certainly closed". False where /proc is unavailable.
    """
    return bool(files_open_for_writing(_unit_targets(unit), proc))


def files_open_for_writing(targets: set[str], proc: Path = Path("/proc")) -> set[str]:
    """Which of ``targets`` (real paths) some visible process holds open for writing.

    One pass over /proc for any number of files, so many settled units cost one scan.
    """
    if not targets or not proc.is_dir():
        return set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return set()
    found: set[str] = set()
    for pid in pids:
        fd_dir = proc / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or another user's process
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            # fdinfo is read only for our files: reading it for every fd would cost far more.
            if target in targets and target not in found and _fd_writable(proc / pid / "fdinfo" / fd):
                found.add(target)
    return found


def _unit_targets(unit: ScanUnit) -> set[str]:
    return {os.path.realpath(fp) for fp, _ in _unit_files(unit)}


def _unit_files(unit: ScanUnit) -> list[tuple[Path, str]]:
    try:
        return unit.files()
    except OSError:
        return []


def _fd_writable(fdinfo: Path) -> bool:
    try:
        text = fdinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags:"):
            flags = int(line.split(":", 1)[1].strip(), 8)
            return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    return False


def safe_fingerprint(unit: ScanUnit) -> Fingerprint | None:
    """The unit's fingerprint, or None if it (or a file in it) vanished or cannot be read."""
    try:
        if not unit.primary.exists() or unit.primary.is_symlink():
            return None
        return unit.fingerprint()
    except OSError:
        return None


@dataclass
class _Entry:
    fingerprint: Fingerprint | None
    changed_at: float  # clock time the fingerprint was last seen to change (or first seen)
    closed_hint: bool = False
    blocked_until: float = 0.0  # no re-check before this: format says unfinished, or open for writing


class SettleTracker:
    """Remembers the units being written and says when each has settled.

    Not thread-safe: one thread (the watcher's tick thread) owns it. ``ready()`` touches the
    disk only once a unit's window has passed, so checking many pending units is cheap.
    """

    def __init__(
        self,
        settle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        proc: Path = Path("/proc"),
    ) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}")
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._proc = proc
        self._entries: dict[ScanUnit, _Entry] = {}

    def observe(self, unit: ScanUnit, fingerprint: Fingerprint | None = None) -> None:
        """Record (or refresh) the unit's fingerprint; a change restarts its settle window.

        ``fingerprint`` may be passed when the caller has just computed it.
        """
        fp = fingerprint if fingerprint is not None else safe_fingerprint(unit)
        now = self._clock()
        entry = self._entries.get(unit)
        if entry is None:
            self._entries[unit] = _Entry(fp, now)
        elif fp != entry.fingerprint:
            self._changed(entry, fp, now)

    def hint_closed(self, unit: ScanUnit) -> None:
        """A writer closed a file of the unit: wait settle/4 instead of the full window.

        The unchanged-fingerprint check still applies; any later change cancels the hint.
        """
        self.observe(unit)
        entry = self._entries[unit]
        entry.closed_hint = True
        entry.blocked_until = 0.0  # the writer we saw holding it open may be the one that closed

    def ready(self, unit: ScanUnit) -> bool:
        """Unchanged for the window, the format does not say "unfinished", and no local writer."""
        return unit in self._entries and self.ready_units([unit]) == [unit]

    def ready_units(self, units: Sequence[ScanUnit] | None = None) -> list[ScanUnit]:
        """``ready()`` for many units (default: all pending) with one /proc scan between them."""
        now = self._clock()
        settled: dict[ScanUnit, set[str]] = {}
        for unit in self.pending() if units is None else units:
            entry = self._entries.get(unit)
            if entry is None:
                continue
            window = self._window(entry)
            if now < entry.changed_at + window or now < entry.blocked_until:
                continue  # no disk I/O until the window has passed
            fp = safe_fingerprint(unit)
            if fp is None or fp != entry.fingerprint:
                self._changed(entry, fp, now)
                continue
            # When the format says "not yet" (or a writer holds it), wait another window before
            # asking again rather than re-reading on every tick.
            if format_says_done(unit) is False:
                entry.blocked_until = now + window
                continue
            settled[unit] = _unit_targets(unit)
        if not settled:
            return []
        writing = files_open_for_writing(set().union(*settled.values()), self._proc)
        ready: list[ScanUnit] = []
        for unit, targets in settled.items():
            if targets & writing:
                entry = self._entries[unit]
                entry.blocked_until = now + self._window(entry)
            else:
                ready.append(unit)
        return ready

    def _window(self, entry: _Entry) -> float:
        return self.settle_seconds / 4 if entry.closed_hint else self.settle_seconds

    def fingerprint(self, unit: ScanUnit) -> Fingerprint | None:
        """The fingerprint last recorded for the unit (None if unknown or vanished)."""
        entry = self._entries.get(unit)
        return entry.fingerprint if entry else None

    def forget(self, unit: ScanUnit) -> None:
        self._entries.pop(unit, None)

    def pending(self) -> list[ScanUnit]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, unit: object) -> bool:
        return unit in self._entries

    @staticmethod
    def _changed(entry: _Entry, fp: Fingerprint | None, now: float) -> None:
        entry.fingerprint = fp
        entry.changed_at = now
        entry.closed_hint = False
        entry.blocked_until = 0.0
