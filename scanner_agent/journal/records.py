"""The journal's tables: the SQLite schema, and ``ScanRecord``, one row of ``scans`` as Python sees it."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

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
