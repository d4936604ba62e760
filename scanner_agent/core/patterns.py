"""Which file names are scans: the default slide patterns, and the names that never are.

Names only, no disk: the watch adapter lists folders and asks these questions of each name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import PurePosixPath

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


def is_ignored(name: str) -> bool:
    """True for temp, partial-download, hidden and desktop-clutter names, which are never scans."""
    low = name.lower()
    if not low or low in _IGNORED_NAMES:
        return True
    return any(fnmatch.fnmatchcase(low, g) for g in _IGNORED_GLOBS)


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` matches one of the slide ``patterns``, ignoring case.

    Scanners and Windows shares disagree on case (``.SVS`` vs ``.svs``).
    """
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def dicom_enabled(patterns: Sequence[str]) -> bool:
    """Whether the patterns ask for DICOM, which also turns on DICOM folder detection."""
    return matches("slide.dcm", patterns)


def maybe_dicom_by_name(name: str) -> bool:
    """Names worth opening to look for the DICOM magic: no extension, or a UID-like numeric one.

    Reading every ``Data0001.dat`` or ``Slidedat.ini`` to rule it out would cost I/O for nothing.
    """
    suffix = PurePosixPath(name).suffix
    return suffix == "" or suffix[1:].isdigit()
