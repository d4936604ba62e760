"""Sheet write-back decisions: which cells a scan outcome sets, and where they are in the sheet as it is now.

An outcome becomes a few ``Cell`` values keyed by (barcode, role); roles name the status columns
(the column *names* are configuration). At write time the sheet is read again and ``plan_writes``
finds each barcode's row in that read, so a row that moved because staff sorted the sheet is found
where it is now. Only the configured columns are ever addressed, one cell at a time; nothing else in
the sheet is touched. A barcode in two rows gets nothing (which row would it be?); a barcode not in
the sheet has no row to write, so its cells are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scanner_agent.core.outcomes import ReportKind, ScanReport
from scanner_agent.core.sheet_table import column_letter

STATUS = "status"
STORED_AS = "stored_as"
STORED_AT = "stored_at"
RESCAN = "rescan"
#: The columns write-back needs; without any of them it writes nothing (one warning).
STATUS_ROLES = (STATUS, STORED_AS, STORED_AT)

#: Data rows start here (row 1: include-in-name flags, row 2: header), as a person numbers rows.
FIRST_DATA_ROW = 3


@dataclass(frozen=True)
class Cell:
    """One value for one of a barcode's status cells."""

    barcode: str
    role: str
    value: str


def outcome_cells(report: ScanReport, *, at_text: str, date_text: str) -> list[Cell]:
    """The cells an outcome sets: the status always; where and when for a stored scan; "done <date>" in
    the rescan column when it satisfied a rescan request. A failure leaves "Stored As"/"Stored At" alone:
    an earlier stored image (a held rescan's first scan) is still where they say."""
    b = (report.barcode or "").strip()
    if not b:
        return []  # no barcode: no row to find
    cells = [Cell(b, STATUS, report.status)]
    if report.kind is ReportKind.STORED:
        cells += [Cell(b, STORED_AS, report.stored_path or ""), Cell(b, STORED_AT, at_text)]
        if report.rescan_done:
            cells.append(Cell(b, RESCAN, f"done {date_text}"))
    return cells


def _find(header: list[str], name: str) -> int | None:
    exact = [i for i, h in enumerate(header) if h == name]
    if exact:
        return exact[0]
    loose = [i for i, h in enumerate(header) if h.casefold() == name.casefold()]
    return loose[0] if loose else None


@dataclass(frozen=True)
class SheetLayout:
    """The sheet as one read shows it: where each role's column and each barcode's rows are."""

    columns: Mapping[str, int]  # role -> 0-based column index, for the roles found
    missing: tuple[str, ...]  # configured status column names the header lacks
    rows: Mapping[str, tuple[int, ...]]  # barcode -> row numbers holding it (1-based)
    problem: str | None = None  # the sheet cannot be used at all (no header, no barcode column)


def read_layout(values: list[list[str]], *, barcode_column: str, columns: Mapping[str, str]) -> SheetLayout:
    """Find the configured columns (``role -> column name``) in the header and index barcodes to rows."""
    if len(values) < 2:
        return SheetLayout({}, (), {}, "the sheet has no header row (row 2)")
    header = [str(h).strip() for h in values[1]]
    bc = _find(header, barcode_column)
    if bc is None:
        return SheetLayout({}, (), {}, f"no '{barcode_column}' column in the header (row 2)")
    found: dict[str, int] = {}
    missing: list[str] = []
    for role, name in columns.items():
        i = _find(header, name)
        if i is not None:
            found[role] = i
        elif role in STATUS_ROLES:
            missing.append(name)
    rows: dict[str, list[int]] = {}
    for n, row in enumerate(values[FIRST_DATA_ROW - 1 :], start=FIRST_DATA_ROW):
        b = str(row[bc]).strip() if bc < len(row) and row[bc] is not None else ""
        if b:
            rows.setdefault(b, []).append(n)
    return SheetLayout(found, tuple(missing), {b: tuple(r) for b, r in rows.items()})


@dataclass(frozen=True)
class CellWrite:
    """One cell to set: its A1 address (no sheet title), the value, and the queued cell it writes."""

    a1: str
    value: str
    cell: Cell
    row: int


@dataclass
class WritePlan:
    """What one flush does with the queued cells."""

    writes: list[CellWrite] = field(default_factory=list)
    #: Cells left queued: their barcode is in several rows (barcode -> those rows).
    duplicates: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Cells dropped: no row holds their barcode, or their (optional) column is not in the sheet.
    dropped: list[Cell] = field(default_factory=list)


def plan_writes(layout: SheetLayout, cells: Iterable[Cell]) -> WritePlan:
    """Where each queued cell goes in the sheet as ``layout`` shows it. With the status columns missing
    (or the sheet unusable) nothing is planned and every cell stays queued: the caller checks first."""
    plan = WritePlan()
    if layout.problem or layout.missing:
        return plan
    for c in cells:
        rows = layout.rows.get(c.barcode, ())
        col = layout.columns.get(c.role)
        if len(rows) > 1:
            plan.duplicates[c.barcode] = rows
        elif not rows or col is None:
            plan.dropped.append(c)
        else:
            plan.writes.append(CellWrite(f"{column_letter(col)}{rows[0]}", c.value, c, rows[0]))
    return plan


def describe_row(barcode: str, row: int, writes: Iterable[tuple[str, str]]) -> str:
    """``row 4 620995: Scan Status="stored", Stored As="..."`` (column name, value) for logs and the demo."""
    cells = ", ".join(f'{name}="{value}"' for name, value in writes)
    return f"row {row} {barcode}: {cells}"
