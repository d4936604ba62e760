"""How ``scanner-agent process`` shows a backfill going: a live bar on a terminal, plain lines elsewhere.

On a terminal: one rich progress bar with scans done of total, bytes done of total, the rate and
the time left, and each scan's outcome line printed above it as the scan ends. Anywhere else
(a pipe, a log file, cron) only those outcome lines, one per scan, as each ends: nothing a log
would keep redrawing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol

from scanner_agent.core.states import ScanState
from scanner_agent.journal import ScanRecord


class Reporter(Protocol):
    def done(self, rec: ScanRecord, label: str) -> None: ...


def outcome_line(rec: ScanRecord, label: str) -> str:
    """``stored      <path> -> <dest>``, or the state and its reason."""
    where = rec.dest if rec.state == ScanState.STORED else rec.reason
    return f"{rec.state:<11} {label} -> {where}"


class PlainLines:
    """One line per scan as it ends."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def done(self, rec: ScanRecord, label: str) -> None:
        print(outcome_line(rec, label), file=self.out, flush=True)


class LiveBar:
    """A rich progress bar counting scans and bytes; outcome lines scroll above it."""

    def __init__(self, out: IO[str], scans: int, total_bytes: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.scans = scans
        self.finished = 0
        self.progress = Progress(
            TextColumn("[bold]backfill"),
            BarColumn(),
            TextColumn("{task.fields[scans]} scans"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=out),
            transient=False,
        )
        self.task = self.progress.add_task("backfill", total=max(total_bytes, 1), scans=f"0/{scans}")

    def done(self, rec: ScanRecord, label: str) -> None:
        self.finished += 1
        self.progress.console.print(outcome_line(rec, label), markup=False, highlight=False)
        self.progress.update(self.task, advance=rec.size, scans=f"{self.finished}/{self.scans}")


@contextmanager
def backfill_progress(out: IO[str], scans: int, total_bytes: int, *, live: bool) -> Iterator[Reporter]:
    """A live bar when ``live`` (the output is a terminal), else plain lines."""
    if not live:
        yield PlainLines(out)
        return
    bar = LiveBar(out, scans, total_bytes)
    with bar.progress:
        yield bar
