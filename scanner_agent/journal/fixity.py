"""The fixity record: when each stored file was last re-hashed and what was found, and each pass.

Two tables prefixed ``fixity_`` in the journal's SQLite file, created here if missing (like the
alert outbox, this module opens its own connection and touches nothing else in the file):
``fixity_file`` (one row per stored file: last check, outcome, expected and found sha256) and
``fixity_run`` (one row per verification pass, background or ``scanner-agent verify``, for
``status``).
"""

from __future__ import annotations

import json
from typing import Any

from scanner_agent.journal.side_table import SideTable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fixity_file (
    path     TEXT PRIMARY KEY,
    outcome  TEXT NOT NULL,
    expected TEXT,
    found    TEXT,
    detail   TEXT,
    checked  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fixity_run (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    started    REAL NOT NULL,
    finished   REAL,
    by         TEXT NOT NULL,
    files      INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL DEFAULT 0,
    verified   INTEGER NOT NULL DEFAULT 0,
    problems   INTEGER NOT NULL DEFAULT 0,
    share_gone TEXT,
    summary    TEXT
);
"""

#: At most this many problems are kept with a pass (the per-file rows keep every one).
_SUMMARY_PROBLEMS = 50


class FixityLog(SideTable):
    """SQLite-backed per-file fixity state and pass history. Safe to share between threads."""

    SCHEMA = _SCHEMA

    def last_checked(self) -> dict[str, tuple[float, str]]:
        """path -> (when last checked, outcome), for every file ever checked."""
        with self._lock:
            rows = self._db.execute("SELECT path, checked, outcome FROM fixity_file").fetchall()
        return {str(p): (float(c), str(o)) for p, c, o in rows}

    def outcome(self, path: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT outcome FROM fixity_file WHERE path = ?", (path,)).fetchone()
        return None if row is None else str(row[0])

    def record(
        self, path: str, outcome: str, expected: str | None, found: str | None, detail: str, at: float
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO fixity_file (path, outcome, expected, found, detail, checked)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET outcome = excluded.outcome,"
                " expected = excluded.expected, found = excluded.found, detail = excluded.detail,"
                " checked = excluded.checked",
                (path, outcome, expected, found, detail, at),
            )

    def start_run(self, by: str, at: float) -> int:
        with self._lock:
            cur = self._db.execute("INSERT INTO fixity_run (started, by) VALUES (?, ?)", (at, by))
            return int(cur.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        at: float,
        *,
        files: int,
        nbytes: int,
        verified: int,
        problems: list[dict[str, Any]],
        share_gone: str | None,
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE fixity_run SET finished = ?, files = ?, bytes = ?, verified = ?, problems = ?,"
                " share_gone = ?, summary = ? WHERE id = ?",
                (
                    at,
                    files,
                    nbytes,
                    verified,
                    len(problems),
                    share_gone,
                    json.dumps(problems[:_SUMMARY_PROBLEMS], default=str),
                    run_id,
                ),
            )

    def last_run(self) -> dict[str, Any] | None:
        """The most recent finished pass, for ``status``: when, by whom, counts and its first problems."""
        with self._lock:
            row = self._db.execute(
                "SELECT started, finished, by, files, bytes, verified, problems, share_gone, summary"
                " FROM fixity_run WHERE finished IS NOT NULL ORDER BY finished DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        cols = ("started", "finished", "by", "files", "bytes", "verified", "problems", "share_gone")
        out: dict[str, Any] = dict(zip(cols, row[:8], strict=True))
        try:
            out["first_problems"] = json.loads(row[8] or "[]")
        except ValueError:
            out["first_problems"] = []
        return out
