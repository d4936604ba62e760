"""The watch-folder adapter: watchdog observers, scan units on disk, completeness probes.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.watch.completeness import CompletenessTracker
from scanner_agent.watch.mountinfo import NETWORK_FS, choose_observer, filesystem_type, parse_mountinfo
from scanner_agent.watch.probes import (
    files_open_for_writing,
    format_says_done,
    open_for_writing,
    safe_fingerprint,
)
from scanner_agent.watch.units import LinkWarnings, discover_units, is_dicom_folder, unit_for_path
from scanner_agent.watch.watcher import ScanWatcher, WatcherHealth

__all__ = [
    "NETWORK_FS",
    "CompletenessTracker",
    "LinkWarnings",
    "ScanWatcher",
    "WatcherHealth",
    "choose_observer",
    "discover_units",
    "files_open_for_writing",
    "filesystem_type",
    "format_says_done",
    "is_dicom_folder",
    "open_for_writing",
    "parse_mountinfo",
    "safe_fingerprint",
    "unit_for_path",
]
