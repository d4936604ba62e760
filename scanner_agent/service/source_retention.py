"""The retention timer: free the scanner's copy of stored scans once ``remove_source_after_days`` has passed.

Each due scan's stored copy is read back and compared with the sha256 recorded when it was stored
before its source is removed. A copy that no longer verifies raises one alert, keeps the source
and is looked at again a day later (it may have been restored from backup by then).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scanner_agent import storage
from scanner_agent.core.errors import ScanError
from scanner_agent.journal import ScanRecord
from scanner_agent.service.bootstrap import Services, retention_of

log = logging.getLogger(__name__)

#: After a stored copy failed to verify, look again this much later.
RECHECK_FAILED_SECONDS = 86_400.0


def release_due_sources(services: Services, now: float | None = None) -> list[ScanRecord]:
    """Free the sources whose retention time has come; returns the scans whose source was removed."""
    now = time.time() if now is None else now
    retention = retention_of(services.cfg)
    if retention.immediate or not retention.remove:
        return []  # freed by the pipeline itself, or never
    freed: list[ScanRecord] = []
    for rec in services.journal.stored_unremoved():
        if not storage.source_due(rec.stored_at, retention, now) or not rec.dest or not rec.sha256:
            continue
        failed_at = rec.details.get("retention_failed_at")
        if isinstance(failed_at, (int, float)) and now - failed_at < RECHECK_FAILED_SECONDS:
            continue
        if release_one(services, rec, now):
            freed.append(rec)
    return freed


def release_one(services: Services, rec: ScanRecord, now: float) -> bool:
    """Re-verify one stored scan and free its source; an alert and the source kept if it does not verify."""
    j = services.journal
    try:
        storage.release_source(
            Path(rec.path),
            size=rec.size,
            mtime_ns=rec.mtime_ns,
            dest=Path(rec.dest or ""),
            sha256=rec.sha256 or "",
            marker_template=services.cfg.scanner.completion_marker,
        )
    except storage.StoredCopyMismatch as exc:
        message = f"{exc.message}; keeping the source {rec.path} on the scanner"
        log.error("%s", message)
        j.update(rec.id, details={"retention_failed_at": now, "retention_problem": message})
        services.alert(
            "stored_file_changed",
            message,
            barcode=rec.barcode,
            file=Path(rec.path).name,
            details={"stored as": rec.dest or "", "source kept at": rec.path},
        )
        return False
    except (OSError, ScanError) as exc:
        log.warning("could not free the source %s after its retention time: %s", rec.path, exc)
        j.update(rec.id, details={"retention_failed_at": now, "retention_problem": str(exc)})
        return False
    j.update(rec.id, source_removed=1, details={"source_removed_at": now})
    return True
