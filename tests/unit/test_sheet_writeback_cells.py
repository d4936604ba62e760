"""core.sheet_cells: the cells an outcome sets, and where they go in the sheet as one read shows it."""

from __future__ import annotations

from scanner_agent.core.outcomes import ReportKind, ScanReport
from scanner_agent.core.sheet_cells import (
    RESCAN,
    STATUS,
    STORED_AS,
    STORED_AT,
    Cell,
    describe_row,
    outcome_cells,
    plan_writes,
    read_layout,
)

COLUMNS = {STATUS: "Scan Status", STORED_AS: "Stored As", STORED_AT: "Stored At", RESCAN: "Rescan Requested"}
FLAGS = ["Include in Name?", "REQUIRED", "", "", "", "", ""]
HEADER = ["Barcode", "Study", "Rescan Requested", "Notes", "Scan Status", "Stored As", "Stored At"]


def _report(kind: ReportKind, status: str, **kw: object) -> ScanReport:
    return ScanReport(kind, "Cardinal", "620995", 1.7e9, status, **kw)  # type: ignore[arg-type]


def test_stored_sets_status_path_and_time_and_closes_the_rescan() -> None:
    r = _report(ReportKind.STORED, "stored", stored_path="Prec01/Run-2/x.svs", rescan_done=True)
    cells = outcome_cells(r, at_text="2026-12-04 10:00:00 +0000", date_text="2026-12-04")
    assert cells == [
        Cell("620995", STATUS, "stored"),
        Cell("620995", STORED_AS, "Prec01/Run-2/x.svs"),
        Cell("620995", STORED_AT, "2026-12-04 10:00:00 +0000"),
        Cell("620995", RESCAN, "done 2026-12-04"),
    ]


def test_held_sets_only_the_status() -> None:
    r = _report(ReportKind.HELD, "held: REQUIRED Panel empty")
    assert outcome_cells(r, at_text="t", date_text="d") == [
        Cell("620995", STATUS, "held: REQUIRED Panel empty")
    ]


def test_no_barcode_no_cells() -> None:
    r = ScanReport(ReportKind.QUARANTINED, "Cardinal", None, 1.7e9, "quarantined: no barcode found")
    assert outcome_cells(r, at_text="t", date_text="d") == []


def test_rows_found_where_they_are_now() -> None:
    values = [FLAGS, HEADER, ["111111", "S"], ["620995", "S"]]
    layout = read_layout(values, barcode_column="Barcode", columns=COLUMNS)
    assert layout.missing == () and layout.rows["620995"] == (4,)
    plan = plan_writes(layout, [Cell("620995", STATUS, "stored"), Cell("620995", RESCAN, "done x")])
    assert [(w.a1, w.value) for w in plan.writes] == [("E4", "stored"), ("C4", "done x")]
    # sorted: the same barcode is now row 3
    layout = read_layout([FLAGS, HEADER, ["620995"], ["111111"]], barcode_column="Barcode", columns=COLUMNS)
    assert [w.a1 for w in plan_writes(layout, [Cell("620995", STATUS, "stored")]).writes] == ["E3"]


def test_missing_status_columns_are_named_and_nothing_is_planned() -> None:
    header = ["Barcode", "Study", "Scan Status"]
    layout = read_layout([FLAGS, header, ["620995"]], barcode_column="Barcode", columns=COLUMNS)
    assert layout.missing == ("Stored As", "Stored At")
    plan = plan_writes(layout, [Cell("620995", STATUS, "stored")])
    assert not plan.writes and not plan.dropped  # kept queued until the columns exist


def test_duplicate_barcode_gets_nothing() -> None:
    values = [FLAGS, HEADER, ["620995"], ["111111"], [" 620995 "]]
    plan = plan_writes(
        read_layout(values, barcode_column="Barcode", columns=COLUMNS), [Cell("620995", STATUS, "s")]
    )
    assert plan.writes == [] and plan.duplicates == {"620995": (3, 5)}


def test_unknown_barcode_and_missing_optional_column_are_dropped() -> None:
    header = ["Barcode", "Scan Status", "Stored As", "Stored At"]  # no rescan column
    layout = read_layout([FLAGS, header, ["620995"]], barcode_column="Barcode", columns=COLUMNS)
    cells = [
        Cell("999999", STATUS, "held"),
        Cell("620995", RESCAN, "done x"),
        Cell("620995", STATUS, "stored"),
    ]
    plan = plan_writes(layout, cells)
    assert [w.a1 for w in plan.writes] == ["B3"] and plan.dropped == cells[:2]


def test_header_matched_loosely_and_sheet_without_header() -> None:
    header = ["barcode", "scan status", "STORED AS", "Stored At"]
    layout = read_layout([FLAGS, header], barcode_column="Barcode", columns=COLUMNS)
    assert layout.problem is None and layout.columns[STORED_AS] == 2
    assert read_layout([FLAGS], barcode_column="Barcode", columns=COLUMNS).problem
    assert "no 'Barcode' column" in str(
        read_layout([FLAGS, ["Code"]], barcode_column="Barcode", columns=COLUMNS).problem
    )


def test_describe_row() -> None:
    line = describe_row("620995", 4, [("Scan Status", "stored"), ("Stored As", "a/b.svs")])
    assert line == 'row 4 620995: Scan Status="stored", Stored As="a/b.svs"'
