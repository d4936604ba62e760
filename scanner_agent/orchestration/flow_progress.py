"""A Prefect progress artifact on Move Image for a big scan, so the UI shows how far its copy got.

The copy engine is left alone: while the move runs, a small ticker thread reads how many bytes
have reached the scan's staging name ``<dest>/.incoming/<name>.partial`` (a file, or a folder for
multi-file scans) and updates the task's progress artifact every few seconds; 100 % once stored.
Scans under ``PROGRESS_ARTIFACT_MIN_BYTES`` copy in seconds and get none (it would only cost API calls).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from scanner_agent.scanunit import ScanUnit
from scanner_agent.storage import PARTIAL_SUFFIX

log = logging.getLogger(__name__)

#: Scans at least this big (bytes) get a progress artifact on their move.
PROGRESS_ARTIFACT_MIN_BYTES = 1_000_000_000
#: How often the artifact is updated while the copy runs.
TICK_SECONDS = 3.0
#: ``place_scan``'s staging folder beside the destination.
INCOMING_DIRNAME = ".incoming"

R = TypeVar("R")


def staged_bytes(partial: Path) -> int:
    """Bytes written so far to a staging file or folder; 0 while it is not there (or vanishes)."""
    try:
        if partial.is_dir():
            return sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
        return partial.stat().st_size
    except OSError:  # renamed into place, or cleaned up, between the listing and the stat
        return 0


class CopyTicker:
    """Creates the progress artifact, then updates it from ``staged_bytes`` until stopped."""

    def __init__(self, partial: Path, total: int, name: str, tick_seconds: float = TICK_SECONDS) -> None:
        self.partial = partial
        self.total = max(total, 1)
        self.name = name
        self.tick_seconds = tick_seconds
        self.stop = threading.Event()
        self.artifact_id: Any = None
        self.updates = 0
        # The task's context (its run, its client settings) goes with the thread: the artifact then
        # belongs to the Move Image task run and its flow run.
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._context.run, args=(self._tick,), daemon=True)

    def percent(self) -> float:
        return min(99.0, 100.0 * staged_bytes(self.partial) / self.total)  # 100 only once stored

    def _description(self, progress: float) -> str:
        return f"Copying {self.name}: {progress:.0f} % of {self.total / 1e9:.2f} GB"

    def _tick(self) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            self.artifact_id = create_progress_artifact(0.0, description=self._description(0.0))
            while not self.stop.wait(self.tick_seconds):
                p = self.percent()
                update_progress_artifact(self.artifact_id, p, description=self._description(p))
                self.updates += 1
        except Exception:  # the copy matters, its progress bar does not
            log.debug("progress artifact for %s not updated", self.name, exc_info=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, stored: bool) -> None:
        self.stop.set()
        self._thread.join()
        if not stored or self.artifact_id is None:
            return

        def done() -> None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, 100.0, description=f"Stored {self.name}")

        try:
            finisher = threading.Thread(target=self._context.run, args=(done,), daemon=True)
            finisher.start()
            finisher.join()
        except Exception:
            log.debug("progress artifact for %s not finished", self.name, exc_info=True)


@contextmanager
def copy_progress(dest: Path, total: int) -> Iterator[CopyTicker | None]:
    """A ticker for the copy of ``total`` bytes to ``dest``, or None for a scan under the threshold."""
    if total < PROGRESS_ARTIFACT_MIN_BYTES:
        yield None
        return
    ticker = CopyTicker(dest.parent / INCOMING_DIRNAME / (dest.name + PARTIAL_SUFFIX), total, dest.name)
    ticker.start()
    stored = False
    try:
        yield ticker
        stored = True
    finally:
        ticker.finish(stored)


def with_copy_progress(move: Callable[..., R]) -> Callable[..., R]:
    """``move`` (the Move Image step) with a progress artifact for a big scan; same signature."""

    @functools.wraps(move)
    def moving(svc: Any, unit: ScanUnit, dest: Path, *args: Any, **kwargs: Any) -> R:
        judged = kwargs.get("judged", args[3] if len(args) > 3 else None)
        try:
            total = judged[0] if judged is not None else unit.fingerprint().total_size
        except OSError:
            total = 0  # vanished: the move says so
        with copy_progress(Path(dest), total):
            return move(svc, unit, dest, *args, **kwargs)

    return moving
