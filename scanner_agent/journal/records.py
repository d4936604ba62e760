"""The journal's tables: the SQLite schema, its version and migrations, and ``ScanRecord``, one row of
``scans`` as Python sees it.

The schema's version is SQLite's ``PRAGMA user_version``. Version 1 is the schema of the releases
before versions were recorded (their files say 0); each later version is one entry of
``MIGRATIONS``, applied in order, in one transaction, when a journal is opened. A journal written
by a newer scanner-agent (a version above ``SCHEMA_VERSION``) is refused, never altered.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner_agent.core.errors import ConfigError

log = logging.getLogger(__name__)

#: Version 1: the tables as the first releases created them (no version recorded).
SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    id          INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,
    identity    TEXT NOT NULL UNIQUE,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    state       TEXT NOT NULL,
    kind        TEXT,
    reason      TEXT,
    barcode     TEXT,
    dest        TEXT,
    sha256      TEXT,
    flow_run_id TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    first_seen  REAL NOT NULL,
    updated     REAL NOT NULL,
    ready_at    REAL,
    stored_at   REAL,
    held_since  REAL,
    next_check  REAL,
    source_removed INTEGER NOT NULL DEFAULT 0,
    details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS scans_state ON scans(state, next_check);
CREATE INDEX IF NOT EXISTS scans_barcode ON scans(barcode, state);
CREATE INDEX IF NOT EXISTS scans_path ON scans(path);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    scan_id INTEGER NOT NULL REFERENCES scans(id),
    at      REAL NOT NULL,
    state   TEXT NOT NULL,
    reason  TEXT
);
CREATE INDEX IF NOT EXISTS events_scan ON events(scan_id);
CREATE TABLE IF NOT EXISTS health (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rescans (
    barcode      TEXT PRIMARY KEY,
    requested_at REAL NOT NULL,
    requested_by TEXT NOT NULL,
    reason       TEXT,
    deadline     REAL NOT NULL,
    satisfied_at REAL,
    alerted_at   REAL
);
"""

#: Version N's statements, applied to a journal at version N-1. Append only: a released entry never changes.
MIGRATIONS: dict[int, str] = {
    # 2: the metrics endpoint asks for the last stored scan and the bytes stored on every scrape.
    2: "CREATE INDEX IF NOT EXISTS scans_stored ON scans(state, stored_at)",
}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(db: sqlite3.Connection, path: str | os.PathLike[str]) -> int:
    """Bring the journal open on ``db`` (autocommit) to ``SCHEMA_VERSION``; returns the version it had
    (0 for a new file). Raises ``ConfigError`` naming both versions for a journal from a newer release."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if 0 < found < SCHEMA_VERSION or (found == 0 and _has_scans(db)):
        # Before the write transaction: SQLite's backup cannot read a database its connection is writing.
        _backup(db, Path(path), found or 1)
    db.execute("BEGIN IMMEDIATE")  # two processes opening one new file: the second waits, then sees it done
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise ConfigError(
                f"journal {path} has schema version {found}, newer than this scanner-agent understands "
                f"(version {SCHEMA_VERSION}): it was written by a newer release. Run that release, or "
                "restore the journal's backup from before the upgrade; it is left unchanged."
            )
        exists = _has_scans(db)
        at = found if found else (1 if exists else 0)
        if at == SCHEMA_VERSION:
            db.execute("COMMIT")
            return at
        if at == 0:  # a new file: version 1's tables, then every migration, the path every journal takes
            _run(db, SCHEMA)
            at = 1
        for version in range(at + 1, SCHEMA_VERSION + 1):
            _run(db, MIGRATIONS[version])
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if exists:
        log.info("journal %s: schema upgraded from version %d to %d", path, found or 1, SCHEMA_VERSION)
    return found


def _has_scans(db: sqlite3.Connection) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='scans'").fetchone()
    return row is not None


def _run(db: sqlite3.Connection, script: str) -> None:
    # executescript would COMMIT the open transaction first; statements one by one stay inside it.
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


def _backup(db: sqlite3.Connection, path: Path, version: int) -> None:
    """Copy the journal as it is before a migration (``<journal>.v1.bak``), so a downgrade can go back."""
    bak = path.with_name(f"{path.name}.v{version}.bak")
    if bak.exists():
        return
    os.close(os.open(bak, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    out = sqlite3.connect(bak)
    try:
        db.backup(out)
    finally:
        out.close()


@dataclass
class ScanRecord:
    """One scan as the journal holds it; ``state`` is a ``core.states.ScanState`` value."""

    id: int
    path: str
    identity: str
    size: int
    mtime_ns: int
    state: str
    kind: str | None
    reason: str | None
    barcode: str | None
    dest: str | None
    sha256: str | None
    flow_run_id: str | None
    attempts: int
    first_seen: float
    updated: float
    ready_at: float | None
    stored_at: float | None
    held_since: float | None
    next_check: float | None
    source_removed: bool
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ScanRecord:
        d = dict(row)
        d["details"] = json.loads(d.get("details") or "{}")
        d["source_removed"] = bool(d["source_removed"])
        return cls(**d)


def identity_of(path: str, size: int, mtime_ns: int) -> str:
    """The key of one version of a scan: a rewritten file (new size or mtime) is a new scan."""
    return f"{path}|{size}|{mtime_ns}"
