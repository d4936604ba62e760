"""When has each scan unit on disk finished being written: the settle decision fed by the probes.

``core.settle.SettleTracker`` decides from fingerprints and clock values; this class takes the
fingerprints from disk, reads the clock, and after each window asks the probes whether the
format says "still writing" (MIRAX ``SLIDE_CREATION_FINISHED``), the lab's completion marker
(``[scanner] completion_marker``) is still missing, or a local process holds one of the unit's
files open for writing. A marker that appears early does not shorten the window: the scan must
also have stopped changing. The watcher (``watcher.py``) feeds it events and timers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scanner_agent.core.settle import SettleTracker
from scanner_agent.scanunit import Fingerprint, ScanUnit
from scanner_agent.watch.probes import (
    files_open_for_writing,
    format_says_done,
    marker_present,
    safe_fingerprint,
    unit_targets,
)


class CompletenessTracker:
    """Remembers the units being written and says when each has settled on disk.

    Not thread-safe: one thread (the watcher's tick thread) owns it. ``ready_units()`` touches
    the disk only once a unit's window has passed, so checking many pending units is cheap.
    """

    def __init__(
        self,
        settle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        proc: Path = Path("/proc"),
        completion_marker: str = "",
    ) -> None:
        self._settle: SettleTracker[ScanUnit, Fingerprint] = SettleTracker(settle_seconds)
        self._clock = clock
        self._proc = proc
        self.completion_marker = completion_marker

    @property
    def settle_seconds(self) -> float:
        return self._settle.settle_seconds

    def observe(self, unit: ScanUnit, fingerprint: Fingerprint | None = None) -> None:
        """Record (or refresh) the unit's fingerprint; a change restarts its settle window.

        ``fingerprint`` may be passed when the caller has just computed it; otherwise it is
        taken from disk.
        """
        fp = fingerprint if fingerprint is not None else safe_fingerprint(unit)
        self._settle.observe(unit, fp, self._clock())

    def hint_closed(self, unit: ScanUnit) -> None:
        """A writer closed a file of the unit: wait settle/4 instead of the full window."""
        self.observe(unit)
        self._settle.hint_closed(unit)

    def ready(self, unit: ScanUnit) -> bool:
        """Unchanged for the window, the format does not say "unfinished", and no local writer."""
        return unit in self._settle and self.ready_units([unit]) == [unit]

    def ready_units(self, units: Sequence[ScanUnit] | None = None) -> list[ScanUnit]:
        """``ready()`` for many units (default: all pending) with one /proc scan between them."""
        now = self._clock()
        settled: dict[ScanUnit, set[str]] = {}
        for unit in self._settle.due(now, units):
            if not self._settle.confirm(unit, safe_fingerprint(unit), now):
                continue
            if format_says_done(unit) is False or not marker_present(unit, self.completion_marker):
                self._settle.hold(unit, now)
                continue
            settled[unit] = unit_targets(unit)
        if not settled:
            return []
        writing = files_open_for_writing(set().union(*settled.values()), self._proc)
        ready: list[ScanUnit] = []
        for unit, targets in settled.items():
            if targets & writing:
                self._settle.hold(unit, now)
            else:
                ready.append(unit)
        return ready

    def fingerprint(self, unit: ScanUnit) -> Fingerprint | None:
        """The fingerprint last recorded for the unit (None if unknown or vanished)."""
        return self._settle.fingerprint(unit)

    def forget(self, unit: ScanUnit) -> None:
        self._settle.forget(unit)

    def pending(self) -> list[ScanUnit]:
        return self._settle.pending()

    def __len__(self) -> int:
        return len(self._settle)

    def __contains__(self, unit: object) -> bool:
        return unit in self._settle
