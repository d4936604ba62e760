"""Look at a scan unit on disk: its fingerprint, its format's "finished" flag, open writers.

Each probe answers one question the settle decision (``core.settle``) cannot answer alone and
never raises for a unit that vanishes or cannot be read: it answers "no signal" instead.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from scanner_agent.scanunit import Fingerprint, ScanUnit


def safe_fingerprint(unit: ScanUnit) -> Fingerprint | None:
    """The unit's fingerprint, or None if it (or a file in it) vanished or cannot be read."""
    try:
        if not unit.primary.exists() or unit.primary.is_symlink():
            return None
        return unit.fingerprint()
    except OSError:
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


def marker_present(unit: ScanUnit, template: str) -> bool:
    """Whether the lab's completion marker (``[scanner] completion_marker``) for the unit exists;
    True when no marker is configured."""
    marker = unit.marker_path(template)
    return marker is None or (marker.is_file() and not marker.is_symlink())


def unit_targets(unit: ScanUnit) -> set[str]:
    """The real paths of the unit's files, as ``/proc/<pid>/fd`` links name them."""
    try:
        files = unit.files()
    except OSError:
        return set()
    return {os.path.realpath(fp) for fp, _ in files}


def open_for_writing(unit: ScanUnit, proc: Path = Path("/proc")) -> bool:
    """Whether a process on this machine holds one of the unit's files open for writing.

    Reads ``/proc/<pid>/fd`` links and ``fdinfo`` flags. Processes of other users are invisible
    without privileges, and writers on another machine (network shares) always are, so False
    means "not seen", never "certainly closed". False where /proc is unavailable.
    """
    return bool(files_open_for_writing(unit_targets(unit), proc))


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
