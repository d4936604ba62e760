"""Which names are scans: slide patterns, ignored names and DICOM candidates, by name alone."""

from __future__ import annotations

import pytest

from scanner_agent.core.patterns import (
    DEFAULT_PATTERNS,
    dicom_enabled,
    is_ignored,
    matches,
    maybe_dicom_by_name,
)


@pytest.mark.parametrize(
    "name",
    [
        "a.svs.tmp",
        "a.part",
        "A.PARTIAL",
        "a.svs.crdownload",
        "~a.svs",
        ".a.svs",
        ".incoming",
        "Thumbs.db",
        "desktop.ini",
        "a.svs.filepart",
        "~$lock",
        ".DS_Store",
        "$RECYCLE.BIN",
        "",
    ],
)
def test_ignored_names(name: str) -> None:
    assert is_ignored(name)


@pytest.mark.parametrize("name", ["a.svs", "S1_2024.mrxs", "series1", "img.dcm", "temp_slide.svs"])
def test_normal_names_are_not_ignored(name: str) -> None:
    assert not is_ignored(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.svs", True), ("B.SVS", True), ("c.Tiff", True), ("m.mrxs", True), ("notes.txt", False)],
)
def test_default_patterns_match_whatever_the_case(name: str, expected: bool) -> None:
    assert matches(name, DEFAULT_PATTERNS) is expected


def test_patterns_are_globs_and_case_blind_both_ways() -> None:
    assert matches("scan.svs", ["*.SVS"])
    assert matches("S_001.svs", ["s_*.svs"])
    assert not matches("scan.svs", [])


def test_dicom_follows_the_patterns() -> None:
    assert dicom_enabled(DEFAULT_PATTERNS)
    assert dicom_enabled(["*.DCM"])
    assert not dicom_enabled(["*.svs", "*.mrxs"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DICOMDIR", True),  # no extension
        ("1.2.840.10008.5", True),  # UID-style
        ("Data0001.dat", False),
        ("Slidedat.ini", False),
        ("img.dcm", False),  # known by its extension, no need to look inside
    ],
)
def test_names_worth_opening_for_the_dicom_magic(name: str, expected: bool) -> None:
    assert maybe_dicom_by_name(name) is expected
