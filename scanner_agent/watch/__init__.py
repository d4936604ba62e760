"""The watch-folder adapter: watchdog observers, scan units on disk, completeness probes.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.watch.completeness import discover_units, format_says_done, unit_for_path
from scanner_agent.watch.watcher import (
    ScanWatcher,
    WatcherHealth,
    choose_observer,
    filesystem_type,
    parse_mountinfo,
)

__all__ = [
    "ScanWatcher",
    "WatcherHealth",
    "choose_observer",
    "discover_units",
    "filesystem_type",
    "format_says_done",
    "parse_mountinfo",
    "unit_for_path",
]
