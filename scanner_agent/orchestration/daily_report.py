"""A daily summary per scanner as a Prefect table artifact: stored, held, failed, quarantined, bytes.

One keyed artifact per scanner (``scanner-cardinal-daily``), one row per day, newest first, so
the UI's Artifacts page shows one card per scanner and each card's history shows how the table
grew. Counted from the journal's events (the agent's record), read on a read-only connection of
its own; a day's row counts each scan once per outcome, whatever the number of re-checks.

``DailyReporter.maybe_publish`` is what the daemon calls from its slow timers (``service.bootstrap``
builds one reporter per agent): it publishes at most every ``every_seconds``, only when the table
changed, and in a background thread so a slow or absent Prefect server never delays the main
loop (or systemd's watchdog).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)

DEFAULT_DAYS = 14
DEFAULT_EVERY_SECONDS = 300.0

COLUMNS = ("Day", "New scans", "Stored", "Stored (GB)", "Held", "Failed", "Quarantined")

# Per scan and state, the first time that scan entered that state each (local) day; counting
# these per day counts a scan once per outcome per day (held scans are re-checked, and each
# re-check writes another 'held' event).
_DAILY_SQL = """
SELECT day, state, COUNT(*) AS scans, COALESCE(SUM(size), 0) AS bytes
FROM (
    SELECT DISTINCT date(e.at, 'unixepoch', 'localtime') AS day, e.state AS state, e.scan_id AS scan_id,
        s.size AS size
    FROM events e JOIN scans s ON s.id = e.scan_id
    WHERE e.at >= ? AND e.state IN ('ready', 'stored', 'held', 'failed', 'quarantined')
)
GROUP BY day, state
"""


def artifact_key(scanner: str) -> str:
    """``scanner-<name>-daily``: Prefect artifact keys allow lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9-]+", "-", scanner.lower()).strip("-") or "scanner"
    return f"scanner-{slug}-daily"


def _connect_ro(journal_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    return db


def daily_rows(
    journal_path: Path, *, days: int = DEFAULT_DAYS, today: date | None = None
) -> list[dict[str, Any]]:
    """One row per day for the last ``days`` days (today first), zeros included, from the journal."""
    today = today or date.today()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time()).timestamp()  # local midnight
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    db = _connect_ro(journal_path)
    try:
        for r in db.execute(_DAILY_SQL, (since,)):
            counts.setdefault(r["day"], {})[r["state"]] = (int(r["scans"]), int(r["bytes"]))
    finally:
        db.close()
    rows = []
    for i in range(days):
        day = today - timedelta(days=i)
        c = counts.get(day.isoformat(), {})
        rows.append(
            {
                "Day": day.isoformat(),
                "New scans": c.get("ready", (0, 0))[0],
                "Stored": c.get("stored", (0, 0))[0],
                "Stored (GB)": round(c.get("stored", (0, 0))[1] / 1e9, 3),
                "Held": c.get("held", (0, 0))[0],
                "Failed": c.get("failed", (0, 0))[0],
                "Quarantined": c.get("quarantined", (0, 0))[0],
            }
        )
    return rows


def open_counts(journal_path: Path) -> dict[str, int]:
    """Scans waiting for a person right now (for the artifact's description)."""
    db = _connect_ro(journal_path)
    try:
        rows = db.execute(
            "SELECT state, COUNT(*) AS n FROM scans WHERE state IN ('held','failed','quarantined')"
            " GROUP BY state"
        ).fetchall()
    finally:
        db.close()
    out = {"held": 0, "failed": 0, "quarantined": 0}
    out.update({r["state"]: int(r["n"]) for r in rows})
    return out


def describe(scanner: str, rows: list[dict[str, Any]], now_open: dict[str, int]) -> str:
    total = sum(r["Stored"] for r in rows)
    gb = sum(r["Stored (GB)"] for r in rows)
    return (
        f"**{scanner}**: scans per day over the last {len(rows)} days, from the agent's journal "
        f"({total} stored, {gb:.2f} GB). Now waiting: {now_open['held']} held (no complete sheet row), "
        f"{now_open['failed']} failed, {now_open['quarantined']} in quarantine; `scanner-agent status` on "
        f"the scanner's host lists them. A day counts each scan once per outcome; *New scans* are those "
        f"found complete that day. Updated {datetime.now().astimezone().isoformat(timespec='minutes')}."
    )


def create_table(key: str, rows: list[dict[str, Any]], description: str) -> UUID:
    """A new version of the keyed table artifact, outside any flow run. Through the API client:
    ``prefect.artifacts.create_table_artifact`` warns that its use outside a run is deprecated
    (the artifacts endpoint itself is not), and its JSON is the same."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    with get_client(sync_client=True) as client:
        return client.create_artifact(
            artifact=ArtifactCreate(type="table", key=key, description=description, data=json.dumps(rows))
        ).id


def publish(scanner: str, journal_path: Path, *, days: int = DEFAULT_DAYS) -> UUID:
    """Create a new version of the scanner's daily artifact now."""
    rows = daily_rows(journal_path, days=days)
    return create_table(artifact_key(scanner), rows, describe(scanner, rows, open_counts(journal_path)))


class DailyReporter:
    """Publishes one scanner's report at most every ``every_seconds``, and only when it changed."""

    def __init__(
        self,
        scanner: str,
        journal_path: Path,
        *,
        every_seconds: float = DEFAULT_EVERY_SECONDS,
        days: int = DEFAULT_DAYS,
    ) -> None:
        self.scanner = scanner
        self.journal_path = Path(journal_path)
        self.every_seconds = every_seconds
        self.days = days
        self._last_try = float("-inf")
        self._last_digest: str | None = None
        self._thread: threading.Thread | None = None
        self.published = 0

    def due(self, monotonic_now: float | None = None) -> bool:
        now = time.monotonic() if monotonic_now is None else monotonic_now
        busy = self._thread is not None and self._thread.is_alive()
        return not busy and now - self._last_try >= self.every_seconds

    def maybe_publish(self, *, background: bool = True) -> bool:
        """Start a publish if one is due; returns whether one was started."""
        if not self.due():
            return False
        self._last_try = time.monotonic()
        if not background:
            self._publish_if_changed()
            return True
        self._thread = threading.Thread(
            target=self._publish_if_changed, name=f"daily-report-{self.scanner}", daemon=True
        )
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _publish_if_changed(self) -> None:
        try:
            rows = daily_rows(self.journal_path, days=self.days)
            now_open = open_counts(self.journal_path)
            digest = hashlib.sha256(json.dumps([rows, now_open], sort_keys=True).encode()).hexdigest()
            if digest == self._last_digest:
                return
            create_table(artifact_key(self.scanner), rows, describe(self.scanner, rows, now_open))
            self._last_digest = digest
            self.published += 1
        except Exception as exc:
            log.warning("could not publish the daily report for %s: %s", self.scanner, exc)
