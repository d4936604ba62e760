"""Remember which alerts were sent where, and keep the ones a channel failed to deliver.

Tables prefixed ``alert_`` so they can live in the journal's SQLite file next to its own tables:
``alert_sent`` (last time a key went to a channel: the dedupe record, surviving a restart),
``alert_pending`` (alerts waiting for a channel to come back), ``alert_ref`` (where each problem's
message landed on each channel, so its recovery can update or answer it, even after a restart) and
``alert_digest`` (the day each scanner's daily digest last went out). This module opens its own
connection and touches nothing else in the file.

Upgrades only ever add tables here (``CREATE TABLE IF NOT EXISTS``, run on every open), so an
outbox from an older release gains the new ones with its rows intact; a problem alert sent before
``alert_ref`` existed simply has no reference, and its recovery is a new message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time

from scanner_agent.core.alerts import Alert
from scanner_agent.journal.side_table import SideTable

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_sent (
    key     TEXT NOT NULL,
    channel TEXT NOT NULL,
    at      REAL NOT NULL,
    PRIMARY KEY (key, channel)
);
CREATE TABLE IF NOT EXISTS alert_pending (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel    TEXT NOT NULL,
    key        TEXT NOT NULL,
    alert_json TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 1,
    last_error TEXT,
    created    REAL NOT NULL,
    next_try   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_pending_next_try ON alert_pending (channel, next_try);
CREATE INDEX IF NOT EXISTS alert_pending_key ON alert_pending (key, channel);
CREATE TABLE IF NOT EXISTS alert_ref (
    key        TEXT NOT NULL,
    channel    TEXT NOT NULL,
    ref        TEXT NOT NULL,
    alert_json TEXT,
    at         REAL NOT NULL,
    PRIMARY KEY (key, channel)
);
CREATE TABLE IF NOT EXISTS alert_digest (
    scanner TEXT PRIMARY KEY,
    day     TEXT NOT NULL,
    at      REAL NOT NULL
);
"""


