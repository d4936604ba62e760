"""Crash recovery: what a start-up finishes for a previous process that stopped mid-work.

Rows left ``processing`` go back to ``ready`` (the journal's ``resume_after_crash``) and their
Prefect runs are marked Crashed; stored scans whose source was not yet removed are verified
against their stored copy once more and removed; partial files that a killed transfer left in
``.incoming`` (only where resumed scans were headed) are deleted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from scanner_agent import storage
from scanner_agent.core.errors import ScanError
from scanner_agent.journal import ScanRecord
from scanner_agent.orchestration import crashes
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Services

log = logging.getLogger(__name__)


def recover(services: Services) -> list[ScanRecord]:
    """Start-up: resume what a previous process left unfinished. Returns the resumed rows (now ``ready``)."""
    journal = services.journal
    resumed = journal.resume_after_crash()
    crashed = mark_stale_runs_crashed(services, [r.flow_run_id for r in resumed if r.flow_run_id])
    if resumed or crashed:
        log.warning(
            "resuming %d scan(s) left unfinished; marked %d stale Prefect run(s) Crashed",
            len(resumed),
            crashed,
        )
    for rec in journal.stored_unremoved():
        finish_source_removal(services, rec)
    clean_partials(resumed)
    return resumed


def clean_partials(resumed: list[ScanRecord]) -> None:
    """Partials a killed transfer left behind: only where resumed scans were headed (a resumed
    transfer also replaces its own partial), never a walk of the whole share."""
    for folder in sorted(
        {Path(r.details["planned_dest"]).parent for r in resumed if r.details.get("planned_dest")}
    ):
        try:
            leftovers = storage.clean_incoming(folder, recursive=False)
            if leftovers:
                log.warning(
                    "removed %d partial file(s) left in %s by an interrupted transfer",
                    len(leftovers),
                    folder,
                )
        except OSError as exc:
            log.warning("could not clean partial files in %s: %s", folder, exc)


def finish_source_removal(services: Services, rec: ScanRecord) -> None:
    """A stored scan whose source is still on the scanner (the agent stopped between the two steps)."""
    unit = ScanUnit.from_path(rec.path)
    if not unit.exists():
        services.journal.update(rec.id, source_removed=1)
        return
    try:
        fp = unit.fingerprint()
        if (fp.total_size, fp.newest_mtime_ns) != (rec.size, rec.mtime_ns):
            log.warning("%s changed after it was stored; leaving it for the watcher", rec.path)
            return
        if not rec.dest or not Path(rec.dest).exists():
            log.error(
                "journal says %s is stored at %s but that is missing; keeping the source", rec.path, rec.dest
            )
            return
        # Compare the stored copy with the source once more before deleting the only other copy.
        dest = Path(rec.dest)
        try:
            sidecar = json.loads(storage.sidecar_path(dest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            sidecar = {"barcode": rec.barcode, "scanner": services.name, "source_path": rec.path}
        result = storage.place_scan(
            unit, dest.parent, dest.name, sidecar=sidecar, storage_root=services.cfg.storage.root, margin=0
        )
        storage.remove_source(unit, result)
        services.journal.update(rec.id, source_removed=1)
        log.info("removed %s (stored earlier as %s, verified again)", rec.path, rec.dest)
    except (OSError, ScanError) as exc:
        log.warning("could not remove stored source %s: %s", rec.path, exc)


def mark_stale_runs_crashed(services: Services, run_ids: list[str], *, message: str | None = None) -> int:
    """Mark this scanner's runs Crashed: the given ids, plus any of its runs still Running/Pending
    from before this process started (a killed agent cannot say so itself)."""
    return crashes.mark_stale_runs_crashed(
        services.journal, services.cfg.flow_name, services.started_at, run_ids, message=message
    )
