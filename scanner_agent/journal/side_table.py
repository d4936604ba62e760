"""``SideTable``: tables kept in the journal's SQLite file beside the scans, each with its own connection.

The alert outbox, the fixity log, the sheet write-back queue and the Prefect events outbox each
keep their rows in the journal's file (one file to back up, one to move) but open it themselves:
autocommit, so no statement holds the shared file's lock between calls, and one lock per object,
so it is safe to share between threads. Tables are created with ``IF NOT EXISTS``, so a journal
from an older release gains them on first use with its rows intact.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import ClassVar


class SideTable:
    """An SQLite connection to the journal's file that owns ``SCHEMA``'s tables; thread-safe."""

    #: The ``CREATE TABLE IF NOT EXISTS ...`` script for this object's tables.
    SCHEMA: ClassVar[str] = ""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        self._lock = threading.Lock()
        # autocommit (isolation_level=None): every statement is its own small transaction.
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30, isolation_level=None)
        with self._lock:
            self._prepare()
            self._db.executescript(self.SCHEMA)

    def _prepare(self) -> None:
        """Pragmas a table set needs before its tables are made (``synchronous``, WAL)."""

    def close(self) -> None:
        with self._lock:
            self._db.close()
