"""Crash recovery: what a start-up finishes for a previous process that stopped mid-work.

Rows left ``processing`` go back to ``ready`` (the journal's ``resume_after_crash``) and their
Prefect runs are marked Crashed, except a scan the agent died processing twice in a row: the
crash-loop guard (``core.crashloop``) sets it aside as failed, alerts once, and the agent goes on
with everything else (``scanner-agent retry --barcode B`` brings it back). Stored scans whose
source was not yet removed are verified against their stored copy once more and removed; partial
files that a killed transfer left in ``.incoming`` (only where resumed scans were headed) are deleted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from scanner_agent import storage
from scanner_agent.core import crashloop
from scanner_agent.core.barcode import barcode_from_name
from scanner_agent.core.errors import AgentStoppedTwice, ScanError
from scanner_agent.core.states import ScanState
from scanner_agent.journal import ScanRecord
from scanner_agent.orchestration import crashes
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Services

log = logging.getLogger(__name__)


def recover(services: Services) -> list[ScanRecord]:
    """Start-up: resume what a previous process left unfinished. Returns the resumed rows (now ``ready``)."""
    journal = services.journal
    aside = guard_crash_loop(services)
    resumed = journal.resume_after_crash()
    crashed = mark_stale_runs_crashed(services, [r.flow_run_id for r in resumed + aside if r.flow_run_id])
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


def guard_crash_loop(services: Services) -> list[ScanRecord]:
    """Count this start's death against each scan left ``processing``; set aside (failed, one
    alert) those the agent died processing twice in a row. Returns the rows set aside."""
    journal = services.journal
    health = journal.health()
    # A clean stop records ``stopped_at``; a process that died (SIGKILL, OOM killer, a crash in a
    # library) never does. Cleared now, so a death before this start's first health write counts.
    died = bool(health.get("pid")) and not health.get("stopped_at")
    journal.set_health(stopped_at=None)
    processing = journal.in_state(ScanState.PROCESSING)
    counted = {
        r.id: int(r.details.get(crashloop.DEATHS_KEY) or 0)
        for r in journal.in_state(ScanState.READY, ScanState.PROCESSING)
        if r.details.get(crashloop.DEATHS_KEY)
    }
    decision = crashloop.judge_start([r.id for r in processing], counted, died=died)
    for scan_id, deaths in decision.deaths.items():
        if scan_id not in decision.set_aside:
            journal.update(scan_id, details={crashloop.DEATHS_KEY: deaths})
    aside = []
    for rec in processing:
        if rec.id in decision.set_aside:
            aside.append(set_aside(services, rec))
    return aside


def set_aside(services: Services, rec: ScanRecord) -> ScanRecord:
    """Fail a scan that stopped the agent twice, with ``crashloop.REASON``, and alert once."""
    name = Path(rec.path).name
    barcode = rec.barcode
    if barcode is None:  # so `retry --barcode` finds it even if it died before its barcode was read
        try:
            barcode = barcode_from_name(Path(rec.path).stem, services.barcode_regex)
        except ValueError:
            barcode = None
    err = AgentStoppedTwice(f"{name}: {crashloop.REASON}", barcode=barcode, path=rec.path)
    rec = services.journal.transition(
        rec.id,
        ScanState.FAILED,
        reason=crashloop.REASON,
        kind=err.kind,
        expect=(ScanState.PROCESSING,),
        barcode=barcode,
    )
    log.error(
        "set aside %s: %s; `scanner-agent retry --barcode %s` tries it again", rec.path, err.message, barcode
    )
    services.alert(
        err.kind,
        err.message,
        action=err.action,
        barcode=barcode,
        file=name,
        run_url=services.run_url(rec.flow_run_id),
        scan=str(rec.id),
    )
    return rec


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
    if not (services.cfg.scanner.remove_source and services.cfg.scanner.remove_source_after_days is None):
        return  # kept on purpose: the retention timer (service.maintenance) frees it when due, if ever
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
