"""Watch a scanner's output folder and report each scan once it has finished being written.

Filesystem events (watchdog: inotify locally, polling on network shares) are only hints that
say "look at this path"; the truth is the folder itself. A full listing at start and every
``rescan_seconds`` catches whatever events missed (downtime, an overflowed inotify queue, a
share that blinked). A single background thread owns all state: it drains event hints, runs
the listings, asks ``completeness.CompletenessTracker`` which units are ready, calls ``on_ready``
once per finished scan, and supervises the observer (restarting it when it dies, and
reporting the watch folder missing until it comes back).

This module is the watcher's loop and what it does with events and listings; keeping the observer
running on the folder (start, restart, fall back to polling, folder missing) is in ``supervision.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from watchdog.observers.api import BaseObserver

from scanner_agent.core.errors import ConfigError
from scanner_agent.core.patterns import DEFAULT_PATTERNS
from scanner_agent.scanunit import Fingerprint, ScanUnit
from scanner_agent.watch.completeness import CompletenessTracker
from scanner_agent.watch.mountinfo import OBSERVER_SETTINGS
from scanner_agent.watch.observers import HintHandler, observer_alive
from scanner_agent.watch.probes import safe_fingerprint
from scanner_agent.watch.supervision import ObserverSupervision
from scanner_agent.watch.units import (
    LinkWarnings,
    discover_units,
    is_marker_name,
    orphan_markers,
    scan_for_marker,
    unit_for_path,
)

log = logging.getLogger(__name__)


@dataclass
class WatcherHealth:
    """What the watcher is doing, for ``status``, systemd's watchdog and alerts.

    ``alive``: the observer threads are running on an existing watch folder. ``last_error`` is
    the most recent problem and stays after recovery (``alive`` says whether it is current).
    Times are wall-clock (``time.time()``) for display.
    """

    observer: str
    alive: bool
    watching_since: float | None
    last_full_scan: float | None
    last_error: str | None
    restarts: int
    pending: int


class ScanWatcher(ObserverSupervision):
    """Reports each finished scan under ``watch`` to ``on_ready``, once per change.

    ``on_ready`` runs on the watcher's thread and must return quickly (enqueue, don't copy).
    A unit reported and unchanged is not reported again while the watcher runs; after a
    restart everything present is reported again (the journal dedupes by identity). If
    ``on_ready`` raises, the unit is offered again at the next full listing.
    """

    def __init__(
        self,
        watch: Path,
        on_ready: Callable[[ScanUnit], None],
        *,
        patterns: Sequence[str] = DEFAULT_PATTERNS,
        observer: str = "auto",
        settle_seconds: float = 30,
        rescan_seconds: float = 300,
        poll_interval: float = 2.0,
        tick_seconds: float = 0.25,
        on_health_change: Callable[[WatcherHealth], None] | None = None,
        completion_marker: str = "",
    ) -> None:
        if observer.strip().lower() not in OBSERVER_SETTINGS:
            raise ConfigError(f"observer = {observer!r} is not one of {', '.join(OBSERVER_SETTINGS)}")
        for name, value in (
            ("rescan_seconds", rescan_seconds),
            ("poll_interval", poll_interval),
            ("tick_seconds", tick_seconds),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        self.watch = Path(watch)
        self._on_ready = on_ready
        self._patterns = tuple(patterns)
        self._observer_setting = observer
        self._rescan_seconds = rescan_seconds
        self._poll_interval = poll_interval
        self._tick_seconds = tick_seconds
        self._on_health_change = on_health_change

        self._marker = completion_marker
        self._tracker = CompletenessTracker(settle_seconds, completion_marker=completion_marker)
        self._orphans_logged: set[Path] = set()  # markers with no scan, named once each
        self._links = LinkWarnings()  # a link is named once while the watcher runs, not per listing
        self._reported: dict[ScanUnit, Fingerprint] = {}
        self._hints: dict[str, bool] = {}
        self._hints_lock = threading.Lock()
        self._handler = HintHandler(self._add_hint, on_write=self._saw_write)
        #: monotonic time a file here (outside dot-folders such as the quarantine) was last
        #: created or written to, as the observer heard it: ``written_lately()``.
        self._last_write = float("-inf")

        self._observer: BaseObserver | None = None
        self._observer_dev: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_rescan = 0.0

        self._state_lock = threading.Lock()
        #: unit -> (monotonic time first seen changing, last seen changing): ``growing()``.
        self._growing: dict[ScanUnit, tuple[float, float]] = {}
        self._kind = "polling" if observer == "polling" else "inotify"
        self._alive = False
        self._folder_missing = False
        self._watching_since: float | None = None
        self._last_full_scan: float | None = None
        self._last_error: str | None = None
        self._restarts = 0
        self._last_ok = 0.0  # monotonic time of the last successful probe or listing
        self._last_notified: tuple[object, ...] | None = None

    # ---- public API -------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching: observer, then a full listing (catch-up), then the tick thread.

        Starting the observer before listing leaves no gap in which a new file is neither
        listed nor watched. A missing watch folder does not raise: health says so and the
        watcher keeps retrying.
        """
        if self._thread is not None:
            raise RuntimeError(f"watcher for {self.watch} already started")
        self._stop.clear()
        self._safe_tick()  # synchronous, so everything present is observed when start() returns
        self._thread = threading.Thread(
            target=self._run, name=f"scan-watcher[{self.watch.name}]", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():  # stop() from on_ready
            thread.join(timeout)
        self._stop_observer(timeout)
        with self._state_lock:
            self._alive = False
        self._notify_health()

    def health(self) -> WatcherHealth:
        with self._state_lock:
            return WatcherHealth(
                observer=self._kind,
                alive=self._alive and observer_alive(self._observer),
                watching_since=self._watching_since,
                last_full_scan=self._last_full_scan,
                last_error=self._last_error,
                restarts=self._restarts,
                pending=len(self._tracker),
            )

    @property
    def settle_seconds(self) -> float:
        return self._tracker.settle_seconds

    def growing(self, now: float | None = None) -> dict[ScanUnit, float]:
        """Scans still being written: changed within ``settle_seconds``; value: monotonic time first seen.

        Thread-safe (the copy engine's gate asks on every chunk). A scan that stops changing drops
        out once its window passes, whether or not it is complete."""
        now = time.monotonic() if now is None else now
        window = self.settle_seconds
        with self._state_lock:
            for unit in [u for u, (_first, last) in self._growing.items() if now - last > 4 * window + 60]:
                del self._growing[unit]  # bounded: gone, stored or settled long ago
            return {u: first for u, (first, last) in self._growing.items() if now - last <= window}

    def written_lately(self, now: float | None = None) -> bool:
        """Whether a file here was created or written to within the last two ticks.

        The first sign of a scan starting, before a tick has looked at it and ``growing()`` can
        name it: the copy's gate (``TransferGate.follow``) slows down at once, instead of reading
        at full speed for up to a tick while the scanner has begun. Thread-safe (one float)."""
        now = time.monotonic() if now is None else now
        return now - self._last_write <= 2 * self._tick_seconds

    def healthy(self) -> bool:
        """Observer threads alive, tick thread alive, and the folder answered recently."""
        thread = self._thread
        if thread is None or not thread.is_alive() or not self.health().alive:
            return False
        stale_after = max(10.0, 4 * self._tick_seconds, 3 * self._poll_interval)
        return time.monotonic() - self._last_ok <= stale_after

    # ---- the tick thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._tick_seconds):
            self._safe_tick()

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # the loop must outlive any one bad tick, and say so
            message = f"watcher error on {self.watch}: {type(exc).__name__}: {exc}"
            if message != self._last_error:  # once per distinct error, not four times a second
                log.exception("Watcher tick for %s failed", self.watch)
            self._set_error(message)
        self._notify_health()

    def _tick(self) -> None:
        now = time.monotonic()
        if not self._supervise(now):
            return
        self._drain_hints()
        if now >= self._next_rescan:
            self._full_listing()
        self._report_ready()

    # _supervise (the folder and the observer) and _folder_lost: see supervision.py

    # ---- events, listings and reports ------------------------------------------------------------

    def _saw_write(self, path: str) -> None:
        # Called on the observer's thread: no I/O. The agent's own files (the quarantine's
        # notes) live in dot-folders and are not a scanner writing.
        try:
            parts = Path(path).relative_to(self.watch).parts
        except ValueError:
            return
        if not any(part.startswith(".") for part in parts):
            self._last_write = time.monotonic()

    def _add_hint(self, path: str, closed: bool) -> None:
        # Called on the observer's thread: dedupe paths, do no I/O.
        with self._hints_lock:
            self._hints[path] = self._hints.get(path, False) or closed

    def _drain_hints(self) -> None:
        with self._hints_lock:
            hints, self._hints = self._hints, {}
        units: dict[ScanUnit, bool] = {}
        for path, closed in hints.items():
            unit = unit_for_path(self.watch, Path(path), self._patterns, links=self._links)
            if unit is None and is_marker_name(Path(path).name, self._marker):
                # The lab's "done" flag: its scan is looked at now instead of a window later.
                unit = scan_for_marker(Path(path), self._marker, self._patterns)
                if unit is None and Path(path).is_file():
                    self._note_orphan(Path(path))
                closed = True
            if unit is not None:
                units[unit] = units.get(unit, False) or closed
        for unit, closed in units.items():
            self._observe(unit, safe_fingerprint(unit), closed=closed)

    def _observe(self, unit: ScanUnit, fp: Fingerprint | None, *, closed: bool = False) -> None:
        if fp is None:
            if not os.path.lexists(unit.primary):  # gone (moved to storage, deleted)
                self._tracker.forget(unit)
                self._reported.pop(unit, None)
            else:  # a file vanished mid-stat (scanner renaming its temp files): look again later
                self._tracker.observe(unit)
            return
        if unit not in self._tracker and self._reported.get(unit) == fp:
            return  # already reported, and nothing changed since
        prev = self._tracker.fingerprint(unit)
        # Grew, or first seen with a fresh mtime (a backlog found at start is not "being written").
        if prev != fp and (prev is not None or time.time() - fp.newest_mtime_ns / 1e9 < self.settle_seconds):
            now = time.monotonic()
            with self._state_lock:
                self._growing[unit] = (self._growing.get(unit, (now, now))[0], now)
        self._tracker.observe(unit, fp)
        if closed:
            self._tracker.hint_closed(unit)

    def _full_listing(self) -> None:
        try:
            units = discover_units(self.watch, self._patterns, links=self._links)
        except OSError as exc:
            self._folder_lost(exc)
            return
        present = set(units)
        for unit in units:
            self._observe(unit, safe_fingerprint(unit))
        orphans = orphan_markers(self.watch, self._marker, units)
        for marker in orphans:
            self._note_orphan(marker)
        self._orphans_logged &= set(orphans)  # bounded: only markers still lying there
        # Bounded memory: only units still in the folder need remembering.
        for unit in [u for u in self._reported if u not in present]:
            del self._reported[unit]
        self._next_rescan = time.monotonic() + self._rescan_seconds
        self._last_ok = time.monotonic()
        with self._state_lock:
            self._last_full_scan = time.time()

    def _report_ready(self) -> None:
        for unit in self._tracker.pending():
            # Gone while pending (moved away, deleted, the scanner gave up): nothing to wait for.
            if self._tracker.fingerprint(unit) is None and not os.path.lexists(unit.primary):
                self._tracker.forget(unit)
        for unit in self._tracker.ready_units():
            if self._stop.is_set():
                return
            fp = self._tracker.fingerprint(unit)
            self._tracker.forget(unit)
            if fp is None or self._reported.get(unit) == fp:
                continue
            self._reported[unit] = fp
            log.info("Scan ready: %s", unit)
            try:
                self._on_ready(unit)
            except Exception:
                log.exception(
                    "on_ready failed for %s; it will be offered again at the next full listing", unit
                )
                self._reported.pop(unit, None)

    def _note_orphan(self, marker: Path) -> None:
        if marker not in self._orphans_logged:
            self._orphans_logged.add(marker)
            log.warning(
                "Ignoring completion marker %s: there is no scan beside it (a marker is not a scan)", marker
            )

    # ---- health ----------------------------------------------------------------------------------

    def _set_error(self, message: str) -> None:
        with self._state_lock:
            self._last_error = message

    def _notify_health(self) -> None:
        if self._on_health_change is None:
            return
        health = self.health()
        key = (health.observer, health.alive, health.last_error, health.restarts)
        if key == self._last_notified:
            return
        self._last_notified = key
        try:
            self._on_health_change(replace(health))
        except Exception:
            log.exception("on_health_change callback failed")
