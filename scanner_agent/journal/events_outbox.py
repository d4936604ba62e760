"""The Prefect events outbox: every scan outcome's event, kept until the Prefect server has taken it.

One table, ``prefect_events``, in the journal's SQLite file, created here if missing (like the alert
outbox and the sheet write-back queue, this module opens its own connection and touches nothing
else in the file, so a journal from an older release simply gains the table). An event is written
here, durably, before anyone tries to send it; the sender marks it sent only once the server
answered, so a dead server, a crash or a power cut loses nothing. Each row keeps the event's own
id (a uuid), so an event sent again after a crash is the same event to the server, which stores
it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanner_agent.journal.side_table import SideTable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prefect_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    event      TEXT NOT NULL,
    body       TEXT NOT NULL,
    created    REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent       REAL
);
CREATE INDEX IF NOT EXISTS prefect_events_unsent ON prefect_events (sent, seq);
"""

#: Sent rows are kept this long (what went out, for a person looking), then pruned.
KEEP_SENT_SECONDS = 7 * 86400


@dataclass(frozen=True)
class QueuedEvent:
    """One event waiting to go out: its order, its id, its name and its JSON."""

    seq: int
    event_id: str
    event: str
    body: str


class EventOutbox(SideTable):
    """SQLite-backed, ordered queue of Prefect events; safe to share between threads."""

    SCHEMA = _SCHEMA

    def __init__(self, db_path: Path | str, *, clock: Any = time.time) -> None:
        self._clock = clock
        super().__init__(db_path)

    def _prepare(self) -> None:
        # FULL: an event is "queued" only once it survives a power cut, like the scan row it reports.
        self._db.execute("PRAGMA synchronous=FULL")

    def put(self, event_id: str, event: str, body: str) -> None:
        """Queue one event (its id already chosen: the same id is never queued twice)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO prefect_events (event_id, event, body, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO NOTHING",
                (event_id, event, body, self._clock()),
            )

    def pending(self, limit: int = 100) -> list[QueuedEvent]:
        """The oldest unsent events, in the order they were queued."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, event, body FROM prefect_events WHERE sent IS NULL"
                " ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [QueuedEvent(int(s), i, e, b) for s, i, e, b in rows]

    def pending_count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM prefect_events WHERE sent IS NULL").fetchone()
        return int(row[0])

    def mark_sent(self, events: list[QueuedEvent]) -> None:
        """The server took these; prune what went out long ago."""
        now = self._clock()
        with self._lock:
            self._db.executemany(
                "UPDATE prefect_events SET sent = ?, last_error = NULL WHERE seq = ?",
                [(now, q.seq) for q in events],
            )
            self._db.execute("DELETE FROM prefect_events WHERE sent < ?", (now - KEEP_SENT_SECONDS,))

    def failed(self, events: list[QueuedEvent], error: str) -> None:
        """A send of these failed; count it (``status`` shows the backlog and why)."""
        with self._lock:
            self._db.executemany(
                "UPDATE prefect_events SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [(error[:500], q.seq) for q in events],
            )

    def summary(self) -> dict[str, Any] | None:
        """``{"events", "oldest", "attempts", "last_error"}`` of the unsent backlog, or None when empty."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), MIN(created), MAX(attempts) FROM prefect_events WHERE sent IS NULL"
            ).fetchone()
            err = self._db.execute(
                "SELECT last_error FROM prefect_events WHERE sent IS NULL AND last_error IS NOT NULL"
                " ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        if not row or not row[0]:
            return None
        return {
            "events": int(row[0]),
            "oldest": float(row[1]),
            "attempts": int(row[2] or 0),
            "last_error": err[0] if err else None,
        }
