"""The sheet write-back backlog: status cells waiting to be written to the Google Sheet.

One table, ``sheet_writeback``, in the journal's SQLite file, created here if missing (like the alert
outbox and the fixity log, this module opens its own connection and touches nothing else in the file).
One row per (barcode, role): a newer outcome replaces the value waiting for that cell, so the latest
wins and the backlog never holds more than a few cells per barcode. ``version`` grows with each
replacement, so a flush only clears the values it actually wrote. It survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scanner_agent.core.sheet_cells import Cell
from scanner_agent.journal.side_table import SideTable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sheet_writeback (
    barcode    TEXT NOT NULL,
    role       TEXT NOT NULL,
    value      TEXT NOT NULL,
    queued     REAL NOT NULL,
    version    INTEGER NOT NULL DEFAULT 1,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (barcode, role)
);
"""


@dataclass(frozen=True)
class QueuedCell:
    """One waiting cell and the version of it that was read (cleared only if still that version)."""

    cell: Cell
    version: int
    queued: float


class WritebackQueue(SideTable):
    """SQLite-backed queue of sheet cells; safe to share between threads."""

    SCHEMA = _SCHEMA

    def put(self, cells: list[Cell], at: float) -> None:
        """Queue ``cells``, each replacing any value still waiting for the same barcode and role."""
        with self._lock:
            self._db.executemany(
                "INSERT INTO sheet_writeback (barcode, role, value, queued) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (barcode, role) DO UPDATE SET value = excluded.value,"
                " queued = excluded.queued, version = version + 1, attempts = 0, last_error = NULL",
                [(c.barcode, c.role, c.value, at) for c in cells],
            )

    def pending(self) -> list[QueuedCell]:
        with self._lock:
            rows = self._db.execute(
                "SELECT barcode, role, value, version, queued FROM sheet_writeback ORDER BY queued, rowid"
            ).fetchall()
        return [QueuedCell(Cell(b, r, v), int(ver), float(q)) for b, r, v, ver, q in rows]

    def has_pending(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM sheet_writeback LIMIT 1").fetchone() is not None

    def remove(self, done: list[QueuedCell]) -> None:
        """Clear written (or dropped) cells, unless a newer value for the same cell arrived meanwhile."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM sheet_writeback WHERE barcode = ? AND role = ? AND version = ?",
                [(q.cell.barcode, q.cell.role, q.version) for q in done],
            )

    def failed(self, error: str) -> None:
        """Record a failed flush against every waiting cell (for ``status``)."""
        with self._lock:
            self._db.execute("UPDATE sheet_writeback SET attempts = attempts + 1, last_error = ?", (error,))

    def summary(self) -> dict[str, Any] | None:
        """``{"cells", "oldest", "attempts", "last_error"}`` of the backlog, or None when it is empty."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), MIN(queued), MAX(attempts) FROM sheet_writeback"
            ).fetchone()
            err = self._db.execute(
                "SELECT last_error FROM sheet_writeback WHERE last_error IS NOT NULL ORDER BY queued LIMIT 1"
            ).fetchone()
        if not row or not row[0]:
            return None
        return {
            "cells": int(row[0]),
            "oldest": float(row[1]),
            "attempts": int(row[2] or 0),
            "last_error": err[0] if err else None,
        }
