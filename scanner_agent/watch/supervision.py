"""Keep an observer running on the watch folder: the supervision half of ``ScanWatcher``.

Each tick the watcher (``watcher.py``) asks ``_supervise`` whether it can look at the folder. It
stats the folder and starts the observer (inotify, or polling on a network share), restarts it
when its thread died or a share was mounted over the folder, falls back to polling when inotify
runs out of watches, and when the folder is missing or unreadable stops the observer, voids the
settle progress and reports it in the health until the folder is back.

A mixin rather than an object of its own: these methods run on the watcher's one thread and move
the watcher's own state (observer, health fields under ``_state_lock``, the settle tracker), which
the attributes declared below name.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path

from watchdog.observers.api import BaseObserver

from scanner_agent.watch.completeness import CompletenessTracker
from scanner_agent.watch.mountinfo import choose_observer
from scanner_agent.watch.observers import HintHandler, launch_observer, observer_alive

#: The watcher's logger: these lines were always the watcher's, and journald filters on the name.
log = logging.getLogger("scanner_agent.watch.watcher")


class ObserverSupervision:
    """Starts, restarts and stops ``ScanWatcher``'s observer; notices the folder going away."""

    # Set by ScanWatcher.__init__.
    watch: Path
    _observer_setting: str
    _poll_interval: float
    _handler: HintHandler
    _observer: BaseObserver | None
    _observer_dev: int | None
    _marker: str
    _tracker: CompletenessTracker
    _next_rescan: float
    _state_lock: threading.Lock
    _kind: str
    _alive: bool
    _folder_missing: bool
    _watching_since: float | None
    _last_error: str | None
    _restarts: int
    _last_ok: float

    def _supervise(self, now: float) -> bool:
        """Check the folder and the observer; (re)start the observer when needed."""
        try:
            st = os.stat(self.watch)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        except OSError as exc:
            self._folder_lost(exc)
            return False
        self._last_ok = now
        if self._observer is None:
            return self._start_observer(st.st_dev, reason=None)
        if not observer_alive(self._observer):
            return self._start_observer(st.st_dev, reason="the observer thread stopped")
        if st.st_dev != self._observer_dev:
            # A share mounted or unmounted over the folder: the old watch sees the old filesystem.
            return self._start_observer(st.st_dev, reason="the filesystem under the folder changed")
        return True

    def _folder_lost(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        message = (
            f"Watch folder {self.watch} is missing or unreadable ({reason}); "
            "the share may be unmounted. Retrying until it is back."
        )
        if not self._folder_missing:
            log.error(message)
        self._folder_missing = True
        self._stop_observer(1.0)
        # settle progress is void
        self._tracker = CompletenessTracker(self._tracker.settle_seconds, completion_marker=self._marker)
        self._next_rescan = 0.0
        with self._state_lock:
            self._alive = False
            self._last_error = message

    def _start_observer(self, dev: int, reason: str | None) -> bool:
        restarting = self._watching_since is not None  # it was watching before
        self._stop_observer(1.0)
        kind = choose_observer(self.watch, self._observer_setting)
        try:
            try:
                observer = launch_observer(kind, self._handler, self.watch, self._poll_interval)
            except OSError as exc:
                if kind != "inotify" or exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                log.warning(
                    "inotify cannot watch %s (%s); falling back to polling every %.1fs. "
                    "Raise fs.inotify.max_user_watches to use inotify.",
                    self.watch,
                    exc.strerror or exc,
                    self._poll_interval,
                )
                kind = "polling"
                observer = launch_observer(kind, self._handler, self.watch, self._poll_interval)
        except OSError as exc:
            message = f"Cannot watch {self.watch} with {kind}: {exc.strerror or exc}. Retrying."
            if message != self._last_error:
                log.error(message)
            with self._state_lock:
                self._alive = False
                self._last_error = message
            return False
        self._observer, self._observer_dev = observer, dev
        if self._folder_missing:
            log.info("Watch folder %s is back; watching again", self.watch)
        elif reason is not None:
            log.warning("Restarted the %s observer on %s: %s", kind, self.watch, reason)
        self._folder_missing = False
        with self._state_lock:
            self._kind = kind
            self._alive = True
            self._watching_since = time.time()
            if restarting:
                self._restarts += 1
            if reason is not None:
                self._last_error = f"{reason} on {self.watch}; restarted it"
        self._next_rescan = 0.0  # catch up on whatever happened while nothing was watching
        return True

    def _stop_observer(self, timeout: float) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout)
        except Exception:  # a half-dead observer must not stop us replacing it
            log.debug("Stopping the old observer on %s failed", self.watch, exc_info=True)
