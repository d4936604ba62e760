"""Barcodes from file names and from real slide metadata (OpenSlide on generated slides)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from scanner_agent.core import errors
from scanner_agent.core.barcode import (
    METADATA_KEYS,
    BarcodeResult,
    barcode_from_name,
    clean_barcode,
    compile_barcode_regex,
    find_barcode,
)
from scanner_agent.scanunit import ScanUnit
from scanner_agent.testing import synthetic

SIX = compile_barcode_regex(r"(?P<barcode>\d{6})")


def unit(path: Path) -> ScanUnit:
    return ScanUnit.from_path(path)


# --- the regex -------------------------------------------------------------------------------


def test_regex_needs_the_barcode_group() -> None:
    with pytest.raises(errors.ConfigError, match=r"scanner\.barcode_regex.*named group 'barcode'"):
        compile_barcode_regex(r"\d{6}")


def test_invalid_regex_names_the_key() -> None:
    with pytest.raises(errors.ConfigError, match=r"scanner\.barcode_regex.*not a valid regular expression"):
        compile_barcode_regex(r"(?P<barcode>\d{6}")


# --- from the name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("620995", "620995"),
        ("620995_HE_2024-01-31 10.11.12", "620995"),
        ("scan 620995 copy", "620995"),
        ("007123", "007123"),  # leading zeros are part of the barcode
        ("620995_620995", "620995"),  # the same barcode twice is not ambiguous
        ("no digits here", None),
        ("12345", None),
    ],
)
def test_barcode_from_name(name: str, expected: str | None) -> None:
    assert barcode_from_name(name, SIX) == expected


def test_two_different_barcodes_in_a_name_are_not_guessed_between() -> None:
    with pytest.raises(ValueError, match="2 different barcodes.*anchor"):
        barcode_from_name("620995_645750", SIX)
    anchored = compile_barcode_regex(r"^(?P<barcode>\d{6})")
    assert barcode_from_name("620995_645750", anchored) == "620995"


def test_fullwidth_lookalike_digits_are_rejected_not_converted() -> None:
    # Python's \d matches fullwidth digits; NFKC would silently turn them into 620995.
    with pytest.raises(ValueError, match="U\\+FF16 FULLWIDTH DIGIT SIX"):
        barcode_from_name("\uff16\uff12\uff10\uff19\uff19\uff15", SIX)


def test_name_first_without_opening_the_slide(tmp_path: Path) -> None:
    p = synthetic.write_corrupt(tmp_path / "620995_HE.svs", "garbage")  # the name is enough
    assert find_barcode(unit(p), SIX) == BarcodeResult("620995", "file name")


def test_dicom_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "620995"
    folder.mkdir()
    assert find_barcode(unit(folder), SIX).barcode == "620995"


def test_mrxs_name(tmp_path: Path) -> None:
    mrxs = synthetic.write_mrxs(tmp_path, "645750", images_x=2, images_y=2)
    assert find_barcode(unit(mrxs), SIX) == BarcodeResult("645750", "file name")


# --- from the slide's metadata ---------------------------------------------------------------


def test_from_aperio_metadata_when_name_has_none(tmp_path: Path) -> None:
    p = synthetic.write_svs(tmp_path / "scan_a.svs", barcode="620995", width=512, height=384)
    assert find_barcode(unit(p), SIX) == BarcodeResult("620995", "slide metadata (aperio.Barcode)")


def test_metadata_barcode_surrounding_spaces_and_leading_zeros(tmp_path: Path) -> None:
    p = synthetic.write_svs(tmp_path / "scan_b.svs", barcode="  007123 ", width=512, height=384)
    assert find_barcode(unit(p), SIX).barcode == "007123"


def test_regex_picks_barcode_out_of_a_longer_label(tmp_path: Path) -> None:
    p = synthetic.write_svs(tmp_path / "scan_c.svs", barcode="LAB-620995-HE", width=512, height=384)
    assert find_barcode(unit(p), SIX).barcode == "620995"


def test_neither_name_nor_metadata_is_no_barcode(tmp_path: Path) -> None:
    p = synthetic.write_svs(tmp_path / "scan_d.svs", width=512, height=384)
    with pytest.raises(errors.NoBarcode) as info:
        find_barcode(unit(p), SIX)
    message = str(info.value)
    assert str(p) in message and "scanner.barcode_regex" in message and "aperio.Barcode" in message
    assert info.value.path == str(p)
    assert info.value.state == "quarantined"


def test_unopenable_slide_without_barcode_in_name(tmp_path: Path) -> None:
    p = synthetic.write_corrupt(tmp_path / "scan_e.svs", "garbage")
    with pytest.raises(errors.NoBarcode, match="OpenSlide could not open"):
        find_barcode(unit(p), SIX)


def test_whole_metadata_value_used_when_regex_does_not_match_it(tmp_path: Path) -> None:
    anchored = compile_barcode_regex(r"^(?P<barcode>\d{6})_")
    p = synthetic.write_svs(tmp_path / "scan_f.svs", barcode="620995", width=512, height=384)
    assert find_barcode(unit(p), anchored).barcode == "620995"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("620 995", "whitespace"),
        ("../620995", "path separator"),
        ("a\\b", "path separator"),
        ("62\x00995", "control character"),
        ("..", "not a usable barcode"),
        ("x" * 65, "at most 64"),
        ("\u0666\u0662\u0660", "non-ASCII"),  # Arabic-Indic digits
    ],
)
def test_unsafe_metadata_barcodes_are_rejected(tmp_path: Path, value: str, reason: str) -> None:
    anchored = compile_barcode_regex(r"^(?P<barcode>\d{6})$")  # never matches these: whole value is tried
    with pytest.raises(errors.NoBarcode, match=reason):
        find_barcode(unit(tmp_path / "scan.svs"), anchored, properties={"aperio.Barcode": value})


def test_philips_barcode_is_base64_decoded(tmp_path: Path) -> None:
    props = {"philips.PIM_DP_UFS_BARCODE": base64.b64encode(b"620995").decode()}
    result = find_barcode(unit(tmp_path / "scan.tiff"), SIX, properties=props)
    assert result == BarcodeResult("620995", "slide metadata (philips.PIM_DP_UFS_BARCODE)")


def test_bad_base64_is_reported(tmp_path: Path) -> None:
    with pytest.raises(errors.NoBarcode, match="base64"):
        find_barcode(unit(tmp_path / "scan.tiff"), SIX, properties={"philips.PIM_DP_UFS_BARCODE": "%%%"})


def test_metadata_keys_are_tried_in_order(tmp_path: Path) -> None:
    props = {"aperio.Barcode": "111111", "openslide.barcode": "222222", "leica.barcode": "333333"}
    assert find_barcode(unit(tmp_path / "s.svs"), SIX, properties=props).barcode == "222222"
    assert METADATA_KEYS[0] == "openslide.barcode"


def test_a_bad_value_falls_through_to_the_next_key(tmp_path: Path) -> None:
    props = {"aperio.Barcode": "62 09 95", "dicom.ContainerIdentifier": "620995"}
    result = find_barcode(unit(tmp_path / "s.dcm"), SIX, properties=props)
    assert result.source == "slide metadata (dicom.ContainerIdentifier)"


def test_empty_metadata_value_is_ignored(tmp_path: Path) -> None:
    with pytest.raises(errors.NoBarcode, match="has none of"):
        find_barcode(unit(tmp_path / "s.svs"), SIX, properties={"aperio.Barcode": "   ", "tiff.Model": "x"})


def test_clean_barcode_strips_only_the_outside() -> None:
    assert clean_barcode("\t620995 \n") == "620995"
    assert clean_barcode("AB-12.x") == "AB-12.x"
    with pytest.raises(ValueError, match="empty"):
        clean_barcode("   ")


def test_regex_object_is_reusable() -> None:
    assert isinstance(SIX, re.Pattern)
    assert barcode_from_name("620995", SIX) == barcode_from_name("620995", SIX)
