"""One agent per journal: the exclusive lock that ``run`` and ``process`` hold while they work."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    """Another scanner-agent holds this journal's lock (the CLI exits 2, naming the lock)."""


class JournalLock:
    """An exclusive flock on ``<journal>.lock``, held for the process's life; the file holds its pid."""

    def __init__(self, journal_path: Path) -> None:
        self.path = journal_path.with_suffix(journal_path.suffix + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another scanner-agent is using the journal {self.path.with_suffix('')} "
                f"(lock {self.path} is held)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
