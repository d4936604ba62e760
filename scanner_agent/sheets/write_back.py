"""Sheet write-back: each scan outcome's status, stored path and time written into the lab's Google Sheet.

``SheetWriteBack`` is a report sink (``core.outcomes.ReportSink``). ``report`` only queues the cells in
the journal's file (``journal.writeback``), so storing never waits on Google. ``flush`` runs at most once
per ``refresh_seconds`` window, off the scan's thread (``kick`` starts it; the daemon's maintenance
timer kicks every second): it reads the worksheet again, finds each barcode's row *now* (staff may have
sorted the sheet), and sets just those cells in ONE ``values.batchUpdate`` (RAW). A failed flush leaves
the backlog queued for the next window; ``status`` shows it. A written cell is not written again until
the barcode's next outcome, so a cell staff edit by hand stays as they left it.

With a CSV sheet nothing is written (the CSV is the lab's read-only export): ``CsvWriteBackPreview``
logs (and the demo prints) the cells it would write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scanner_agent.config import AgentConfig
from scanner_agent.core.outcomes import ScanReport
from scanner_agent.core.sheet_cells import (
    RESCAN,
    STATUS,
    STORED_AS,
    STORED_AT,
    Cell,
    SheetLayout,
    WritePlan,
    describe_row,
    outcome_cells,
    plan_writes,
    read_layout,
)
from scanner_agent.journal import QueuedCell, WritebackQueue
from scanner_agent.sheets.csv_source import read_csv_values

log = logging.getLogger(__name__)

#: ``(kind, message, **alert fields)``: the agent's ``Services.alert``.
AlertFn = Callable[..., Any]


def _local_text(at: float) -> tuple[str, str]:
    """(time, date) as a person reads them in the sheet: local time with its UTC offset."""
    t = time.localtime(at)
    return time.strftime("%Y-%m-%d %H:%M:%S %z", t), time.strftime("%Y-%m-%d", t)


def cells_for(outcome: ScanReport) -> list[Cell]:
    at_text, date_text = _local_text(outcome.at)
    return outcome_cells(outcome, at_text=at_text, date_text=date_text)


def column_names(status: str, stored_as: str, stored_at: str, rescan: str) -> dict[str, str]:
    """role -> configured column name."""
    return {STATUS: status, STORED_AS: stored_as, STORED_AT: stored_at, RESCAN: rescan}


def _lines(plan: WritePlan, columns: Mapping[str, str]) -> list[str]:
    """One line per row written: ``row 4 620995: Scan Status="stored", ...``."""
    by_row: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for w in plan.writes:
        by_row.setdefault((w.row, w.cell.barcode), []).append((columns[w.cell.role], w.value))
    return [describe_row(b, row, cells) for (row, b), cells in sorted(by_row.items())]


class SheetWriteBack:
    """The Google Sheet write-back sink: queue on ``report``, one batched write per window on ``flush``."""

    def __init__(
        self,
        session: Any,  # sheets.google_session.GoogleSession built with write=True
        queue: WritebackQueue,
        *,
        columns: Mapping[str, str],
        barcode_column: str = "Barcode",
        refresh_seconds: float = 60,
        alert: AlertFn | None = None,
        clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        self.session = session
        self.queue = queue
        self.columns = dict(columns)
        self.barcode_column = barcode_column
        self.refresh_seconds = float(refresh_seconds)
        self._alert = alert
        self._clock = clock
        #: Flush on a thread of its own when kicked; tests set False and call ``flush`` themselves.
        self.background = background
        self._flush_lock = threading.Lock()
        self._next_at = 0.0
        self._warned: str | None = None  # the sheet problem already logged (one warning, not one per scan)
        self._alerted: set[tuple[str, tuple[int, ...]]] = set()
        self._last_error: str | None = None
        self.batch_updates = 0

    def __repr__(self) -> str:
        return f"SheetWriteBack({self.session.where()})"

    def close(self) -> None:
        self.queue.close()

    def report(self, outcome: ScanReport) -> None:
        cells = cells_for(outcome)
        if not cells:
            return
        self.queue.put(cells, self._clock())
        self.kick()

    def due(self) -> bool:
        return self._clock() >= self._next_at and self.queue.has_pending()

    def kick(self) -> None:
        """Start a flush on its own thread if one is due and none is running; never blocks."""
        if not self.background or not self._flush_lock.acquire(blocking=False):
            return
        started = False
        try:
            if self.due():
                self._next_at = self._clock() + self.refresh_seconds
                threading.Thread(
                    target=self._flush_then_release, name="sheet-write-back", daemon=True
                ).start()
                started = True
        finally:
            if not started:
                self._flush_lock.release()

    def _flush_then_release(self) -> None:
        try:
            self._flush()
        except Exception:  # a bug here must not kill the agent; the backlog stays for the next window
            log.exception("sheet write-back failed")
        finally:
            self._flush_lock.release()

    def flush(self) -> int:
        """Write what is queued if this window has not written yet; the number of cells written."""
        if not self._flush_lock.acquire(blocking=False):
            return 0  # another flush is running; it takes this window
        try:
            if not self.due():
                return 0
            self._next_at = self._clock() + self.refresh_seconds
            return self._flush()
        finally:
            self._flush_lock.release()

    def _flush(self) -> int:
        from scanner_agent.sheets.google_session import ReadFailed

        queued = {(q.cell.barcode, q.cell.role): q for q in self.queue.pending()}
        try:
            values, _ = self.session.fetch_once()
        except ReadFailed as e:
            self._failed(e.message)
            return 0
        layout = read_layout(values, barcode_column=self.barcode_column, columns=self.columns)
        if self._sheet_unusable(layout):
            return 0
        plan = plan_writes(layout, [q.cell for q in queued.values()])
        self._alert_duplicates(plan)
        dropped = [queued[(c.barcode, c.role)] for c in plan.dropped]
        if dropped:
            log.info("sheet write-back: %d cell(s) have no row or column in the sheet; dropped", len(dropped))
            self.queue.remove(dropped)
        if not plan.writes:
            return 0
        title = self.session.title or ""
        try:
            self.batch_updates += 1
            self.session.write_cells(title, [(w.a1, w.value) for w in plan.writes])
        except ReadFailed as e:
            self._failed(e.message)
            return 0
        written: list[QueuedCell] = [queued[(w.cell.barcode, w.cell.role)] for w in plan.writes]
        self.queue.remove(written)
        if self._last_error:
            log.info("sheet write-back works again (%s)", self.session.where(title))
            self._last_error = None
        for line in _lines(plan, self.columns):
            log.info("sheet write-back: %s", line)
        return len(written)

    def _failed(self, message: str) -> None:
        self.queue.failed(message)
        level = logging.WARNING if message != self._last_error else logging.DEBUG
        self._last_error = message
        log.log(level, "sheet write-back failed, retried in %.0fs: %s", self.refresh_seconds, message)

    def _sheet_unusable(self, layout: SheetLayout) -> bool:
        problem = layout.problem
        if problem is None and layout.missing:
            problem = (
                f"{self.session.where()} has no column {', '.join(repr(m) for m in layout.missing)}; add "
                "them to the header (row 2) or set [sheet] write_back = false"
            )
        if problem is None:
            self._warned = None
            return False
        if problem != self._warned:  # once, not once per scan or per window
            log.warning("sheet write-back skipped: %s. Status cells stay queued until it is fixed.", problem)
            self._warned = problem
        return True

    def _alert_duplicates(self, plan: WritePlan) -> None:
        for barcode, rows in plan.duplicates.items():
            if (barcode, rows) in self._alerted:
                continue
            self._alerted.add((barcode, rows))
            msg = (
                f"Barcode {barcode} is in rows {', '.join(map(str, rows))} of {self.session.where()}; its "
                "scan status was not written. Keep one row per barcode."
            )
            log.warning("sheet write-back: %s", msg)
            if self._alert is not None:
                self._alert("sheet_malformed", msg, barcode=barcode)

    def check(self) -> list[str]:
        """Problems for ``scanner-agent check``: status columns missing, and read-but-not-write access.

        Writability is tested without changing data: the barcode column's header cell is written back
        with the value just read (RAW), in one ``values.batchUpdate``; a 403 means read-only access."""
        from scanner_agent.sheets.google_session import ReadFailed

        try:
            values, _ = self.session.fetch_once()
        except ReadFailed as e:
            return [f"sheet write-back: {e.message}"]
        layout = read_layout(values, barcode_column=self.barcode_column, columns=self.columns)
        if layout.problem:
            return [f"sheet write-back: {layout.problem}"]
        problems = []
        if layout.missing:
            problems.append(
                f"sheet write-back: {self.session.where()} has no column "
                f"{', '.join(repr(m) for m in layout.missing)} in its header (row 2); add them"
            )
        header = values[1]
        bc = next(i for i, h in enumerate(header) if h.strip().casefold() == self.barcode_column.casefold())
        from scanner_agent.core.sheet_table import column_letter

        try:
            self.session.write_cells(self.session.title or "", [(f"{column_letter(bc)}2", header[bc])])
        except ReadFailed as e:
            problems.append(f"sheet write-back: {e.message}")
        return problems


class CsvWriteBackPreview:
    """With a CSV sheet and ``write_back = true``: say what would be written; the CSV is never changed."""

    def __init__(
        self,
        csv_path: Path,
        *,
        columns: Mapping[str, str],
        barcode_column: str = "Barcode",
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.columns = dict(columns)
        self.barcode_column = barcode_column
        #: Also print each line (the demo sets this; logs alone are quiet there).
        self.echo = echo
        self._warned = False

    def __repr__(self) -> str:
        return f"CsvWriteBackPreview({self.csv_path})"

    def kick(self) -> None:
        """Nothing is queued: each line is logged when its outcome is reported."""

    def close(self) -> None:
        pass

    def report(self, outcome: ScanReport) -> None:
        cells = cells_for(outcome)
        if not cells:
            return
        try:
            values = read_csv_values(self.csv_path)
        except Exception as e:  # a preview must never disturb the scan
            log.debug("sheet write-back preview: cannot read %s: %s", self.csv_path, e)
            return
        # The CSV stand-in need not carry the status columns: place them after the header's last column.
        header = list(values[1]) if len(values) > 1 else []
        for name in self.columns.values():
            if name.casefold() not in {h.strip().casefold() for h in header}:
                header.append(name)
        layout = read_layout(
            values[:1] + [header] + values[2:], barcode_column=self.barcode_column, columns=self.columns
        )
        plan = plan_writes(layout, cells)
        lines = _lines(plan, self.columns)
        if not lines and not plan.duplicates:
            lines = [f"{cells[0].barcode}: no row in the sheet, nothing to write"]
        for line in lines:
            text = f"sheet write-back (CSV, not written): {line}"
            log.info("%s", text)
            if self.echo is not None:
                self.echo(text)
        if plan.duplicates and not self._warned:
            log.warning("sheet write-back preview: barcodes in several rows: %s", sorted(plan.duplicates))
            self._warned = True


def write_back_sink(
    cfg: AgentConfig, alert: AlertFn | None = None
) -> SheetWriteBack | CsvWriteBackPreview | None:
    """The sink ``[sheet] write_back`` asks for: the Google Sheet writer, the CSV preview, or None (off)."""
    s = cfg.sheet
    if not s.write_back:
        return None
    columns = column_names(s.status_column, s.stored_as_column, s.stored_at_column, cfg.rescans.column)
    if not s.spreadsheet_key:
        assert s.csv is not None
        return CsvWriteBackPreview(s.csv, columns=columns, barcode_column=s.barcode_column)
    from scanner_agent.sheets.google_session import GoogleSession

    assert s.credentials_file is not None
    session = GoogleSession(
        s.spreadsheet_key.strip(),
        credentials_file=s.credentials_file,
        worksheet=s.worksheet or None,
        api_url=s.api_url,
        timeout=s.timeout_seconds,
        write=True,
    )
    return SheetWriteBack(
        session,
        WritebackQueue(cfg.journal.path),
        columns=columns,
        barcode_column=s.barcode_column,
        refresh_seconds=s.refresh_seconds,
        alert=alert,
    )
