"""The long-running agent: watcher -> journal -> dispatcher, plus the timers that keep it honest.

Start-up resumes what a previous process left unfinished (``processing`` rows, stored scans whose
source was not yet removed, partial files in ``.incoming``) and marks that process's Prefect runs
Crashed. The main loop pings systemd's watchdog only while the watcher is healthy, re-checks held
scans against the sheet (without a flow run per check: a run starts only once the row is
complete), retries transient failures, raises held-too-long and missing-rescan alerts, and
records health for ``scanner-agent status``. SIGTERM/SIGINT stop intake, let in-flight transfers
finish within ``stop_timeout_seconds`` and exit 0; anything cut short resumes on the next start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

from scanner_agent import storage
from scanner_agent.core.errors import HeldScan, ScanError
from scanner_agent.core.sheet_table import lookup
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Agent
from scanner_agent.service.dispatcher import Dispatcher
from scanner_agent.systemd import notify as sdnotify

log = logging.getLogger(__name__)

#: A maintenance pass (sheet re-checks, alerts) may take this long before the watchdog stops
#: being pinged: well past any single bounded network call, well short of "hung for hours".
MAINTENANCE_STALL_SECONDS = 600.0

_TRUE_WORDS = {"yes", "y", "true", "1", "x", "requested", "rescan", "needed", "required"}


class AlreadyRunning(RuntimeError):
    pass


class JournalLock:
    """One agent per journal: an exclusive flock on ``<journal>.lock`` held for the process's life."""

    def __init__(self, journal_path: Path) -> None:
        self.path = journal_path.with_suffix(journal_path.suffix + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another scanner-agent is using the journal {self.path.with_suffix('')} "
                f"(lock {self.path} is held)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Daemon:
    def __init__(self, agent: Agent, *, on_event: Callable[[str], None] | None = None) -> None:
        from scanner_agent.watch import ScanWatcher

        self.agent = agent
        cfg = agent.cfg
        self.dispatcher = Dispatcher(agent, cfg.scanner.max_parallel, on_journal_error=self._journal_broken)
        self._journal_error: sqlite3.Error | None = None
        self.watcher = ScanWatcher(
            cfg.scanner.watch,
            self._on_ready,
            patterns=cfg.scanner.patterns,
            observer=cfg.scanner.observer,
            settle_seconds=cfg.scanner.settle_seconds,
            rescan_seconds=cfg.scanner.rescan_seconds,
            poll_interval=cfg.scanner.poll_interval,
            on_health_change=self._on_watcher_health,
        )
        self.stop_event = threading.Event()
        self._lock = JournalLock(cfg.journal.path)
        self._say = on_event or (lambda msg: None)
        self._last_slow = 0.0
        self._last_busy: tuple[int, list[int]] | None = None
        self._watcher_alerted = False
        self._maintained = time.monotonic()
        self._stall_logged = False

    # --- life cycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``stop_event``). Returns the exit code."""
        self._lock.acquire()
        try:
            self._install_signals()
            try:
                self.startup()
                maintenance = threading.Thread(target=self._maintain, name="maintenance", daemon=True)
                maintenance.start()
                while not self.stop_event.wait(1.0):
                    self.heartbeat()
            except sqlite3.Error as exc:
                return self._journal_failed(exc)
            if self._journal_error is not None:
                return self._journal_failed(self._journal_error)
            return self.shutdown()
        finally:
            self._lock.release()

    def _journal_broken(self, exc: sqlite3.Error) -> None:
        """Any thread: a journal write failed. The main loop then stops the agent (``_journal_failed``)."""
        if self._journal_error is None:
            self._journal_error = exc
        self.stop_event.set()

    def _journal_failed(self, exc: sqlite3.Error) -> int:
        """The journal cannot be written (its disk is full, read-only or failing): stop rather than move
        scans without a record. Exit status 1, so systemd restarts the agent, which resumes what was cut short."""
        log.critical(
            "cannot write the journal %s (%s): stopping, so that no scan is moved without a record. "
            "Free space on (or repair) the journal's disk; the agent resumes unfinished scans when it "
            "starts again.",
            self.agent.cfg.journal.path,
            exc,
        )
        self.stop_event.set()
        self.watcher.stop()
        # Workers must be told to stop, or the process cannot exit (they wait on the queue in threads).
        self.dispatcher.stop(min(30.0, self.agent.cfg.scanner.stop_timeout_seconds))
        return 1

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            log.info(
                "received %s: finishing in-flight scans, taking no new ones", signal.Signals(signum).name
            )
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def startup(self) -> None:
        a = self.agent
        cfg = a.cfg
        resumed = a.journal.resume_after_crash()
        crashed = mark_stale_runs_crashed(a, [r.flow_run_id for r in resumed if r.flow_run_id])
        if resumed or crashed:
            log.warning(
                "resuming %d scan(s) left unfinished; marked %d stale Prefect run(s) Crashed",
                len(resumed),
                crashed,
            )
        for rec in a.journal.stored_unremoved():
            finish_source_removal(a, rec)
        # Partials a killed transfer left behind: only where resumed scans were headed (a resumed
        # transfer also replaces its own partial), never a walk of the whole share.
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
        self.dispatcher.start()
        for rec in a.journal.ready():
            self.dispatcher.submit(rec.id, rec.ready_at)
        self.watcher.start()
        threading.Thread(target=self._retry_poller, name="prefect-retry-poller", daemon=True).start()
        a.journal.set_health(
            pid=os.getpid(),
            started_at=time.time(),
            observer=self.watcher.health().observer,
            watching_since=self.watcher.health().watching_since,
            watch=str(cfg.scanner.watch),
            stopped_at=None,
        )
        sdnotify.ready(f"watching {cfg.scanner.watch} ({self.watcher.health().observer})")
        self._say(f"watching {cfg.scanner.watch} with {self.watcher.health().observer}")
        log.info("scanner-agent for %s watching %s", a.name, cfg.scanner.watch)

    def shutdown(self) -> int:
        cfg = self.agent.cfg
        inflight = self.dispatcher.in_flight
        sdnotify.stopping(f"finishing {len(inflight)} scan(s)")
        self.watcher.stop()
        if inflight:
            log.info(
                "waiting up to %.0f s for %d scan(s) in flight",
                cfg.scanner.stop_timeout_seconds,
                len(inflight),
            )
        clean = self.dispatcher.stop(cfg.scanner.stop_timeout_seconds)
        if not clean:
            # Past the bound: the copies are in .incoming (never visible), the rows stay
            # `processing`, and the next start resumes them. Say so in Prefect now.
            left = [self.agent.journal.get(i) for i in self.dispatcher.in_flight]
            ids = [r.flow_run_id for r in left if r and r.flow_run_id]
            mark_stale_runs_crashed(
                self.agent,
                ids,
                message="scanner-agent stopped before this scan finished; "
                "it resumes when the agent starts again",
            )
            log.warning("stopped with %d scan(s) unfinished; they resume on the next start", len(left))
        self.agent.journal.set_health(stopped_at=time.time(), queue=0, in_flight=[])
        return 0

    # --- events --------------------------------------------------------------------------------

    def _on_ready(self, unit: ScanUnit) -> None:
        """Watcher thread: a scan looks complete. Record it and queue it; nothing slow here."""
        shown = undecodable_name(unit.primary)
        if shown is not None:  # the watcher offers it again only if it changes (or is renamed)
            log.error(
                "%s: the name is not valid UTF-8, so the scan cannot be recorded; it stays where it is", shown
            )
            self.agent.alert(
                "scan_error",
                f"{shown}: the name is not valid UTF-8 text, so the scan cannot be "
                "recorded or named. It stays on the scanner.",
                file=shown.rsplit("/", 1)[-1],
                action="Rename the file (or its folder) with UTF-8 characters; it is picked up once renamed.",
            )
            return
        try:
            fp = unit.fingerprint()
        except FileNotFoundError:
            return
        if fp.file_count == 0:
            # Gone since the watcher judged it complete: typically the flow that stored it removed it a
            # moment ago. Recording it would make a second, empty scan that fails as "no longer on the
            # scanner's disk" for ever (the fault suite's SIGKILL run caught one). If it comes back, the
            # watcher offers it again.
            return
        try:
            rec, new = self.agent.journal.record_ready(str(unit.primary), fp.total_size, fp.newest_mtime_ns)
        except sqlite3.Error as exc:  # not recorded: the watcher offers it again; the agent stops meanwhile
            self._journal_broken(exc)
            raise
        if new:
            self._say(f"ready: {unit.name}")
            self.dispatcher.submit(rec.id, rec.ready_at)
        elif rec.state == "stored" and not rec.source_removed:
            finish_source_removal(self.agent, rec)

    def _on_watcher_health(self, health: Any) -> None:
        self.agent.journal.set_health(
            observer=health.observer,
            watcher_alive=health.alive,
            watcher_error=health.last_error,
            watcher_restarts=health.restarts,
        )
        if self.stop_event.is_set():
            return  # the daemon is stopping its own watcher: no fault to alert a person about
        if not health.alive and not self._watcher_alerted:
            self._watcher_alerted = True
            self.agent.alert(
                "watcher_unhealthy",
                f"The watcher of {self.agent.cfg.scanner.watch} stopped: "
                f"{health.last_error or 'observer not running'}. New scans are not being noticed.",
                file=str(self.agent.cfg.scanner.watch),
            )
        elif health.alive and self._watcher_alerted:
            self._watcher_alerted = False
            self.agent.alert(
                "watcher_unhealthy",
                f"The watcher of {self.agent.cfg.scanner.watch} is running again.",
                recovery=True,
                file=str(self.agent.cfg.scanner.watch),
            )

    def _retry_poller(self) -> None:
        """Scans whose run a person set to Retry in the Prefect UI go back in the queue."""
        import asyncio

        interval = self.agent.cfg.prefect.retry_poll_seconds
        while not self.stop_event.wait(interval):
            if self.agent.deployment_id is None:
                continue
            try:
                asyncio.run(self._take_retries())
            except Exception as exc:
                log.debug("polling for retries failed: %s", exc)

    async def _take_retries(self) -> None:
        from scanner_agent.orchestration.deployment import reject_run, retry_requests

        j = self.agent.journal
        for run in await retry_requests(self.agent, self.agent.deployment_id):
            scan_id = (run.parameters or {}).get("scan_id")
            rec = j.get(int(scan_id)) if isinstance(scan_id, int) or str(scan_id).isdigit() else None
            if rec is not None and (run.parameters or {}).get("path") not in (None, rec.path):
                # Scan ids restart in a new journal: the same id may be another file here.
                await reject_run(
                    run.id,
                    f"scanner-agent on {self.agent.name}: this run is for "
                    f"{run.parameters['path']}, but scan {scan_id} in its journal is {rec.path}; "
                    "the run is from an earlier journal or another host. Process that file with "
                    "`scanner-agent process` on the host that has it.",
                )
                continue
            if rec is None:
                await reject_run(
                    run.id,
                    f"scanner-agent on {self.agent.name} has no scan {scan_id!r} in its journal; "
                    "start scans by placing them in the scanner's folder or with `scanner-agent process`.",
                )
                continue
            if rec.id in self.dispatcher.in_flight:
                continue
            if rec.state in ("held", "failed", "processing", "ready"):
                j.transition(
                    rec.id,
                    "ready",
                    reason="retry requested in the Prefect UI",
                    flow_run_id=str(run.id),
                    ready_at=time.time(),
                )
            else:  # stored or quarantined: the flow says so on the run (a no-op that explains itself)
                j.update(rec.id, flow_run_id=str(run.id))
            log.info("retry requested in the Prefect UI for %s (run %s)", Path(rec.path).name, run.id)
            self.dispatcher.submit(rec.id, time.time())

    # --- the main loop ---------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Main thread, every second: systemd's watchdog and the live numbers ``status`` shows.

        The watchdog is pinged only while the watcher is healthy and the maintenance thread is
        making progress, so a hung agent is restarted; slow work (a sheet read, SMTP) never
        delays the ping, because it runs on the maintenance thread."""
        stalled = time.monotonic() - self._maintained > MAINTENANCE_STALL_SECONDS
        if self.watcher.healthy() and not stalled:
            sdnotify.watchdog()
        elif stalled and not self._stall_logged:
            self._stall_logged = True
            log.error(
                "the maintenance loop has not completed for %.0f s; letting systemd's watchdog restart the agent",
                MAINTENANCE_STALL_SECONDS,
            )
        # `status` reads queue and in-flight from the journal: publish them when they change, not
        # only every 30 s (else a finished scan is reported in flight for up to half a minute).
        busy = (self.dispatcher.queue_length, sorted(self.dispatcher.in_flight))
        if busy != self._last_busy:
            self._last_busy = busy
            self.agent.journal.set_health(queue=busy[0], in_flight=busy[1])

    def _maintain(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.tick()
            except sqlite3.Error as exc:
                log.exception("maintenance pass failed: the journal cannot be written")
                self._journal_broken(exc)
            except Exception:
                log.exception("maintenance pass failed")
            self._maintained = time.monotonic()

    def tick(self, now: float | None = None) -> None:
        """One maintenance pass: held and transient re-checks every second, slower timers every 30 s."""
        now = time.time() if now is None else now
        recheck_due(self.agent, self.dispatcher, now)
        if now - self._last_slow >= 30:
            self._last_slow = now
            slow_timers(self.agent, now)
            h = self.watcher.health()
            self.agent.journal.set_health(
                queue=self.dispatcher.queue_length,
                in_flight=self.dispatcher.in_flight,
                observer=h.observer,
                watcher_alive=h.alive,
                last_full_scan=h.last_full_scan,
                pending=h.pending,
                watcher_error=h.last_error,
            )
            c = self.agent.journal.counts()
            sdnotify.status(
                f"stored {c['stored']}, held {c['held']}, failed {c['failed']}, "
                f"queue {self.dispatcher.queue_length}, in flight {len(self.dispatcher.in_flight)}"
            )


def undecodable_name(path: Path) -> str | None:
    """``path`` with its undecodable bytes shown as escapes, if its name is not valid UTF-8; else None.

    Such a name (a share mounted with the wrong charset) cannot go into the journal, Prefect or an
    alert, which all carry text: the scan is refused by name instead of failing on every listing."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return None


def recheck_due(agent: Agent, dispatcher: Dispatcher, now: float) -> int:
    """Held scans whose sheet row is now complete, and transient failures whose time has come,
    go back to ``ready``. A held scan whose row is still missing waits another interval: no
    flow run per check, so the UI shows one run per decision, not one per poll."""
    queued = 0
    for rec in agent.journal.due(now):
        if rec.state == "held" and rec.barcode:
            try:
                lookup(agent.sheet.table(want=rec.barcode), rec.barcode)
            except HeldScan as exc:
                agent.journal.transition(
                    rec.id,
                    "held",
                    reason=exc.message,
                    kind=exc.kind,
                    expect=("held",),
                    next_check=now + agent.cfg.sheet.recheck_seconds,
                )
                continue
            except ScanError as exc:  # sheet unreachable and no cache: try again later
                agent.journal.transition(
                    rec.id,
                    "held",
                    reason=exc.message,
                    kind=exc.kind,
                    expect=("held",),
                    next_check=now + agent.cfg.sheet.recheck_seconds,
                )
                continue
        reason = "sheet row complete" if rec.state == "held" else f"retrying after: {rec.reason}"
        agent.journal.transition(rec.id, "ready", reason=reason, expect=(rec.state,), ready_at=now)
        dispatcher.submit(rec.id, now)
        queued += 1
    return queued


def slow_timers(agent: Agent, now: float) -> None:
    """Every ~30 s: re-send queued alerts, held-too-long, rescan requests from the sheet, missing rescans."""
    j = agent.journal
    try:
        agent.alerter.retry_pending()
    except Exception:
        log.exception("retrying queued alerts failed")
    limit = agent.cfg.sheet.hold_alert_hours * 3600
    for rec in j.in_state("held"):
        if rec.held_since and now - rec.held_since >= limit and not rec.details.get("hold_alerted"):
            agent.alert(
                "held_too_long",
                f"{Path(rec.path).name} has been held for {(now - rec.held_since) / 3600:.1f} h: "
                f"{rec.reason}",
                barcode=rec.barcode,
                file=Path(rec.path).name,
                run_url=agent.run_url(rec.flow_run_id),
                details={"held since": time.ctime(rec.held_since)},
            )
            j.update(rec.id, details={"hold_alerted": now})
    sweep_rescan_requests(agent, now)
    # The scanner's daily table in Prefect's Artifacts page: at most every 5 min, in the background.
    from scanner_agent.orchestration.daily_report import maybe_publish as publish_daily_report

    publish_daily_report(agent.name, agent.cfg.journal.path)
    for req in j.overdue_rescans(now):
        agent.alert(
            "missing_rescan",
            f"A rescan of {req['barcode']} was requested by {req['requested_by']} on "
            f"{time.ctime(req['requested_at'])} ({req.get('reason') or 'no reason given'}) and has not arrived "
            f"within {agent.cfg.rescans.deadline_hours:g} h.",
            barcode=req["barcode"],
            details={"requested by": req["requested_by"], "requested": time.ctime(req["requested_at"])},
        )
        j.mark_rescan_alerted(req["barcode"])


def sweep_rescan_requests(agent: Agent, now: float) -> int:
    """Rows whose rescan column says yes become rescan requests (once per barcode)."""
    column = agent.cfg.rescans.column
    try:
        table = agent.sheet.table()
    except ScanError:
        return 0
    if column not in table.columns:
        return 0
    known = {r["barcode"] for r in agent.journal.open_rescans()}
    added = 0
    for barcode, row in table.rows.items():
        value = (row.values.get(column) or "").strip().lower()
        if value in _TRUE_WORDS and barcode not in known and not agent.journal.rescan_known(barcode):
            notes = row.values.get("Notes", "")
            agent.journal.request_rescan(
                barcode,
                by=f"the sheet ({column}, row {row.row_number})",
                reason=notes or value,
                deadline=now + agent.cfg.rescans.deadline_hours * 3600,
            )
            added += 1
    return added


def finish_source_removal(agent: Agent, rec: Any) -> None:
    """A stored scan whose source is still on the scanner (the agent stopped between the two steps)."""
    unit = ScanUnit.from_path(rec.path)
    if not unit.exists():
        agent.journal.update(rec.id, source_removed=1)
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
        sidecar_path = dest.with_suffix(".json") if dest.suffix else dest.parent / f"{dest.name}.json"
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            sidecar = {"barcode": rec.barcode, "scanner": agent.name, "source_path": rec.path}
        result = storage.place_scan(
            unit, dest.parent, dest.name, sidecar=sidecar, storage_root=agent.cfg.storage.root, margin=0
        )
        storage.remove_source(unit, result)
        agent.journal.update(rec.id, source_removed=1)
        log.info("removed %s (stored earlier as %s, verified again)", rec.path, rec.dest)
    except (OSError, ScanError) as exc:
        log.warning("could not remove stored source %s: %s", rec.path, exc)


def mark_stale_runs_crashed(agent: Agent, run_ids: list[str], *, message: str | None = None) -> int:
    """Mark this scanner's runs Crashed: the given ids, plus any of its runs still Running/Pending
    from before this process started (a killed agent cannot say so itself)."""
    import asyncio

    try:
        return asyncio.run(_mark_crashed(agent, run_ids, message))
    except Exception as exc:
        log.warning("could not mark stale Prefect runs Crashed: %s", exc)
        return 0


async def _mark_crashed(agent: Agent, run_ids: list[str], message: str | None) -> int:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed, Crashed

    msg = (
        message
        or "scanner-agent stopped while this run was active (killed or power loss); the scan was resumed"
    )
    n = 0
    async with get_client() as client:
        ids = {UUID(i) for i in run_ids}
        if message is None:
            from datetime import datetime

            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[agent.cfg.flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                    ),
                    start_time=FlowRunFilterStartTime(
                        before_=datetime.fromtimestamp(agent.started_at, tz=UTC)
                    ),
                ),
                limit=200,
            )
            ids |= {r.id for r in runs}
        for rid in ids:
            try:
                run = await client.read_flow_run(rid)
                if run.state and run.state.is_final():
                    continue
                rec = agent.journal.by_flow_run(str(rid))
                if rec is not None and rec.state == "stored":
                    # Stored and recorded; the agent only died before Prefect was told. "Crashed"
                    # would send a person looking for a resumed run that will never come.
                    await client.set_flow_run_state(
                        rid,
                        Completed(
                            message=f"Stored {rec.barcode or Path(rec.path).name} as {rec.dest} (the agent stopped "
                            "before it could report it)"
                        ),
                        force=True,
                    )
                    continue
                await client.set_flow_run_state(rid, Crashed(message=msg), force=True)
                n += 1
            except Exception:
                log.debug("could not mark run %s crashed", rid, exc_info=True)
    return n
