"""Maintenance: the daemon's timers, run on their own thread so slow work never delays the watchdog.

Every second, held scans whose sheet row is now complete and transient failures whose time has
come go back to ``ready`` (without a flow run per check: a run starts only once the row is
complete). Every ~30 s: queued alerts are re-sent, held-too-long and missing-rescan alerts are
raised, the sheet's rescan column is swept, and health is recorded for ``scanner-agent status``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from scanner_agent.core.errors import ScanError
from scanner_agent.core.outcomes import ReportKind, ScanReport
from scanner_agent.core.sheet_table import lookup
from scanner_agent.core.states import ScanState
from scanner_agent.journal import Journal, ScanRecord
from scanner_agent.service.bootstrap import Services
from scanner_agent.service.digest import send_digest_if_due
from scanner_agent.service.dispatcher import Dispatcher
from scanner_agent.service.source_retention import release_due_sources
from scanner_agent.systemd import notify as sdnotify

log = logging.getLogger(__name__)

#: A maintenance pass (sheet re-checks, alerts) may take this long before the watchdog stops
#: being pinged: well past any single bounded network call, well short of "hung for hours".
MAINTENANCE_STALL_SECONDS = 600.0

#: How often the slow timers run (held too long, rescans, alert re-sends, health).
SLOW_TIMER_SECONDS = 30.0

_TRUE_WORDS = {"yes", "y", "true", "1", "x", "requested", "rescan", "needed", "required"}


class Maintenance:
    """The maintenance thread: ``tick`` once a second until ``stop_event`` is set."""

    def __init__(
        self,
        services: Services,
        dispatcher: Dispatcher,
        watcher: Any,
        stop_event: threading.Event,
        *,
        on_journal_error: Callable[[sqlite3.Error], None],
    ) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self.watcher = watcher
        self.stop_event = stop_event
        self.on_journal_error = on_journal_error
        self._last_slow = 0.0
        self._completed = time.monotonic()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="maintenance", daemon=True).start()

    def stalled(self) -> bool:
        """True once no pass has completed for ``MAINTENANCE_STALL_SECONDS`` (a hung sheet read, SMTP...)."""
        return time.monotonic() - self._completed > MAINTENANCE_STALL_SECONDS

    def _loop(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.tick()
            except sqlite3.Error as exc:
                log.exception("maintenance pass failed: the journal cannot be written")
                self.on_journal_error(exc)
            except Exception:
                log.exception("maintenance pass failed")
            self._completed = time.monotonic()

    def tick(self, now: float | None = None) -> None:
        """One pass: held and transient re-checks every second, slower timers every 30 s."""
        now = time.time() if now is None else now
        s, disp = self.services, self.dispatcher
        recheck_due(s, disp, now)
        if s.sheet_writeback is not None:
            s.sheet_writeback.kick()  # the sheet's status cells, on their own thread, once per window
        if now - self._last_slow < SLOW_TIMER_SECONDS:
            return
        self._last_slow = now
        slow_timers(s, now)
        s.transfer_gate.poll()  # the transfer rate and the stall alert, even with no copy running
        h = self.watcher.health()
        s.journal.set_health(
            queue=disp.queue_length,
            in_flight=disp.in_flight,
            observer=h.observer,
            watcher_alive=h.alive,
            last_full_scan=h.last_full_scan,
            pending=h.pending,
            watcher_error=h.last_error,
        )
        c = s.journal.counts()
        sdnotify.status(
            f"stored {c[ScanState.STORED]}, held {c[ScanState.HELD]}, failed {c[ScanState.FAILED]}, "
            f"queue {disp.queue_length}, in flight {len(disp.in_flight)}"
        )


def recheck_due(services: Services, dispatcher: Dispatcher, now: float) -> int:
    """Held scans whose sheet row is now complete, and transient failures whose time has come,
    go back to ``ready``. A held scan whose row is still missing waits another interval: no
    flow run per check, so the UI shows one run per decision, not one per poll."""
    journal = services.journal
    queued = 0
    for rec in journal.due(now):
        if rec.state == ScanState.HELD and rec.barcode:
            try:
                lookup(services.sheet.table(want=rec.barcode), rec.barcode)
            except ScanError as exc:  # the row is still missing, or the sheet is unreachable with no cache
                journal.transition(
                    rec.id,
                    ScanState.HELD,
                    reason=exc.message,
                    kind=exc.kind,
                    expect=(ScanState.HELD,),
                    next_check=now + services.cfg.sheet.recheck_seconds,
                )
                continue
        reason = "sheet row complete" if rec.state == ScanState.HELD else f"retrying after: {rec.reason}"
        journal.transition(rec.id, ScanState.READY, reason=reason, expect=(rec.state,), ready_at=now)
        dispatcher.submit(rec.id, now)
        queued += 1
    return queued


def slow_timers(services: Services, now: float) -> None:
    """Every ~30 s: re-send queued alerts, held-too-long, rescan requests from the sheet, missing rescans."""
    j = services.journal
    try:
        services.alerter.retry_pending()
    except Exception:
        log.exception("retrying queued alerts failed")
    limit = services.cfg.sheet.hold_alert_hours * 3600
    for rec in j.in_state(ScanState.HELD):
        if rec.held_since and now - rec.held_since >= limit and not rec.details.get("hold_alerted"):
            services.alert(
                "held_too_long",
                f"{Path(rec.path).name} has been held for {(now - rec.held_since) / 3600:.1f} h: "
                f"{rec.reason}",
                barcode=rec.barcode,
                file=Path(rec.path).name,
                run_url=services.run_url(rec.flow_run_id),
                details={"held since": time.ctime(rec.held_since)},
            )
            j.update(rec.id, details={"hold_alerted": now})
    sweep_rescan_requests(services, now)
    release_due_sources(services, now)  # remove_source_after_days: re-verify the stored copy, then free
    # The scanner's daily table in Prefect's Artifacts page: at most every 5 min, in the background.
    services.daily_report.maybe_publish()
    send_digest_if_due(services, now)  # [alerts] digest_time: once a day to Slack
    for req in j.overdue_rescans(now):
        services.alert(
            "missing_rescan",
            f"A rescan of {req['barcode']} was requested by {req['requested_by']} on "
            f"{time.ctime(req['requested_at'])} ({req.get('reason') or 'no reason given'}) and has not "
            f"arrived within {services.cfg.rescans.deadline_hours:g} h.",
            barcode=req["barcode"],
            details={"requested by": req["requested_by"], "requested": time.ctime(req["requested_at"])},
        )
        j.mark_rescan_alerted(req["barcode"])
        services.reports.report(
            ScanReport(
                ReportKind.RESCAN_MISSING,
                services.name,
                req["barcode"],
                now,
                "rescan missing",
                reason=f"requested by {req['requested_by']}: {req.get('reason') or 'no reason given'}",
            )
        )


def sweep_rescan_requests(services: Services, now: float) -> int:
    """Rows whose rescan column says yes become rescan requests (once per barcode)."""
    column = services.cfg.rescans.column
    try:
        table = services.sheet.table()
    except ScanError:
        return 0
    if column not in table.columns:
        return 0
    known = {r["barcode"] for r in services.journal.open_rescans()}
    added = 0
    for barcode, row in table.rows.items():
        value = (row.values.get(column) or "").strip().lower()
        if value in _TRUE_WORDS and barcode not in known and not services.journal.rescan_known(barcode):
            notes = row.values.get("Notes", "")
            services.journal.request_rescan(
                barcode,
                by=f"the sheet ({column}, row {row.row_number})",
                reason=notes or value,
                deadline=now + services.cfg.rescans.deadline_hours * 3600,
            )
            added += 1
    return added


def recheck_now(journal: Journal, barcodes: Collection[str] = ()) -> list[ScanRecord]:
    """``scanner-agent retry``: make held and failed scans (only ``barcodes``, if given) due now.

    The running daemon's next pass then re-checks each held scan's sheet row and queues each
    failed scan again (``recheck_due``); without a daemon, its next start does. Quarantined scans
    are not touched: a quarantined scan is submitted again with ``scanner-agent process``.
    Returns the scans made due, as they were before."""
    due = []
    for rec in journal.in_state(ScanState.HELD, ScanState.FAILED):
        if barcodes and rec.barcode not in barcodes:
            continue
        journal.transition(
            rec.id, rec.state, reason=rec.reason, kind=rec.kind, next_check=time.time(), expect=(rec.state,)
        )
        due.append(rec)
    return due
