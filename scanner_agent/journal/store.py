"""The journal: a local SQLite record of every scan and its state, the agent's source of truth.

One row per scan identity (path + size + mtime when it was judged complete). Its states and the
moves allowed between them are ``core.states``; ``transition`` refuses any other move.

Every transition is one transaction and is also appended to ``events`` so ``status`` can say
what happened and when. After a crash, ``processing`` rows go back to ``ready`` (resumed, never
duplicated: the transfer itself is idempotent on an identical destination). Prefect is the window
onto this record, not the record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from scanner_agent.core.crashloop import DEATHS_KEY, resets_count
from scanner_agent.core.states import ACTIVE, ScanState, can_move
from scanner_agent.journal.records import ScanRecord, identity_of, migrate

#: Unfinished states a newer version of the same file replaces (``record_ready``); a scan being
#: processed is left to finish (its copy checks the source and fails on its own).
_SUPERSEDABLE = tuple(sorted(ACTIVE - {ScanState.PROCESSING}))


class Journal:
    """Thread-safe access to the journal file. Every public method is one transaction."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        if created:  # 0600 before SQLite opens it: its -wal and -shm files copy the database file's mode
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:  # another process (status, retry) created it first
                created = False
        self._lock = threading.RLock()
        self._clock = clock
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        try:
            migrate(self._db, self.path)  # a journal from a newer release: ConfigError, before anything
            # (even the WAL switch) touches the file
        except BaseException:
            self._db.close()
            raise
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "PRAGMA synchronous=FULL"
        )  # the journal is the record: a stored row must survive power loss
        self._db.execute("PRAGMA foreign_keys=ON")
        if created:
            os.chmod(self.path, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- low level -------------------------------------------------------------------------

    def _tx(self) -> _Tx:
        return _Tx(self)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> ScanRecord | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return ScanRecord.from_row(row) if row else None

    def _many(self, sql: str, args: tuple[Any, ...] = ()) -> list[ScanRecord]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [ScanRecord.from_row(r) for r in rows]

    # --- recording scans -------------------------------------------------------------------

    def record_ready(
        self, path: str, size: int, mtime_ns: int, *, details: dict[str, Any] | None = None
    ) -> tuple[ScanRecord, bool]:
        """Record a scan judged complete. Returns (record, new). A known identity is returned as is:
        a scan already stored, held, or in progress is never queued twice."""
        ident = identity_of(path, size, mtime_ns)
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM scans WHERE identity=?", (ident,)).fetchone()
            if row is not None:
                return ScanRecord.from_row(row), False
            cur = db.execute(
                "INSERT INTO scans(path, identity, size, mtime_ns, state, first_seen, updated, ready_at,"
                " details) VALUES (?,?,?,?,?,?,?,?,?)",
                (path, ident, size, mtime_ns, ScanState.READY, now, now, now, json.dumps(details or {})),
            )
            sid = cur.lastrowid
            db.execute(
                "INSERT INTO events(scan_id, at, state, reason) VALUES (?,?,?,?)",
                (sid, now, ScanState.READY, "scan complete"),
            )
            # A newer identity at the same path supersedes older unfinished rows for that path
            # (the scanner rewrote the file before we got to it): they will never be processed.
            db.execute(
                "UPDATE scans SET state=?, kind='source_changed', reason=?, updated=?, next_check=NULL"
                f" WHERE path=? AND id<>? AND state IN ({_marks(_SUPERSEDABLE)})",
                (
                    ScanState.FAILED,
                    f"replaced by a newer version of the same file (scan id {sid})",
                    now,
                    path,
                    sid,
                    *_SUPERSEDABLE,
                ),
            )
            row = db.execute("SELECT * FROM scans WHERE id=?", (sid,)).fetchone()
        return ScanRecord.from_row(row), True

    def get(self, scan_id: int) -> ScanRecord | None:
        return self._one("SELECT * FROM scans WHERE id=?", (scan_id,))

    def by_identity(self, path: str, size: int, mtime_ns: int) -> ScanRecord | None:
        return self._one("SELECT * FROM scans WHERE identity=?", (identity_of(path, size, mtime_ns),))

    def latest_for_path(self, path: str) -> ScanRecord | None:
        return self._one("SELECT * FROM scans WHERE path=? ORDER BY id DESC LIMIT 1", (path,))

    def by_flow_run(self, flow_run_id: str) -> ScanRecord | None:
        return self._one("SELECT * FROM scans WHERE flow_run_id=? ORDER BY id DESC LIMIT 1", (flow_run_id,))

    def transition(
        self,
        scan_id: int,
        state: str,
        *,
        reason: str | None = None,
        kind: str | None = None,
        expect: tuple[str, ...] | None = None,
        next_check: float | None = None,
        **fields: Any,
    ) -> ScanRecord:
        """Move a scan to ``state`` in one transaction, recording why. ``expect`` guards against
        races: the transition only happens from one of those states (else ValueError). A move that
        ``core.states`` does not allow is refused too (ValueError naming the scan and both states)."""
        if state not in set(ScanState):
            raise ValueError(f"unknown state {state!r}")
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM scans WHERE id=?", (scan_id,)).fetchone()
            if row is None:
                raise KeyError(f"no scan with id {scan_id}")
            if expect is not None and row["state"] not in expect:
                raise ValueError(f"scan {scan_id} is {row['state']}, not {'/'.join(expect)}")
            if not can_move(row["state"], state):
                raise ValueError(f"scan {scan_id} ({row['path']}) cannot move from {row['state']} to {state}")
            sets: dict[str, Any] = {
                "state": state,
                "updated": now,
                "reason": reason,
                "kind": kind,
                "next_check": next_check,
            }
            if state == ScanState.HELD and row["held_since"] is None:
                sets["held_since"] = now
            if state == ScanState.STORED:
                sets["stored_at"] = now
            if state == ScanState.PROCESSING:
                sets["attempts"] = row["attempts"] + 1
            merged = json.loads(row["details"] or "{}")
            changed = "details" in fields
            merged.update(fields.pop("details", None) or {})
            if merged.get(DEATHS_KEY) and resets_count(state):  # at rest: the deaths are no longer in a row
                merged[DEATHS_KEY] = 0
                changed = True
            if changed:
                sets["details"] = json.dumps(merged, default=str)
            sets.update(fields)
            cols = ", ".join(f"{k}=?" for k in sets)
            db.execute(f"UPDATE scans SET {cols} WHERE id=?", (*sets.values(), scan_id))
            db.execute(
                "INSERT INTO events(scan_id, at, state, reason) VALUES (?,?,?,?)",
                (scan_id, now, state, reason),
            )
            row = db.execute("SELECT * FROM scans WHERE id=?", (scan_id,)).fetchone()
        return ScanRecord.from_row(row)

    def update(self, scan_id: int, **fields: Any) -> None:
        """Set fields without changing state (flow run id, barcode, details)."""
        if not fields:
            return
        with self._tx() as db:
            if "details" in fields:
                row = db.execute("SELECT details FROM scans WHERE id=?", (scan_id,)).fetchone()
                merged = json.loads(row["details"] or "{}") if row else {}
                merged.update(fields["details"] or {})
                fields["details"] = json.dumps(merged, default=str)
            cols = ", ".join(f"{k}=?" for k in fields)
            db.execute(
                f"UPDATE scans SET {cols}, updated=? WHERE id=?", (*fields.values(), self._clock(), scan_id)
            )

    # --- queries used by the dispatcher --------------------------------------------------

    def ready(self, limit: int = 1000) -> list[ScanRecord]:
        return self._many(
            "SELECT * FROM scans WHERE state=? ORDER BY ready_at, id LIMIT ?", (ScanState.READY, limit)
        )

    def due(self, now: float | None = None) -> list[ScanRecord]:
        """Held and transiently failed scans whose re-check time has come."""
        now = self._clock() if now is None else now
        return self._many(
            "SELECT * FROM scans WHERE state IN (?,?) AND next_check IS NOT NULL"
            " AND next_check<=? ORDER BY next_check, id",
            (ScanState.HELD, ScanState.FAILED, now),
        )

    def in_state(self, *states: str) -> list[ScanRecord]:
        return self._many(f"SELECT * FROM scans WHERE state IN ({_marks(states)}) ORDER BY id", states)

    def stored_for_barcode(self, barcode: str) -> list[ScanRecord]:
        return self._many(
            "SELECT * FROM scans WHERE barcode=? AND state=? ORDER BY stored_at, id",
            (barcode, ScanState.STORED),
        )

    def stored_unremoved(self) -> list[ScanRecord]:
        """Stored scans whose source was not yet removed (a crash between the two steps)."""
        return self._many(
            "SELECT * FROM scans WHERE state=? AND source_removed=0 ORDER BY id", (ScanState.STORED,)
        )

    def all(self) -> list[ScanRecord]:
        return self._many("SELECT * FROM scans ORDER BY id")

    def resume_after_crash(self) -> list[ScanRecord]:
        """Rows left ``processing`` by a process that died go back to ``ready``; returns them."""
        rows = self.in_state(ScanState.PROCESSING)
        for r in rows:
            self.transition(
                r.id,
                ScanState.READY,
                reason="resumed after the agent stopped mid-scan",
                expect=(ScanState.PROCESSING,),
                flow_run_id=r.flow_run_id,
            )
        return rows

    def events(self, scan_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(r)
                for r in self._db.execute(
                    "SELECT at, state, reason FROM events WHERE scan_id=? ORDER BY id", (scan_id,)
                ).fetchall()
            ]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM scans GROUP BY state").fetchall()
        out = dict.fromkeys((str(s) for s in ScanState), 0)
        out.update({r["state"]: r["n"] for r in rows})
        return out

    def stored_since(self, since: float) -> tuple[int, int]:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size),0) FROM scans WHERE state=? AND stored_at>=?",
                (ScanState.STORED, since),
            ).fetchone()
        return int(row[0]), int(row[1])

    def last_stored(self) -> ScanRecord | None:
        return self._one(
            "SELECT * FROM scans WHERE state=? ORDER BY stored_at DESC LIMIT 1", (ScanState.STORED,)
        )

    # --- health (written by the daemon, read by `status`) ----------------------------------

    def set_health(self, **values: Any) -> None:
        now = self._clock()
        with self._tx() as db:
            for k, v in values.items():
                db.execute(
                    "INSERT INTO health(key, value, updated) VALUES (?,?,?) ON CONFLICT(key) DO UPDATE"
                    " SET value=excluded.value, updated=excluded.updated",
                    (k, json.dumps(v, default=str), now),
                )

    def health(self) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value, updated FROM health").fetchall()
        out = {r["key"]: json.loads(r["value"]) for r in rows}
        if rows:
            out["_updated"] = max(r["updated"] for r in rows)
        return out

    # --- rescans ------------------------------------------------------------------------

    def request_rescan(self, barcode: str, *, by: str, reason: str, deadline: float) -> bool:
        """Record that ``barcode`` needs a new scan. Returns True when this is a new request."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT satisfied_at FROM rescans WHERE barcode=?", (barcode,)).fetchone()
            if row is not None and row["satisfied_at"] is None:
                return False
            db.execute(
                "INSERT INTO rescans(barcode, requested_at, requested_by, reason, deadline)"
                " VALUES (?,?,?,?,?) ON CONFLICT(barcode) DO UPDATE SET"
                " requested_at=excluded.requested_at, requested_by=excluded.requested_by,"
                " reason=excluded.reason, deadline=excluded.deadline, satisfied_at=NULL, alerted_at=NULL",
                (barcode, now, by, reason, deadline),
            )
        return True

    def satisfy_rescan(self, barcode: str) -> dict[str, Any] | None:
        """A new scan of ``barcode`` arrived: close its open request (returned) if any."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM rescans WHERE barcode=? AND satisfied_at IS NULL", (barcode,)
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE rescans SET satisfied_at=? WHERE barcode=?", (now, barcode))
            return dict(row)

    def rescan_known(self, barcode: str) -> bool:
        """Whether any rescan request (open or satisfied) was ever recorded for ``barcode``."""
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM rescans WHERE barcode=?", (barcode,)).fetchone() is not None
            )

    def open_rescans(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(r)
                for r in self._db.execute(
                    "SELECT * FROM rescans WHERE satisfied_at IS NULL ORDER BY deadline"
                )
            ]

    def overdue_rescans(self, now: float | None = None) -> list[dict[str, Any]]:
        now = self._clock() if now is None else now
        with self._lock:
            return [
                dict(r)
                for r in self._db.execute(
                    "SELECT * FROM rescans WHERE satisfied_at IS NULL AND alerted_at IS NULL AND deadline<=?",
                    (now,),
                )
            ]

    def mark_rescan_alerted(self, barcode: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE rescans SET alerted_at=? WHERE barcode=?", (self._clock(), barcode))


def _marks(values: tuple[Any, ...]) -> str:
    """``?,?,?``: one SQL placeholder per value."""
    return ",".join("?" * len(values))


class _Tx:
    """``with journal._tx() as db:`` — BEGIN IMMEDIATE ... COMMIT under the journal's lock."""

    def __init__(self, journal: Journal) -> None:
        self.j = journal

    def __enter__(self) -> sqlite3.Connection:
        self.j._lock.acquire()
        self.j._db.execute("BEGIN IMMEDIATE")
        return self.j._db

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            self.j._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.j._lock.release()
