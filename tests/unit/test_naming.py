"""File and folder names from sheet rows: safe, bounded, deterministic."""

from __future__ import annotations

import csv
import posixpath
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner_agent.core import errors
from scanner_agent.core.naming import (
    MAX_COMPONENT,
    MAX_NAME_BYTES,
    build_folder,
    build_name,
    layout_columns,
    safe_component,
)

SHEET = Path("/work/shared/sample-sheet.csv")


def sample_row(barcode: str) -> tuple[list[tuple[str, str, bool]], dict[str, str], int]:
    """The flagged fields of the sample sheet's row for ``barcode`` (row 1 flags, row 2 header)."""
    rows = list(csv.reader(SHEET.open(newline="")))
    flags, header = rows[0], rows[1]
    for number, row in enumerate(rows[2:], start=3):
        if row[0] == barcode:
            fields = [
                (col, val, flag == "REQUIRED")
                for col, val, flag in zip(header[1:], row[1:], flags[1:], strict=True)
                if flag in ("REQUIRED", "OPTIONAL")
            ]
            return fields, dict(zip(header, row, strict=True)), number
    raise LookupError(barcode)


def test_sample_sheet_row_gives_the_expected_name() -> None:
    fields, _, number = sample_row("620995")
    assert build_name("620995", fields, ".svs", row_number=number) == "Prec01_Run-2_P1_Cardinal_620995.svs"


def test_folder_from_layout() -> None:
    _, values, number = sample_row("620995")
    assert build_folder("{Study}/{Experiment}", values, row_number=number) == PurePosixPath("Prec01/Run-2")
    assert build_folder("", values) == PurePosixPath()
    assert build_folder("slides/{Study}-{Panel}", values) == PurePosixPath("slides/Prec01-P1")


def test_same_inputs_same_name() -> None:
    fields, _, _ = sample_row("545891")
    names = {build_name("545891", fields, ".svs") for _ in range(5)}
    assert names == {"Prec01_Run-3_P2_Raven_545891.svs"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("../../etc", "etc"),
        ("a/b", "a-b"),
        ('a\\b:c*d?e"f<g>h|i', "a-b-c-d-e-f-g-h-i"),
        ("a\0b", "ab"),
        ("line one\nline two", "line-one-line-two"),
        ("  Run   2  ", "Run-2"),
        ('=HYPERLINK("x")', "HYPERLINK(-x-)"),
        ("+44 20", "44-20"),
        ("@SUM(A1)", "SUM(A1)"),
        ("...hidden", "hidden"),
        ("trailing. ", "trailing"),
        ("--a--b--", "a-b"),
        ("e\u0301t\u00e9", "\u00e9t\u00e9"),  # NFC: decomposed e + accent becomes one character
        ("\u202eexe.txt\u202c", "exe.txt"),  # RTL override dropped: it makes names lie on screen
        ("zero\u200bwidth", "zerowidth"),
        ("\u05e0\u05d9\u05e1\u05d5\u05d9 2", "\u05e0\u05d9\u05e1\u05d5\u05d9-2"),  # Hebrew text is kept
        ("\u5b9f\u9a13", "\u5b9f\u9a13"),
    ],
)
def test_safe_component(value: str, expected: str) -> None:
    assert safe_component(value) == expected


@pytest.mark.parametrize("value", ["", "   ", "..", ".", "///", "\0\0", "-.-", "CON", "nul.txt", "Com1"])
def test_safe_component_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        safe_component(value)


