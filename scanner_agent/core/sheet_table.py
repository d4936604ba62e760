"""The lab's metadata sheet as a table: parse raw cell text, look a barcode up, name the columns.

The sheet has one shape wherever it lives (Google Sheet or CSV):

* row 1: per-column "include in name" flags, ``REQUIRED`` / ``OPTIONAL`` / blank (any case). Its first
  cell is a label ("Include in Name?"), never a flag: the barcode is always part of the name.
* row 2: the header (``Barcode,Study,Experiment,...``).
* rows 3+: one row per slide, keyed by barcode.

``parse_table`` turns raw cell text into a ``SheetTable``; problems that make the whole sheet unusable
raise ``SheetMalformed``, problems that touch one row or column are listed in ``SheetTable.problems``
(for ``scanner-agent check``) and make ``lookup`` refuse the barcodes they affect. The rule throughout
is *never guess a name*: a scan whose row is doubtful is held, with a message naming the row and column.

Values are kept as the person typed them (whitespace stripped); making them path-safe is naming's job.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from scanner_agent.core.errors import IncompleteRow, SheetMalformed, UnknownBarcode

REQUIRED = "REQUIRED"
OPTIONAL = "OPTIONAL"
_FLAGS = (REQUIRED, OPTIONAL)

#: Characters that would split a name over lines or end it early (NUL, and every line break
#: ``str.splitlines`` knows). Allowed in free-text columns, refused in columns that go into a name.
_LINE_BREAKERS = frozenset("\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@dataclass(frozen=True)
class SheetRow:
    """One slide's row. ``row_number`` is what a person sees: flags = 1, header = 2, first data row = 3."""

    barcode: str
    row_number: int
    values: Mapping[str, str]  # column -> stripped cell text ("" when empty)


@dataclass(frozen=True)
class SheetTable:
    """One read of the sheet, with everything wrong with it found up front."""

    source: str  # human description of where it came from; never a credential
    columns: tuple[str, ...]  # header, sheet order
    flags: Mapping[str, str]  # column -> "REQUIRED" | "OPTIONAL" | ""
    rows: Mapping[str, SheetRow]  # barcode -> first row with it
    duplicates: Mapping[str, tuple[int, ...]]  # barcode -> all row numbers holding it (only when >1)
    problems: tuple[str, ...]  # every problem found, each naming source, row and column
    fetched_at: float  # epoch seconds of the read
    barcode_column: str = "Barcode"
    #: Problems that make *every* lookup refuse, because any name built now would be a guess
    #: (e.g. a flag cell reading "yes": is that column in the name or not?).
    blocking: tuple[str, ...] = ()
    #: barcode -> problems of that barcode's row that make its lookup refuse (unsafe cell text).
    bad_rows: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def name_columns(self) -> list[tuple[str, bool]]:
        """(column, required) for each flagged column in sheet order, the barcode column excluded."""
        return [
            (c, self.flags[c] == REQUIRED)
            for c in self.columns
            if self.flags.get(c) in _FLAGS and c != self.barcode_column
        ]


def column_letter(index: int) -> str:
    """Spreadsheet letter of a 0-based column index (0 -> A, 26 -> AA), as people name columns."""
    letters = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def _where(source: str, row: int, col_index: int, col_name: str | None = None) -> str:
    col = f"column {column_letter(col_index)}" + (f" ('{col_name}')" if col_name else "")
    return f"{source} row {row}, {col}"


def _cell(row: list[str], i: int) -> str:
    return str(row[i]).strip() if i < len(row) and row[i] is not None else ""


def _find_barcode_column(header: list[str], barcode_column: str, source: str) -> int:
    exact = [i for i, h in enumerate(header) if h == barcode_column]
    if exact:
        return exact[0]
    # People retype headers; "barcode" or "BARCODE" is still plainly the barcode column.
    loose = [i for i, h in enumerate(header) if h.casefold() == barcode_column.casefold()]
    if loose:
        return loose[0]
    shown = ", ".join(repr(h) for h in header if h) or "nothing"
    raise SheetMalformed(
        f"{source}: no '{barcode_column}' column in the header (row 2); it holds {shown}. "
        "Row 1 must be the include-in-name flags and row 2 the header."
    )


