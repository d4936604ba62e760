"""``process_scan``: one scan from the scanner's folder into storage, its every decision in the journal.

The journal is written at each decision, before the step that depends on it, so a crash at any
point leaves a record that says what to do next: the planned destination before the copy (a
restart knows where a partial may be), ``stored`` before the source is freed (a restart finishes
the removal instead of copying again), ``source_removed`` after. A failure is decided by
``core.policy`` (retry with backoff, hold, quarantine, fail) and said once: journal, alert, run
summary. The body is ``async`` because the orchestrator's run effects (tags, artifact) are.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanner_agent.core.barcode import BarcodeResult
from scanner_agent.core.errors import NoBarcode, ScanError, UnexpectedError
from scanner_agent.core.humanize import age_text, iso_utc
from scanner_agent.core.outcomes import ReportKind, ScanReport, failure_kind, failure_status
from scanner_agent.core.policy import Outcome, decide_failure, unquarantinable
from scanner_agent.core.qc import QcResult
from scanner_agent.core.rescans import choose_rescan
from scanner_agent.core.sheet_table import SheetRow, SheetTable
from scanner_agent.core.states import ScanState
from scanner_agent.journal import ScanRecord
from scanner_agent.pipeline import steps
from scanner_agent.pipeline.ports import RunPort, ScanOutcome, ScanServices, StepRunner, call_directly
from scanner_agent.pipeline.summary import Summary
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import SlideInfo
from scanner_agent.storage import TransferResult
from scanner_agent.systemd import journald

log = logging.getLogger(__name__)

#: States a run may start from; anything else (stored, quarantined) is answered without a run.
_STARTABLE = (ScanState.READY, ScanState.HELD, ScanState.FAILED, ScanState.PROCESSING)


async def process_scan(
    svc: ScanServices, scan_id: int, path: Path, *, run: RunPort, steps_runner: StepRunner = call_directly
) -> ScanOutcome:
    """Process journal scan ``scan_id`` (the file at ``path``); every outcome is in the journal."""
    j = svc.journal
    summary = Summary(svc.name, run, t0=time.monotonic())
    rec = j.get(scan_id)
    if rec is None:
        return ScanOutcome(False, f"scan {scan_id} is not in the journal {j.path}")
    if rec.state == ScanState.STORED:
        msg = f"{path.name} is already stored as {rec.dest}; nothing to do."
        await summary.publish(rec.barcode, path, None, None, msg)
        return ScanOutcome(True, msg, name="Already stored")
    if rec.state == ScanState.QUARANTINED:
        where = rec.details.get("quarantined_to") or "the quarantine folder"
        return ScanOutcome(
            False,
            f"{path.name} is in quarantine at {where} ({rec.reason}). "
            f"Fix it there, then run `scanner-agent process --config <config> {where}` "
            f"on {socket.gethostname()}.",
            name="Quarantined",
        )
    before = _Before(
        held_kind=rec.details.get("held_kind") if rec.held_since else None,
        failed_kind=rec.details.get("failed_kind"),
        barcode=rec.barcode,
        hold_alerted=bool(rec.details.get("hold_alerted")),
    )
    rec = j.transition(
        scan_id, ScanState.PROCESSING, reason="flow run started", flow_run_id=run.run_id, expect=_STARTABLE
    )
    unit = ScanUnit.from_path(path)
    barcode: str | None = rec.barcode
    info: SlideInfo | None = None
    step = steps_runner
    try:
        steps.refuse_links(unit)
        steps.require_present(unit, path)
        bc = step(steps.IDENTIFY_BARCODE, svc, unit)
        barcode = bc.barcode
        journald.bind_scan_context(barcode=barcode)  # journalctl BARCODE=... finds the rest of the story
        j.update(scan_id, barcode=barcode, details={"barcode_source": bc.source})
        summary.barcode_source = bc.source
        await run.name_by_barcode(barcode)  # staff search the UI by barcode, wherever it was found
        row, table = step(steps.READ_SHEET_METADATA, svc, barcode)
        await run.tag_study(row.values.get("Study", ""))
        info = step(steps.VALIDATE_SLIDE, svc, unit)
        if not info.validated:  # a pass-through format: recorded as such, never as corrupt
            j.update(scan_id, details={"validation": info.note})
        qc = step(steps.CHECK_QUALITY, svc, info) if svc.settings.qc_enabled and info.validated else None
        dest = step(steps.BUILD_NAME, svc, unit, barcode, row, table)
        j.update(scan_id, details={"planned_dest": str(dest)})  # so a restart knows where a partial may be
        rescan = choose_rescan(
            j.stored_for_barcode(barcode), scan_id=scan_id, exists=lambda p: Path(p).exists()
        )
        sidecar = _sidecar(svc, rec, unit, barcode, bc, row, table, info, qc, run.run_id)
        mover = steps.MOVE_RESCANNED_IMAGES if rescan.is_rescan else steps.MOVE_IMAGE
        supersede = Path(rescan.supersede) if rescan.supersede is not None else None
        result = step(mover, svc, unit, dest, sidecar, supersede, rescan.label, (rec.size, rec.mtime_ns))
        # Stored is recorded before the source is freed: a crash in between finishes the removal on
        # restart (the copy is verified); the other order could lose the only copy's record.
        j.transition(
            scan_id,
            ScanState.STORED,
            reason="stored" + (" (rescan)" if rescan.is_rescan else ""),
            dest=str(result.dest),
            sha256=result.sha256,
            barcode=barcode,
            flow_run_id=run.run_id,
            details={
                "superseded": [str(p) for p in result.superseded],
                "bytes": result.total_size,
                "transfer_seconds": round(result.seconds, 3),
                "already_present": result.already_present,
                "failed_kind": None,  # its recovery is sent below, once
            },
        )
        for earlier_id in rescan.earlier:
            j.update(earlier_id, details={"superseded_by": str(result.dest)})
        if step(steps.FREE_SCANNER_DISK, svc, unit, result):
            j.update(scan_id, source_removed=1)
    except ScanError as exc:
        return await _failed(svc, scan_id, unit, barcode, exc, run, info, summary)
    except Exception as exc:  # a bug or an unmapped OS error: keep the scan, say so, retry a few times
        log.exception("unexpected error processing %s", path)
        err = UnexpectedError(
            f"Unexpected error processing {path.name}: {type(exc).__name__}: {exc}",
            barcode=barcode,
            path=str(path),
        )
        return await _failed(svc, scan_id, unit, barcode, err, run, info, summary)
    return await _stored(
        svc, scan_id, unit, barcode, result, qc, rescan.is_rescan, run, info, summary, before, row
    )


def _sidecar(
    svc: ScanServices,
    rec: ScanRecord,
    unit: ScanUnit,
    barcode: str,
    bc: BarcodeResult,
    row: SheetRow,
    table: SheetTable,
    info: SlideInfo,
    qc: QcResult | None,
    run_id: str | None,
) -> dict[str, Any]:
    return {
        "barcode": barcode,
        "barcode_source": bc.source,
        "scanner": svc.name,
        "host": socket.gethostname(),
        "source_path": str(unit.primary),
        "sheet": {"source": table.source, "row": row.row_number, "values": dict(row.values)},
        "slide": {
            "vendor": info.vendor,
            "width": info.width,
            "height": info.height,
            "levels": info.level_count,
            "mpp": info.mpp,
            # A pass-through format says so (a validated slide's record is as it always was).
            **({} if info.validated else {"validated": False, "note": info.note}),
        },
        "qc": None
        if qc is None
        else {
            "passed": qc.passed,
            "blur_score": round(qc.blur_score, 2),
            "tissue_fraction": round(qc.tissue_fraction, 4),
            "reasons": list(qc.reasons),
        },
        "scan_complete_at": iso_utc(rec.ready_at),
        "journal_scan_id": rec.id,
        "flow_run_id": run_id,
    }


async def _stored(
    svc: ScanServices,
    scan_id: int,
    unit: ScanUnit,
    barcode: str,
    result: TransferResult,
    qc: QcResult | None,
    is_rescan: bool,
    run: RunPort,
    info: SlideInfo | None,
    summary: Summary,
    before: _Before,
    row: SheetRow,
) -> ScanOutcome:
    j = svc.journal
    rec = j.get(scan_id)
    assert rec is not None
    url = run.url()
    notes: list[str] = []
    if rec.held_since:
        waited = (rec.stored_at or time.time()) - rec.held_since
        notes.append(f"Waited {age_text(waited)} for its sheet row before it was stored.")
        # The recovery carries the kind of the alert it answers, so each problem is closed once.
        svc.notifier.alert(
            before.held_kind or "held",
            f"{barcode} stored after {age_text(waited)} held",
            recovery=True,
            barcode=barcode,
            file=unit.name,
            run_url=url,
            scan=str(scan_id),
        )
        if before.hold_alerted:  # "held too long" was said once per file: close it too
            svc.notifier.alert(
                "held_too_long",
                f"{barcode} stored after {age_text(waited)} held",
                recovery=True,
                barcode=barcode,
                file=unit.name,
                run_url=url,
            )
    if before.failed_kind:  # storage back, the scan settled, the bug retried away: close the failure
        svc.notifier.alert(
            before.failed_kind,
            f"{barcode} stored after an earlier failure ({before.failed_kind.replace('_', ' ')})",
            recovery=True,
            barcode=before.barcode,
            file=unit.name,
            run_url=url,
            scan=str(scan_id),
        )
    if is_rescan:
        moved = ", ".join(str(p) for p in result.superseded) or "superseded/"
        notes.append(f"Rescan: the earlier image moved to {moved}.")
    request = j.satisfy_rescan(barcode)
    if request:
        why = request.get("reason") or "no reason given"
        notes.append(f"Satisfies the rescan requested by {request['requested_by']} ({why}).")
        # An overdue request was alerted: close that message (updated, a reply in its thread);
        # otherwise the arrival is news of its own.
        overdue = bool(request.get("alerted_at"))
        svc.notifier.alert(
            "missing_rescan" if overdue else "rescan_received",
            f"The requested rescan of {barcode} arrived and is stored as {result.dest.name}",
            recovery=True,
            barcode=barcode,
            run_url=url,
            **({} if overdue else {"file": unit.name, "scan": str(scan_id)}),
        )
    svc.reports.report(
        ScanReport(
            ReportKind.STORED,
            svc.name,
            barcode,
            rec.stored_at or time.time(),
            "stored (rescan)" if is_rescan else "stored",
            file=unit.name,
            stored_path=_relative(result.dest, svc.settings.storage_root),
            sha256=result.sha256,
            size=result.total_size,
            sheet_row=row.row_number,
            study=row.values.get("Study") or None,
            flow_run_id=run.run_id,
            scan_id=scan_id,
            rescan_done=bool(request),
            is_rescan=is_rescan,
            # Downstream jobs on this host's share open it by its full path; staff read the relative one.
            extra={"path": str(result.dest), "storage_root": str(svc.settings.storage_root)},
        )
    )
    outcome = ScanOutcome(True, f"Stored {barcode} as {result.dest}")
    if qc is not None and not qc.passed:
        reason = "; ".join(qc.reasons) or "failed QC"
        deadline = time.time() + svc.settings.rescan_deadline_hours * 3600
        j.request_rescan(barcode, by="qc", reason=reason, deadline=deadline)
        j.update(scan_id, details={"qc_failed": reason})
        svc.notifier.alert(
            "qc_failed",
            f"{barcode} was stored but failed quality control: {reason}. A rescan is requested.",
            barcode=barcode,
            file=unit.name,
            run_url=url,
            thumbnail_png=info.thumbnail_png if info else None,
            scan=str(scan_id),
        )
        notes.append(f"QC failed ({reason}); a rescan was requested.")
        outcome = ScanOutcome(
            True, f"Stored {barcode} as {result.dest}, but QC failed: {reason}", name="Stored, QC failed"
        )
    await summary.publish(barcode, unit.primary, result, qc, "\n".join(notes) or "Stored.")
    return outcome


@dataclass(frozen=True)
class _Before:
    """What the scan's record said before this run, for closing the alerts it had raised."""

    held_kind: str | None
    failed_kind: str | None
    barcode: str | None
    hold_alerted: bool


