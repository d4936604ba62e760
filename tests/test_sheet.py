"""The CSV source of the metadata sheet: real files, re-read only when they change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scanner_agent.core.errors import SheetMalformed, SheetUnavailable, UnknownBarcode
from scanner_agent.core.sheet_table import lookup
from scanner_agent.sheets import CsvSource
from tests.harness import SAMPLE_SHEET  # the shape of /work/shared/sample-sheet.csv


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- the CSV source ---------------------------------------------------------------------------------
def test_csv_source_reads_the_sample(tmp_path: Path) -> None:
    src = CsvSource(write(tmp_path / "sheet.csv", SAMPLE_SHEET))
    t = src.table()
    assert lookup(t, "545891").values["Scanner"] == "Raven"
    assert t.source == str(tmp_path / "sheet.csv") == src.describe()
    assert src.table() is t  # unchanged file: no re-read
    assert src.check() == []


def test_csv_source_sees_edits_between_calls(tmp_path: Path) -> None:
    path = write(tmp_path / "sheet.csv", SAMPLE_SHEET)
    src = CsvSource(path)
    with pytest.raises(UnknownBarcode):
        lookup(src.table(), "999999")
    write(path, SAMPLE_SHEET + "999999,Prec02,Run 1,P3,Raven,,,\n")
    assert lookup(src.table(want="999999"), "999999").values["Study"] == "Prec02"
    # Same size, same second: the stat still changes (ns mtime/ctime), so the edit is seen.
    text = SAMPLE_SHEET.replace("Run 3", "Run 4")
    write(path, text)
    assert lookup(src.table(), "545891").values["Experiment"] == "Run 4"


def test_csv_source_excel_bom_and_quoted_cells(tmp_path: Path) -> None:
    text = 'Include in Name?,REQUIRED,\nBarcode,Study,Notes\n111,"Prec, 01","two\nlines"\n'
    src = CsvSource(tmp_path / "s.csv")
    (tmp_path / "s.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    row = lookup(src.table(), "111")
    assert row.values == {"Barcode": "111", "Study": "Prec, 01", "Notes": "two\nlines"}


def test_csv_source_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes("Include,REQUIRED\nBarcode,Study\n1,Pr\xe9c\n".encode("cp1252"))
    with pytest.raises(SheetMalformed, match=r"s.csv is not UTF-8.*CSV UTF-8"):
        CsvSource(path).table()
    assert "not UTF-8" in CsvSource(path).check()[0]


def test_csv_source_empty_file_and_recovery(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "")
    src = CsvSource(path)
    with pytest.raises(SheetMalformed, match="s.csv is empty"):
        src.table()
    with pytest.raises(SheetMalformed):  # still malformed, same answer without re-reading
        src.table()
    write(path, SAMPLE_SHEET)
    assert len(src.table().rows) == 7


def test_csv_source_missing_file(tmp_path: Path) -> None:
    src = CsvSource(tmp_path / "nope.csv")
    with pytest.raises(SheetUnavailable, match="nope.csv"):
        src.table()
    assert "nope.csv" in src.check()[0]


def test_csv_source_check_lists_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", SAMPLE_SHEET + "620995,Prec01,Run 9,P1,Cardinal,,,\n")
    problems = CsvSource(path).check()
    assert len(problems) == 1 and "barcode 620995 is on rows 3, 10" in problems[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_csv_source_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", SAMPLE_SHEET)
    path.chmod(0)
    with pytest.raises(SheetUnavailable, match="Permission denied"):
        CsvSource(path).table()


def test_csv_source_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sheet.csv").mkdir()
    with pytest.raises(SheetUnavailable, match=r"sheet.csv: Is a directory"):
        CsvSource(tmp_path / "sheet.csv").table()