def _check_flags_row_present(
    flags_row: list[str], header: list[str], barcode_column: str, source: str
) -> None:
    def has_barcode(cells: list[str]) -> bool:
        return any(_cell(cells, i).casefold() == barcode_column.casefold() for i in range(len(cells)))

    if has_barcode(flags_row) and not has_barcode(header):
        raise SheetMalformed(
            f"{source}: row 1 looks like the header ('{barcode_column}' is in row 1), so the "
            "include-in-name flags row is missing. Insert a row above the header with "
            "REQUIRED/OPTIONAL/blank per column."
        )


def _check_header(header: list[str], flags_row: list[str], source: str) -> None:
    seen: dict[str, int] = {}
    for i in range(max(len(header), len(flags_row))):
        name = header[i] if i < len(header) else ""
        if not name:
            flag = _cell(flags_row, i) if i > 0 else ""
            if flag:
                raise SheetMalformed(
                    f"{_where(source, 2, i)}: blank header under the flag {flag!r} in row 1; "
                    "name the column or clear its flag."
                )
            continue
        key = name.casefold()
        if key in seen:
            first = seen[key]
            raise SheetMalformed(
                f"{source}: duplicate header {name!r} in row 2 (columns {column_letter(first)} and "
                f"{column_letter(i)}); every column needs its own name."
            )
        seen[key] = i


def _read_flags(
    header: list[str], flags_row: list[str], source: str, barcode_index: int
) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    problems: list[str] = []
    for i, name in enumerate(header):
        if not name:
            continue
        # Cell A1 labels the flags row; it is not a flag for column A.
        raw = _cell(flags_row, i) if i > 0 else ""
        flag = raw.upper()
        if i == barcode_index:
            flags[name] = ""  # the barcode is always in the name, whatever row 1 says
        elif flag in _FLAGS or flag == "":
            flags[name] = flag
        else:
            flags[name] = ""
            problems.append(
                f"{_where(source, 1, i, name)}: include-in-name flag {raw!r} is not "
                f"{REQUIRED}, {OPTIONAL} or blank."
            )
    return flags, problems


