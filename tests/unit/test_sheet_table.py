"""The sheet table, pure: parsing the flags/header/rows shape, looking barcodes up, column letters."""

from __future__ import annotations

import pytest

from scanner_agent.core.errors import IncompleteRow, SheetMalformed, UnknownBarcode
from scanner_agent.core.sheet_table import SheetTable, column_letter, lookup, parse_table
from tests.harness import SAMPLE_SHEET  # the shape of /work/shared/sample-sheet.csv

FLAGS = ["Include in Name?", "REQUIRED", "REQUIRED", "OPTIONAL", ""]
HEADER = ["Barcode", "Study", "Experiment", "Panel", "Notes"]


def rows(text: str) -> list[list[str]]:
    return [line.split(",") for line in text.splitlines()]


def table(*data: list[str], flags: list[str] = FLAGS, header: list[str] = HEADER) -> SheetTable:
    return parse_table([flags, header, *data], source="test.csv", fetched_at=1.0)


# -- parsing ----------------------------------------------------------------------------------------
def test_sample_sheet_shape() -> None:
    t = parse_table(rows(SAMPLE_SHEET), source="sample.csv", fetched_at=123.0)
    assert t.columns == (
        "Barcode",
        "Study",
        "Experiment",
        "Panel",
        "Scanner",
        "Scan Date",
        "Rescan Requested",
        "Notes",
    )
    assert t.name_columns() == [("Study", True), ("Experiment", True), ("Panel", True), ("Scanner", True)]
    assert t.flags["Notes"] == "" and t.flags["Barcode"] == ""
    assert len(t.rows) == 7 and t.problems == () and t.duplicates == {}
    row = lookup(t, "545891")
    assert row.row_number == 9
    assert row.values["Experiment"] == "Run 3" and row.values["Notes"] == "blurry on first scan"
    assert lookup(t, "620995").row_number == 3
    assert t.fetched_at == 123.0 and t.source == "sample.csv"


def test_flags_are_case_insensitive_and_unknown_flags_block_naming() -> None:
    t = table(["1", "S", "E", "P", "n"], flags=["Include", " required ", "Required", "optional", ""])
    assert t.name_columns() == [("Study", True), ("Experiment", True), ("Panel", False)]
    assert t.problems == ()

    bad = table(["1", "S", "E", "P", "n"], flags=["Include", "REQUIRED", "yes", "", ""])
    assert any("column C ('Experiment')" in p and "'yes'" in p for p in bad.problems)
    with pytest.raises(SheetMalformed, match="'yes'"):
        lookup(bad, "1")  # in the name or not? Never guess.


def test_first_cell_of_flags_row_is_a_label_not_a_flag() -> None:
    t = table(["1", "S", "E", "P", ""], flags=["REQUIRED", "", "", "", ""])
    assert t.name_columns() == [] and t.problems == ()


def test_duplicate_barcodes_name_every_row() -> None:
    t = table(["111", "S", "E", "", ""], ["222", "S", "E", "", ""], ["111", "S2", "E", "", ""])
    assert t.duplicates == {"111": (3, 5)}
    assert any("barcode 111 is on rows 3, 5" in p for p in t.problems)
    with pytest.raises(SheetMalformed, match=r"rows 3, 5") as e:
        lookup(t, "111")
    assert e.value.barcode == "111"
    assert lookup(t, "222").row_number == 4


def test_required_column_missing_names_barcode_row_and_columns() -> None:
    t = table(["111", "S", "", "", ""])
    with pytest.raises(IncompleteRow) as e:
        lookup(t, "111")
    assert e.value.missing == ["Experiment"]
    assert "111" in str(e.value) and "row 3" in str(e.value) and "'Experiment'" in str(e.value)
    assert e.value.state == "held"
    # OPTIONAL empty is fine
    assert lookup(table(["112", "S", "E", "", ""]), "112").values["Panel"] == ""


def test_unknown_barcode_says_where_and_points_at_near_misses() -> None:
    t = table(["0545891", "S", "E", "", ""])
    with pytest.raises(UnknownBarcode, match=r"^No row for barcode 545891 in test.csv: ") as e:
        lookup(t, "545891")
    assert "'0545891' on row 3" in str(e.value)  # leading zeros matter, but say so
    assert e.value.barcode == "545891"
    assert lookup(t, " 0545891 ").barcode == "0545891"  # surrounding whitespace is not part of it