class AlertOutbox(SideTable):
    """SQLite-backed dedupe record and retry queue for alerts. Safe to share between threads."""

    SCHEMA = _SCHEMA

    def _prepare(self) -> None:
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:  # another connection is mid-transaction; it sets WAL itself
            log.debug("Could not switch %s to WAL now: %s", self.db_path, exc)
            return
        if str(mode).lower() != "wal":
            log.warning(
                "%s is in %s mode, not WAL; alerts still work but may wait on the journal", self.db_path, mode
            )

    # -- sent records

    def last_sent(self, key: str, channel: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT at FROM alert_sent WHERE key = ? AND channel = ?", (key, channel)
            ).fetchone()
        return None if row is None else float(row[0])

    def record_sent(self, key: str, channel: str, at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO alert_sent (key, channel, at) VALUES (?, ?, ?) "
                "ON CONFLICT (key, channel) DO UPDATE SET at = excluded.at",
                (key, channel, at),
            )

    # -- where each problem's message landed (for its recovery)

    def record_ref(self, key: str, channel: str, ref: dict[str, str], alert: Alert, at: float) -> None:
        """Remember where the problem ``key`` landed on ``channel`` (the latest occurrence wins).
        The alert is kept without its pictures: only its words are needed to close it."""
        words = dataclasses.replace(alert, thumbnail_png=None, label_png=None).to_json()
        with self._lock:
            self._db.execute(
                "INSERT INTO alert_ref (key, channel, ref, alert_json, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key, channel) DO UPDATE SET ref = excluded.ref, "
                "alert_json = excluded.alert_json, at = excluded.at",
                (key, channel, json.dumps(ref, sort_keys=True), words, at),
            )

    def ref_for(self, key: str, channel: str) -> tuple[dict[str, str], Alert | None] | None:
        """Where problem ``key`` landed on ``channel`` and what it said; None if not known."""
        with self._lock:
            row = self._db.execute(
                "SELECT ref, alert_json FROM alert_ref WHERE key = ? AND channel = ?", (key, channel)
            ).fetchone()
        if row is None:
            return None
        try:
            ref = json.loads(row[0])
        except ValueError:
            log.error(
                "alert_ref row for %s on %s cannot be read; the recovery is a new message", key, channel
            )
            return None
        if not isinstance(ref, dict):
            return None
        try:
            original = Alert.from_json(row[1]) if row[1] else None
        except (ValueError, TypeError, KeyError):
            original = None  # the reference alone still lets the channel answer it
        return {str(k): str(v) for k, v in ref.items()}, original

    def forget_ref(self, key: str, channel: str) -> None:
        """The problem ``key`` was closed on ``channel``: its reference is no longer needed (this
        keeps ``alert_ref`` to the problems still open)."""
        with self._lock:
            self._db.execute("DELETE FROM alert_ref WHERE key = ? AND channel = ?", (key, channel))

    # -- daily digest

    def last_digest(self, scanner: str) -> str | None:
        """The (local) day, ``YYYY-MM-DD``, the scanner's digest last went out."""
        with self._lock:
            row = self._db.execute("SELECT day FROM alert_digest WHERE scanner = ?", (scanner,)).fetchone()
        return None if row is None else str(row[0])

    def record_digest(self, scanner: str, day: str, at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO alert_digest (scanner, day, at) VALUES (?, ?, ?) "
                "ON CONFLICT (scanner) DO UPDATE SET day = excluded.day, at = excluded.at",
                (scanner, day, at),
            )

    # -- pending queue

    def enqueue(
        self,
        alert: Alert,
        channel: str,
        error: str,
        *,
        now: float | None = None,
        next_try: float | None = None,
    ) -> int:
        """Keep ``alert`` for ``channel``; returns its id. ``next_try`` defaults to now (due at once)."""
        created = time.time() if now is None else now
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO alert_pending"
                " (channel, key, alert_json, attempts, last_error, created, next_try)"
                " VALUES (?, ?, ?, 1, ?, ?, ?)",
                (
                    channel,
                    alert.key(),
                    alert.to_json(),
                    error,
                    created,
                    created if next_try is None else next_try,
                ),
            )
            return int(cur.lastrowid or 0)

    def due(self, now: float) -> list[tuple[int, str, Alert]]:
        """Queued alerts whose retry time has come, oldest first."""
        return [(item_id, channel, alert) for item_id, channel, alert, _ in self.due_with_created(now)]

    def due_with_created(self, now: float) -> list[tuple[int, str, Alert, float]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, channel, alert_json, created FROM alert_pending WHERE next_try <= ? ORDER BY id",
                (now,),
            ).fetchall()
        out: list[tuple[int, str, Alert, float]] = []
        for item_id, channel, text, created in rows:
            try:
                out.append((int(item_id), str(channel), Alert.from_json(text), float(created)))
            except (ValueError, TypeError, KeyError) as exc:  # a damaged row must not block the rest
                log.error("alert_pending row %s cannot be read (%s); skipped", item_id, exc)
        return out

    def delivered(self, item_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM alert_pending WHERE id = ?", (item_id,))

    def failed_again(self, item_id: int, error: str, next_try: float, *, count: bool = True) -> None:
        """Record another failed try (``count=False``: postponed without being tried)."""
        with self._lock:
            self._db.execute(
                "UPDATE alert_pending SET attempts = attempts + ?, last_error = ?, next_try = ? WHERE id = ?",
                (1 if count else 0, error, next_try, item_id),
            )

    def attempts(self, item_id: int) -> int:
        with self._lock:
            row = self._db.execute("SELECT attempts FROM alert_pending WHERE id = ?", (item_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def pending_id(self, key: str, channel: str) -> int | None:
        """The id of a queued alert with this key for this channel, if one is waiting."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM alert_pending WHERE key = ? AND channel = ? LIMIT 1", (key, channel)
            ).fetchone()
        return None if row is None else int(row[0])

    def next_try_for(self, channel: str) -> float | None:
        """The earliest retry time of anything queued for ``channel`` (None: nothing queued)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_try) FROM alert_pending WHERE channel = ?", (channel,)
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def pending_count(self, channel: str | None = None) -> int:
        with self._lock:
            if channel is None:
                row = self._db.execute("SELECT COUNT(*) FROM alert_pending").fetchone()
            else:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM alert_pending WHERE channel = ?", (channel,)
                ).fetchone()
        return int(row[0])

    def pending_summary(self) -> list[dict[str, object]]:
        """What is waiting, for ``scanner-agent status``: channel, key, attempts, last error, times."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, channel, key, attempts, last_error, created, next_try"
                " FROM alert_pending ORDER BY id"
            ).fetchall()
        cols = ("id", "channel", "key", "attempts", "last_error", "created", "next_try")
        return [dict(zip(cols, row, strict=True)) for row in rows]