def parse_table(
    values: list[list[str]], *, source: str, barcode_column: str = "Barcode", fetched_at: float | None = None
) -> SheetTable:
    """Build a ``SheetTable`` from raw rows of cell text (row 1 = flags, row 2 = header).

    Raises ``SheetMalformed`` (naming ``source``) when the sheet cannot be read as a table at all:
    fewer than two rows, no barcode column, duplicate header names, or a blank header under a flag.
    Everything narrower is collected in ``problems``.
    """
    fetched = time.time() if fetched_at is None else fetched_at
    rows_in = [list(r) for r in values]
    while rows_in and not any(_cell(rows_in[-1], i) for i in range(len(rows_in[-1]))):
        rows_in.pop()  # trailing blank lines carry nothing
    if not rows_in:
        raise SheetMalformed(
            f"{source} is empty: expected row 1 = include-in-name flags, "
            "row 2 = header, then one row per barcode."
        )
    if len(rows_in) < 2:
        raise SheetMalformed(
            f"{source} has only 1 row: expected row 1 = include-in-name flags and row 2 = header."
        )

    flags_row = rows_in[0]
    header = [_cell(rows_in[1], i) for i in range(len(rows_in[1]))]
    while header and not header[-1]:
        header.pop()
    _check_flags_row_present(flags_row, header, barcode_column, source)
    _check_header(header, flags_row, source)
    barcode_index = _find_barcode_column(header, barcode_column, source)
    barcode_name = header[barcode_index]
    flags, problems = _read_flags(header, flags_row, source, barcode_index)
    blocking = list(problems)  # an unreadable flag makes every name a guess

    named = [(i, h) for i, h in enumerate(header) if h]
    flagged = {h for h, f in flags.items() if f in _FLAGS} | {barcode_name}
    rows: dict[str, SheetRow] = {}
    holders: dict[str, list[int]] = {}
    bad_rows: dict[str, list[str]] = {}
    for offset, raw in enumerate(rows_in[2:]):
        row_number = offset + 3
        cells = {h: _cell(raw, i) for i, h in named}
        for i in range(len(raw)):
            if (i >= len(header) or not header[i]) and _cell(raw, i):
                problems.append(
                    f"{_where(source, row_number, i)}: value {_cell(raw, i)!r} has no "
                    "header in row 2; ignored."
                )
        barcode = cells[barcode_name]
        if not barcode:
            if any(cells.values()):
                problems.append(
                    f"{_where(source, row_number, barcode_index, barcode_name)}: row has "
                    "values but no barcode; skipped."
                )
            continue
        for i, h in named:
            if h in flagged and any(ch in _LINE_BREAKERS for ch in cells[h]):
                msg = (
                    f"{_where(source, row_number, i, h)}: value {cells[h]!r} holds a line break "
                    "or NUL character, which cannot go into a file name."
                )
                problems.append(msg)
                bad_rows.setdefault(barcode, []).append(msg)
        holders.setdefault(barcode, []).append(row_number)
        rows.setdefault(barcode, SheetRow(barcode=barcode, row_number=row_number, values=cells))

    duplicates = {b: tuple(ns) for b, ns in holders.items() if len(ns) > 1}
    for b, ns in duplicates.items():
        problems.append(
            f"{source}: barcode {b} is on rows {_join(ns)} "
            f"(column {column_letter(barcode_index)}); keep one row per barcode."
        )
    return SheetTable(
        source=source,
        columns=tuple(h for _, h in named),
        flags=flags,
        rows=rows,
        duplicates=duplicates,
        problems=tuple(problems),
        fetched_at=fetched,
        barcode_column=barcode_name,
        blocking=tuple(blocking),
        bad_rows={b: tuple(p) for b, p in bad_rows.items()},
    )


def _join(numbers: tuple[int, ...] | list[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _near_misses(table: SheetTable, barcode: str) -> list[SheetRow]:
    """Rows whose barcode differs only by case or leading zeros: likely a typo worth pointing at."""

    def squash(b: str) -> str:
        return b.casefold().lstrip("0")

    key = squash(barcode)
    return [r for b, r in table.rows.items() if b != barcode and squash(b) == key]


def lookup(table: SheetTable, barcode: str) -> SheetRow:
    """The row for ``barcode``, or an error saying exactly what a person must fix in the sheet.

    Raises ``UnknownBarcode`` (no row), ``SheetMalformed`` (several rows, an unsafe value, or an
    unreadable flag), ``IncompleteRow`` (a REQUIRED column is empty). All are held scans.
    """
    b = barcode.strip()
    if table.blocking:
        raise SheetMalformed(
            f"Cannot name barcode {b} from {table.source}: " + " ".join(table.blocking), barcode=b
        )
    row = table.rows.get(b)
    if row is None:
        hint = ""
        near = _near_misses(table, b)
        if near:
            hint = (
                " Close matches: "
                + ", ".join(f"{r.barcode!r} on row {r.row_number}" for r in near)
                + " (barcodes must match exactly, leading zeros included)."
            )
        raise UnknownBarcode(
            f"No row for barcode {b} in {table.source}: no cell in column "
            f"'{table.barcode_column}' equals {b!r}.{hint}",
            barcode=b,
        )
    if b in table.duplicates:
        raise SheetMalformed(
            f"Barcode {b} is on rows {_join(table.duplicates[b])} of {table.source}; "
            "keep one row per barcode so the name is not a guess.",
            barcode=b,
        )
    if b in table.bad_rows:
        raise SheetMalformed(" ".join(table.bad_rows[b]), barcode=b)
    missing = [c for c, required in table.name_columns() if required and not row.values.get(c)]
    if missing:
        cols = ", ".join(repr(c) for c in missing)
        raise IncompleteRow(
            f"Barcode {b} (row {row.row_number} of {table.source}) has no value in "
            f"REQUIRED column(s) {cols}.",
            missing=missing,
            barcode=b,
        )
    return row