def test_barcodes_compare_exactly() -> None:
    t = table(["AB12", "S", "E", "", ""])
    with pytest.raises(UnknownBarcode):
        lookup(t, "ab12")


def test_ragged_rows_are_padded_and_blank_barcodes_skipped() -> None:
    t = parse_table(
        [FLAGS, HEADER, ["111", "S", "E"], ["", "", ""], [], ["112", "S"]], source="s", fetched_at=0
    )
    assert t.rows["111"].values == {
        "Barcode": "111",
        "Study": "S",
        "Experiment": "E",
        "Panel": "",
        "Notes": "",
    }
    assert set(t.rows) == {"111", "112"}
    assert t.rows["112"].row_number == 6
    with pytest.raises(IncompleteRow, match="'Experiment'"):
        lookup(t, "112")


def test_values_are_stripped_and_kept_as_typed() -> None:
    t = table(["  111 ", " Prec/01 ", "Run 2 ", "", "  "])
    row = lookup(t, "111")
    assert row.values["Study"] == "Prec/01"  # path safety is naming's job
    assert row.values["Experiment"] == "Run 2" and row.values["Notes"] == ""


def test_row_with_values_but_no_barcode_is_reported() -> None:
    t = table(["", "S", "E", "", ""])
    assert t.rows == {}
    assert any("row 3, column A ('Barcode')" in p and "no barcode" in p for p in t.problems)


def test_line_breaks_and_nul_in_flagged_columns_are_refused() -> None:
    t = table(
        ["111", "S\nX", "E", "", "free\ntext"], ["112", "S", "E\x00", "", ""], ["113", "S", "E", "", "a\nb"]
    )
    assert any("row 3, column B ('Study')" in p for p in t.problems)
    assert any("row 4, column C ('Experiment')" in p for p in t.problems)
    with pytest.raises(SheetMalformed, match=r"row 3, column B \('Study'\)"):
        lookup(t, "111")
    with pytest.raises(SheetMalformed, match="row 4"):
        lookup(t, "112")
    assert lookup(t, "113").values["Notes"] == "a\nb"  # free text may hold line breaks


def test_no_barcode_column() -> None:
    with pytest.raises(SheetMalformed, match=r"test.csv: no 'Barcode' column.*'Slide ID'"):
        table(flags=["", ""], header=["Slide ID", "Study"])


def test_missing_flags_row_is_named() -> None:
    with pytest.raises(SheetMalformed, match="flags row is missing"):
        parse_table([HEADER, ["111", "S", "E", "", ""]], source="test.csv")


def test_barcode_header_case_is_forgiven() -> None:
    t = table(["111", "S", "E", "", ""], header=["barcode", "Study", "Experiment", "Panel", "Notes"])
    assert t.barcode_column == "barcode" and lookup(t, "111").row_number == 3


def test_duplicate_headers() -> None:
    with pytest.raises(SheetMalformed, match=r"duplicate header 'Study'.*columns B and D"):
        table(header=["Barcode", "Study", "Experiment", "Study", "Notes"])


def test_blank_header_over_flag() -> None:
    with pytest.raises(SheetMalformed, match=r"row 2, column D.*'OPTIONAL'"):
        table(header=["Barcode", "Study", "Experiment", "", "Notes"])
    with pytest.raises(SheetMalformed, match=r"row 2, column F.*'REQUIRED'"):
        table(flags=FLAGS + ["REQUIRED"])


def test_value_under_no_header_is_a_problem_not_a_column() -> None:
    t = table(["111", "S", "E", "", "", "stray"])
    assert t.columns == tuple(HEADER)
    assert any("row 3, column F" in p and "'stray'" in p for p in t.problems)


@pytest.mark.parametrize(
    "values, words",
    [([], "is empty"), ([[]], "is empty"), ([["", ""], [" "]], "is empty"), ([FLAGS], "has only 1 row")],
)
def test_empty_or_too_short(values: list[list[str]], words: str) -> None:
    with pytest.raises(SheetMalformed, match=f"test.csv {words}"):
        parse_table(values, source="test.csv")


def test_column_letters() -> None:
    assert [column_letter(i) for i in (0, 25, 26, 27, 701, 702)] == ["A", "Z", "AA", "AB", "ZZ", "AAA"]