async def _failed(
    svc: ScanServices,
    scan_id: int,
    unit: ScanUnit,
    barcode: str | None,
    exc: ScanError,
    run: RunPort,
    info: SlideInfo | None,
    summary: Summary,
) -> ScanOutcome:
    j = svc.journal
    rec = j.get(scan_id)
    assert rec is not None
    s = svc.settings
    decision = decide_failure(
        exc,
        attempts=rec.attempts,
        now=time.time(),
        retry_seconds=s.retry_seconds,
        recheck_seconds=s.recheck_seconds,
    )
    details: dict[str, Any] = {}
    if decision.outcome is Outcome.QUARANTINE:
        try:
            where = svc.storage.quarantine(unit, s.quarantine_dir, f"{exc.kind}: {exc.message}")
            details["quarantined_to"] = str(where)
        except (OSError, ScanError) as qexc:  # cannot move it aside: leave it where it is, still recorded
            log.error("could not quarantine %s: %s", unit, qexc)
            decision = unquarantinable(decision)
            details["quarantine_error"] = str(qexc)
    if decision.outcome is Outcome.HOLD:
        details["held_kind"] = exc.kind
    elif decision.state == ScanState.FAILED:  # kept past the retry's move to ready, to close it once stored
        details["failed_kind"] = exc.kind
    j.transition(
        scan_id,
        decision.state,
        reason=exc.message,
        kind=exc.kind,
        next_check=decision.next_check,
        barcode=barcode,
        details=details or None,
    )
    kind = failure_kind(decision.state)
    svc.reports.report(
        ScanReport(
            kind,
            svc.name,
            barcode,
            time.time(),
            failure_status(exc, kind),
            file=unit.name,
            flow_run_id=run.run_id,
            reason=exc.message,
            error_kind=exc.kind,
            scan_id=scan_id,
            extra={"quarantined_to": details["quarantined_to"]} if "quarantined_to" in details else {},
        )
    )
    extra = {"where": details["quarantined_to"]} if "quarantined_to" in details else {}
    # Only there when [alerts] attach_label asked for it (labels can carry patient identifiers).
    label_png = exc.label_png if isinstance(exc, NoBarcode) else None
    svc.notifier.alert(
        exc.kind,
        exc.message,
        action=exc.action,
        barcode=barcode,
        file=unit.name,
        run_url=run.url(),
        thumbnail_png=info.thumbnail_png if info else None,
        details=extra,
        scan=str(scan_id),
        **({"label_png": label_png} if label_png else {}),
    )
    what = decision.label
    await summary.publish(
        barcode, unit.primary, None, None, f"**{what}**: {exc.message}\n\n**What to do:** {exc.action}"
    )
    return ScanOutcome(False, str(exc), name=what if what != "Failed" else None)


def _relative(dest: Path, root: Path) -> str:
    """The stored path as staff and downstream jobs name it: relative to the storage root."""
    try:
        return dest.relative_to(root).as_posix()
    except ValueError:  # a layout that placed it outside the root is still worth saying in full
        return str(dest)
