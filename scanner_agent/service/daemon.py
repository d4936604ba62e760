"""The long-running agent: watcher -> intake -> journal -> dispatcher, with recovery and maintenance.

Start-up resumes what a previous process left unfinished (``recovery``). The main loop pings
systemd's watchdog only while the watcher is healthy and the maintenance thread
(``maintenance``) is making progress, and publishes the queue for ``scanner-agent status``.
SIGTERM/SIGINT stop intake, let in-flight transfers finish within ``stop_timeout_seconds`` and
exit 0; anything cut short resumes on the next start. A journal that cannot be written stops the
agent with exit status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from scanner_agent.core.states import ScanState
from scanner_agent.scanunit import ScanUnit
from scanner_agent.service.bootstrap import Services
from scanner_agent.service.dispatcher import Dispatcher
from scanner_agent.service.fixity import FixityTimer
from scanner_agent.service.intake import offer
from scanner_agent.service.lock import JournalLock
from scanner_agent.service.maintenance import (
    MAINTENANCE_STALL_SECONDS,
    Maintenance,
)
from scanner_agent.service.recovery import finish_source_removal, mark_stale_runs_crashed, recover
from scanner_agent.service.retry_requests import RetryPoller
from scanner_agent.systemd import notify as sdnotify

log = logging.getLogger(__name__)


class Daemon:
    """``scanner-agent run``: one scanner's watcher, dispatcher and timers, under the journal's lock."""

    def __init__(self, services: Services, *, on_event: Callable[[str], None] | None = None) -> None:
        from scanner_agent.watch import ScanWatcher

        self.services = services
        cfg = services.cfg
        self.dispatcher = Dispatcher(
            services, cfg.scanner.max_parallel, on_journal_error=self._journal_broken
        )
        self._journal_error: sqlite3.Error | None = None
        self.watcher = ScanWatcher(
            cfg.scanner.watch,
            self._on_ready,
            patterns=[*cfg.scanner.patterns, *cfg.scanner.passthrough_patterns],
            observer=cfg.scanner.observer,
            settle_seconds=cfg.scanner.settle_seconds,
            rescan_seconds=cfg.scanner.rescan_seconds,
            poll_interval=cfg.scanner.poll_interval,
            on_health_change=self._on_watcher_health,
            completion_marker=cfg.scanner.completion_marker,
        )
        # [transfer] yield_while_scanning: copies slow down while a scan here is still growing.
        services.transfer_gate.follow(
            self.watcher.growing,
            stall_seconds=cfg.transfer.stall_hours * 3600,
            on_stall=self._scan_never_finished,
            written_lately=self.watcher.written_lately,
        )
        self.stop_event = threading.Event()
        self.maintenance = Maintenance(
            services, self.dispatcher, self.watcher, self.stop_event, on_journal_error=self._journal_broken
        )
        self._lock = JournalLock(cfg.journal.path)
        self._say = on_event or (lambda msg: None)
        self._last_busy: tuple[int, list[int]] | None = None
        self._watcher_alerted = False
        self._stall_logged = False

    # --- life cycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``stop_event``). Returns the exit code."""
        self._lock.acquire()
        metrics = self._serve_metrics()  # a busy or malformed [metrics] listen: ConfigError, exit 78
        try:
            self._install_signals()
            try:
                self.startup()
                self.maintenance.start()
                FixityTimer(
                    self.services.cfg,
                    self.services.alert,
                    self.stop_event,
                    report=self.services.reports.report,
                ).start()
                while not self.stop_event.wait(1.0):
                    self.heartbeat()
            except sqlite3.Error as exc:
                return self._journal_failed(exc)
            if self._journal_error is not None:
                return self._journal_failed(self._journal_error)
            return self.shutdown()
        finally:
            if metrics is not None:
                metrics.close()
            self._lock.release()

    def _serve_metrics(self) -> Any:
        """``[metrics] listen``: the Prometheus endpoint, fed by the dispatcher; None when off."""
        listen = self.services.cfg.metrics.listen
        if not listen:
            return None
        from scanner_agent.service.metrics import AgentMetrics

        metrics = AgentMetrics(self.services, dispatcher=self.dispatcher, watcher=self.watcher)
        try:
            metrics.serve(listen)
        except BaseException:
            self._lock.release()
            raise
        self.dispatcher.on_finished = metrics.scan_finished
        return metrics

    def _journal_broken(self, exc: sqlite3.Error) -> None:
        """Any thread: a journal write failed. The main loop then stops the agent (``_journal_failed``)."""
        if self._journal_error is None:
            self._journal_error = exc
        self.stop_event.set()

    def _journal_failed(self, exc: sqlite3.Error) -> int:
        """The journal cannot be written (its disk is full, read-only or failing): stop rather than move
        scans without a record. Exit status 1, so systemd restarts the agent, which resumes what was
        cut short."""
        log.critical(
            "cannot write the journal %s (%s): stopping, so that no scan is moved without a record. "
            "Free space on (or repair) the journal's disk; the agent resumes unfinished scans when it "
            "starts again.",
            self.services.cfg.journal.path,
            exc,
        )
        self.stop_event.set()
        self.watcher.stop()
        # Workers must be told to stop, or the process cannot exit (they wait on the queue in threads).
        self.dispatcher.stop(min(30.0, self.services.cfg.scanner.stop_timeout_seconds))
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
        s = self.services
        cfg = s.cfg
        recover(s)
        if s.events is not None:
            s.events.start()  # Prefect events an earlier run left queued go out now
        self.dispatcher.start()
        for rec in s.journal.ready():
            self.dispatcher.submit(rec.id, rec.ready_at)
        self.watcher.start()
        RetryPoller(s, self.dispatcher, self.stop_event).start()
        health = self.watcher.health()
        s.journal.set_health(
            pid=os.getpid(),
            started_at=time.time(),
            observer=health.observer,
            watching_since=health.watching_since,
            watch=str(cfg.scanner.watch),
            stopped_at=None,
        )
        sdnotify.ready(f"watching {cfg.scanner.watch} ({health.observer})")
        self._say(f"watching {cfg.scanner.watch} with {health.observer}")
        log.info("scanner-agent for %s watching %s", s.name, cfg.scanner.watch)

    def shutdown(self) -> int:
        """Stop intake, give in-flight scans ``stop_timeout_seconds``, record the stop. Returns 0."""
        s = self.services
        timeout = s.cfg.scanner.stop_timeout_seconds
        inflight = self.dispatcher.in_flight
        sdnotify.stopping(f"finishing {len(inflight)} scan(s)")
        self.watcher.stop()
        if inflight:
            log.info("waiting up to %.0f s for %d scan(s) in flight", timeout, len(inflight))
        if not self.dispatcher.stop(timeout):
            # Past the bound: the copies are in .incoming (never visible), the rows stay
            # `processing`, and the next start resumes them. Say so in Prefect now.
            left = [s.journal.get(i) for i in self.dispatcher.in_flight]
            mark_stale_runs_crashed(
                s,
                [r.flow_run_id for r in left if r and r.flow_run_id],
                message="scanner-agent stopped before this scan finished; "
                "it resumes when the agent starts again",
            )
            log.warning("stopped with %d scan(s) unfinished; they resume on the next start", len(left))
        s.journal.set_health(stopped_at=time.time(), queue=0, in_flight=[])
        return 0

    # --- events --------------------------------------------------------------------------------

    def _on_ready(self, unit: ScanUnit) -> None:
        """Watcher thread: a scan looks complete. Record it and queue it; nothing slow here."""
        try:
            got = offer(self.services, self.dispatcher, unit)
        except sqlite3.Error as exc:  # not recorded: the watcher offers it again; the agent stops meanwhile
            self._journal_broken(exc)
            raise
        if got.bad_name is not None:  # the watcher offers it again only if it changes (or is renamed)
            log.error(
                "%s: the name is not valid UTF-8, so the scan cannot be recorded; it stays where it is",
                got.bad_name,
            )
            self.services.alert(
                "scan_error",
                f"{got.bad_name}: the name is not valid UTF-8 text, so the scan cannot be "
                "recorded or named. It stays on the scanner.",
                file=got.bad_name.rsplit("/", 1)[-1],
                action="Rename the file (or its folder) with UTF-8 characters; it is picked up once renamed.",
            )
        elif got.new:
            self._say(f"ready: {unit.name}")
        elif (
            got.record is not None and got.record.state == ScanState.STORED and not got.record.source_removed
        ):
            finish_source_removal(self.services, got.record)

    def _scan_never_finished(self, unit: object, seconds: float) -> None:
        path = str(getattr(unit, "primary", unit))
        self.services.alert(
            "scan_never_finished",
            f"{path} has kept growing for {seconds / 3600:.1f} h and never settled; "
            "transfers stay slowed while it grows.",
            file=path,
        )

    def _on_watcher_health(self, health: Any) -> None:
        s = self.services
        s.journal.set_health(
            observer=health.observer,
            watcher_alive=health.alive,
            watcher_error=health.last_error,
            watcher_restarts=health.restarts,
        )
        if self.stop_event.is_set():
            return  # the daemon is stopping its own watcher: no fault to alert a person about
        watch = str(s.cfg.scanner.watch)
        if not health.alive and not self._watcher_alerted:
            self._watcher_alerted = True
            s.alert(
                "watcher_unhealthy",
                f"The watcher of {watch} stopped: "
                f"{health.last_error or 'observer not running'}. New scans are not being noticed.",
                file=watch,
            )
        elif health.alive and self._watcher_alerted:
            self._watcher_alerted = False
            s.alert(
                "watcher_unhealthy", f"The watcher of {watch} is running again.", recovery=True, file=watch
            )

    # --- the main loop ---------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Main thread, every second: systemd's watchdog and the live numbers ``status`` shows.

        The watchdog is pinged only while the watcher is healthy and the maintenance thread is
        making progress, so a hung agent is restarted; slow work (a sheet read, SMTP) never
        delays the ping, because it runs on the maintenance thread."""
        stalled = self.maintenance.stalled()
        if self.watcher.healthy() and not stalled:
            sdnotify.watchdog()
        elif stalled and not self._stall_logged:
            self._stall_logged = True
            log.error(
                "the maintenance loop has not completed for %.0f s; "
                "letting systemd's watchdog restart the agent",
                MAINTENANCE_STALL_SECONDS,
            )
        # `status` reads queue and in-flight from the journal: publish them when they change, not
        # only every 30 s (else a finished scan is reported in flight for up to half a minute).
        busy = (self.dispatcher.queue_length, sorted(self.dispatcher.in_flight))
        if busy != self._last_busy:
            self._last_busy = busy
            self.services.journal.set_health(queue=busy[0], in_flight=busy[1])

    def tick(self, now: float | None = None) -> None:
        """One maintenance pass now (``Maintenance.tick``)."""
        self.maintenance.tick(now)
