"""The watchdog side of watching: start an observer of the chosen kind, and tell whether it still runs.

Events are only hints ("look at this path") handed to a sink; the watcher decides what they mean.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_MODIFIED,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

# Opened/closed-without-writing events are left out: our own reads (DICOM magic, Slidedat.ini)
# and the copy that follows a report would otherwise come back to us as "changes".
_EVENT_FILTER = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class HintHandler(FileSystemEventHandler):
    """Collects event paths for the tick thread; never blocks the observer on disk I/O.

    ``on_write`` (if given) hears at once of every file created or written to, before the tick
    thread has looked at it: the first sign that a scan is being written."""

    def __init__(
        self, sink: Callable[[str, bool], None], on_write: Callable[[str], None] | None = None
    ) -> None:
        self._sink = sink
        self._on_write = on_write

    def on_any_event(self, event: FileSystemEvent) -> None:
        closed = event.event_type == EVENT_TYPE_CLOSED
        if (
            self._on_write is not None
            and not event.is_directory
            and event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED)
        ):
            self._on_write(os.fsdecode(event.src_path))
        for raw in (event.src_path, event.dest_path):
            if raw:
                self._sink(os.fsdecode(raw), closed)


def launch_observer(
    kind: str, handler: FileSystemEventHandler, folder: Path, poll_interval: float
) -> BaseObserver:
    """A started ``"polling"`` or native (``"inotify"``) observer sending ``folder``'s events to ``handler``.

    Raises ``OSError`` when it cannot start (e.g. inotify watches exhausted), with nothing left running.
    """
    observer: BaseObserver = PollingObserver(timeout=poll_interval) if kind == "polling" else Observer()
    observer.schedule(handler, str(folder), recursive=True, event_filter=_EVENT_FILTER)
    try:
        observer.start()
    except BaseException:
        observer.stop()
        raise
    return observer


def observer_alive(observer: BaseObserver | None) -> bool:
    """The observer and every one of its emitter threads are running."""
    if observer is None or not observer.is_alive():
        return False
    for emitter in list(observer.emitters):
        if not emitter.is_alive():
            return False
        # The inotify emitter reads from a buffer thread (watchdog internal) that ends on
        # its own when the watched folder is deleted or unmounted, leaving the emitter
        # waiting forever; look at it too.
        buffer = getattr(emitter, "_inotify", None)
        if isinstance(buffer, threading.Thread) and not buffer.is_alive():
            return False
    return True