def test_long_values_are_cut_to_bytes_not_characters() -> None:
    assert safe_component("x" * 300) == "x" * MAX_COMPONENT
    cut = safe_component("\u00e9" * 300)  # 2 bytes each
    assert len(cut.encode()) <= MAX_COMPONENT and cut == "\u00e9" * (MAX_COMPONENT // 2)
    emoji = safe_component("\U0001f52c" * 30)  # 4 bytes each
    assert emoji == "\U0001f52c" * (MAX_COMPONENT // 4)


def test_cut_never_leaves_an_accent_without_its_letter() -> None:
    # 'q' + combining ring is not precomposed, so NFC leaves a 2-character cluster at the cut.
    value = "a" * 62 + "q\u030a" + "zz"
    cut = safe_component(value)
    assert cut == "a" * 62
    assert not unicodedata.combining(cut[-1])


def test_required_empty_value_holds_the_scan_naming_row_and_columns() -> None:
    fields = [("Study", "Prec01", True), ("Experiment", " ", True), ("Panel", "", True)]
    with pytest.raises(errors.IncompleteRow) as info:
        build_name("620995", fields, ".svs", row_number=7, source="sheet 'Scans'")
    assert info.value.missing == ["Experiment", "Panel"]
    assert "sheet 'Scans' row 7" in str(info.value) and "'Experiment'" in str(info.value)
    assert info.value.state == "held"


def test_optional_empty_value_is_skipped() -> None:
    fields = [("Study", "Prec01", True), ("Notes", "", False), ("Panel", "P1", False)]
    assert build_name("620995", fields, ".svs") == "Prec01_P1_620995.svs"


def test_unusable_value_is_sheet_malformed_naming_row_and_column() -> None:
    with pytest.raises(errors.SheetMalformed, match=r"the sheet row 4, column 'Study'.*'\.\.'"):
        build_name("620995", [("Study", "..", True)], ".svs", row_number=4)


def test_whole_name_stays_under_the_limit_and_keeps_the_barcode() -> None:
    fields = [(f"C{i}", chr(0x4E00 + i) * 100, True) for i in range(8)]
    name = build_name("620995", fields, ".svs")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith("_620995.svs")
    assert name.count("_") == 8


def test_dicom_folder_has_no_extension() -> None:
    assert build_name("620995", [("Study", "S", True)], "") == "S_620995"
    with pytest.raises(ValueError):
        build_name("620995", [("Study", "S", True)], "svs/../x")


def test_layout_columns_and_bad_layouts() -> None:
    assert layout_columns("{Study}/{Scan Date}-{Panel}") == ["Study", "Scan Date", "Panel"]
    assert layout_columns("") == []
    for bad in [
        "/abs/{Study}",
        "{Study}/../x",
        "{Study}//x",
        "{}",
        "{Study!r}",
        "{Study:>9}",
        "{Study",
        "a\\b",
        "{Study}/",
    ]:
        with pytest.raises(errors.ConfigError):
            layout_columns(bad)


def test_folder_layout_naming_unknown_column_is_reported() -> None:
    with pytest.raises(errors.SheetMalformed, match="'Project'"):
        build_folder("{Project}", {"Study": "S"}, row_number=3)


def test_folder_layout_with_empty_value_is_incomplete() -> None:
    with pytest.raises(errors.IncompleteRow, match="'Experiment'"):
        build_folder("{Study}/{Experiment}", {"Study": "S", "Experiment": ""}, row_number=3)


def test_folder_values_cannot_climb_out() -> None:
    folder = build_folder("{Study}/{Experiment}", {"Study": "../x", "Experiment": "/etc/passwd"})
    assert folder == PurePosixPath("x/etc-passwd")
    with pytest.raises(errors.SheetMalformed, match="'Study'"):
        build_folder("{Study}", {"Study": "../.."})


# --- properties over arbitrary cell contents -------------------------------------------------

cells = st.text(st.characters(codec="utf-8"), max_size=300) | st.sampled_from(
    ["..", ".", "../../etc", "/", "\\", "CON", "=cmd|' /C calc'!A0", "\u202e", "\0", "a\nb"]
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(cells, min_size=1, max_size=8),
    barcode=cells,
    layout_values=st.lists(cells, min_size=2, max_size=2),
)
def test_any_values_give_a_safe_name_and_folder_that_stay_inside_root(
    values: list[str], barcode: str, layout_values: list[str]
) -> None:
    fields = [(f"Col{i}", v, i % 2 == 0) for i, v in enumerate(values)]
    try:
        name = build_name(barcode, fields, ".svs")
        folder = build_folder("{A}/{B}", {"A": layout_values[0], "B": layout_values[1]})
    except (errors.SheetMalformed, errors.IncompleteRow):
        return
    assert name == build_name(barcode, fields, ".svs")  # deterministic
    assert len(name.encode("utf-8")) <= min(255, MAX_NAME_BYTES)
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs") for c in name)
    assert not folder.is_absolute() and ".." not in folder.parts and len(folder.parts) == 2
    root = PurePosixPath("/storage")
    dest = root.joinpath(*folder.parts, name)
    assert posixpath.commonpath([root, posixpath.normpath(dest)]) == str(root)
    assert dest.name == name and dest.parent.parent.parent == root
