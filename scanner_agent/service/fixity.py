"""Fixity passes: re-hash stored files against their sidecars, for ``verify`` and in the background.

``verify_pass`` is one pass (what ``scanner-agent verify`` runs, and each turn of the timer): list
storage (``storage.inventory``), check the files selected, record each outcome and the pass in
the journal's file (``journal.FixityLog``). ``FixityTimer`` is the daemon's background thread:
every file stored by this scanner whose last check (or its storing) is ``verify_every_days`` old
is re-hashed, at most ``verify_mb_per_second`` (a token bucket, so verification never competes
with transfers), and a file newly found changed or missing alerts once, with both hashes.
Scans stored by other scanners on a shared share are left to their own agents.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner_agent.config import AgentConfig
from scanner_agent.core.outcomes import ReportKind, ScanReport
from scanner_agent.journal import FixityLog
from scanner_agent.storage import Expected, FileCheck, TokenBucket, inventory, share_gone, walk_checks

log = logging.getLogger(__name__)

#: Between background passes: never more often than this (a pass lists all of storage) ...
MIN_WAIT_SECONDS = 60.0
#: ... and at least daily, so newly stored scans get their turn; an unmounted share is looked at hourly.
MAX_WAIT_SECONDS = 86400.0
GONE_WAIT_SECONDS = 3600.0
_ALERT_KINDS = {"mismatched": "stored_file_changed", "missing": "stored_file_missing"}


@dataclass
class PassResult:
    """One verification pass: every file checked, the problems found, or why the share was not read."""

    started: float
    finished: float = 0.0
    checks: list[FileCheck] = field(default_factory=list)
    record_problems: list[dict[str, str]] = field(default_factory=list)
    share_gone: str | None = None
    skipped: int = 0  # files listed but not due (background) or older than --since

    @property
    def problems(self) -> list[dict[str, Any]]:
        files = [
            {
                "path": c.path,
                "problem": c.outcome,
                "detail": c.detail,
                "expected": c.expected,
                "found": c.found,
            }
            for c in self.checks
            if not c.ok
        ]
        return files + [dict(p) for p in self.record_problems]

    @property
    def nbytes(self) -> int:
        return sum(c.size for c in self.checks)

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.checks)


def verify_pass(
    root: Path,
    marker: str,
    fixity: FixityLog | None,
    *,
    by: str,
    select: Callable[[Expected], bool] | None = None,
    bucket: TokenBucket | None = None,
    on_check: Callable[[FileCheck], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> PassResult:
    """List storage, check the selected files, record outcomes and the pass in ``fixity``."""
    result = PassResult(started=clock())
    run_id = fixity.start_run(by, result.started) if fixity is not None else 0
    result.share_gone = share_gone(root, marker)
    if result.share_gone is None:
        inv = inventory(root)
        result.share_gone = share_gone(root, marker)  # it may have gone while listing
    if result.share_gone is None:
        result.record_problems = inv.problems
        todo = [e for e in inv.files if select is None or select(e)]
        result.skipped = len(inv.files) - len(todo)
        for got in walk_checks(root, marker, todo, bucket=bucket):
            if isinstance(got, str):
                result.share_gone = got
                break
            result.checks.append(got)
            if fixity is not None:
                fixity.record(got.path, got.outcome, got.expected, got.found, got.detail, clock())
            if on_check is not None:
                on_check(got)
    result.finished = clock()
    if fixity is not None:
        fixity.finish_run(
            run_id,
            result.finished,
            files=len(result.checks),
            nbytes=result.nbytes,
            verified=result.count("verified"),
            problems=result.problems,
            share_gone=result.share_gone,
        )
    return result


class FixityTimer:
    """The daemon's background verification thread (off when ``verify_every_days`` is 0)."""

    def __init__(
        self,
        cfg: AgentConfig,
        alert: Callable[..., Any],
        stop_event: threading.Event,
        *,
        clock: Callable[[], float] = time.time,
        report: Callable[[ScanReport], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.alert = alert
        #: Tells downstream (Prefect events) of a stored file that no longer matches its record.
        self.report = report
        self.stop_event = stop_event
        self.clock = clock
        self.every = cfg.storage.verify_every_days * 86400
        self.bucket = TokenBucket(cfg.storage.verify_mb_per_second * 1e6, stop=stop_event)
        self._next_due: float | None = None

    def start(self) -> None:
        if self.every <= 0:
            log.info("background verification is off (storage.verify_every_days = 0)")
            return
        threading.Thread(target=self._loop, name="fixity", daemon=True).start()

    def _loop(self) -> None:
        fixity = FixityLog(self.cfg.journal.path)
        try:
            while not self.stop_event.is_set():
                try:
                    wait = self.run_pass(fixity)
                except Exception:
                    log.exception("background verification pass failed")
                    wait = GONE_WAIT_SECONDS
                self.stop_event.wait(wait)
        finally:
            fixity.close()

    def _due(self, last: dict[str, tuple[float, str]], now: float) -> Callable[[Expected], bool]:
        def due(e: Expected) -> bool:
            if e.sidecar is None or e.scanner != self.cfg.scanner.name:
                return False  # another scanner's scan, or one with no record: `verify` reports those
            seen = last.get(str(e.path))
            # A file was verified byte for byte when it was stored: its first turn is `every` later.
            base = seen[0] if seen is not None else e.stored_at
            if base is not None and now - base < self.every:
                nxt = base + self.every
                self._next_due = nxt if self._next_due is None else min(self._next_due, nxt)
                return False
            return True

        return due

    def run_pass(self, fixity: FixityLog) -> float:
        """Check every file whose turn has come; return the seconds until the next pass."""
        now = self.clock()
        last = fixity.last_checked()
        self._next_due = None

        def on_check(c: FileCheck) -> None:
            kind = _ALERT_KINDS.get(c.outcome)
            previous = last.get(c.path, (0.0, "verified"))[1]
            if kind is None or previous == c.outcome:
                return  # alerted when it was first found
            self.alert(
                kind,
                f"{c.path}: {c.detail}" + (f" (sidecar {c.sidecar})" if c.sidecar else ""),
                barcode=c.barcode,
                file=c.path,
                details={"expected sha256": c.expected or "-", "found sha256": c.found or "(no file)"},
            )
            if self.report is not None:
                self.report(
                    ScanReport(
                        ReportKind.VERIFY_FAILED,
                        self.cfg.scanner.name,
                        c.barcode,
                        self.clock(),
                        f"verify failed: {c.outcome}",
                        stored_path=c.path,
                        sha256=c.expected,
                        size=c.size or None,
                        reason=c.detail,
                        extra={"found_sha256": c.found} if c.found else {},
                    )
                )

        s = self.cfg.storage
        result = verify_pass(
            s.root,
            s.marker_file,
            fixity,
            by="background",
            select=self._due(last, now),
            bucket=self.bucket,
            on_check=on_check,
            clock=self.clock,
        )
        if result.share_gone:
            log.warning("background verification: %s; trying again in an hour", result.share_gone)
            return GONE_WAIT_SECONDS
        if result.checks:
            log.info(
                "background verification: %d file(s) checked, %d problem(s)",
                len(result.checks),
                len(result.problems),
            )
        wait = MAX_WAIT_SECONDS if self._next_due is None else self._next_due - self.clock()
        return min(MAX_WAIT_SECONDS, max(MIN_WAIT_SECONDS, wait))
