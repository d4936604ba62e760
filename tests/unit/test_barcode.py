"""Barcodes out of names and out of slide metadata properties: the text rules, no slide opened."""

from __future__ import annotations

import base64
import re

import pytest

from scanner_agent.core import errors
from scanner_agent.core.barcode import (
    METADATA_KEYS,
    BarcodeResult,
    barcode_from_name,
    barcode_from_properties,
    clean_barcode,
    compile_barcode_regex,
)

SIX = compile_barcode_regex(r"(?P<barcode>\d{6})")

# --- the regex -------------------------------------------------------------------------------


def test_regex_needs_the_barcode_group() -> None:
    with pytest.raises(errors.ConfigError, match=r"scanner\.barcode_regex.*named group 'barcode'"):
        compile_barcode_regex(r"\d{6}")


def test_invalid_regex_names_the_key() -> None:
    with pytest.raises(errors.ConfigError, match=r"scanner\.barcode_regex.*not a valid regular expression"):
        compile_barcode_regex(r"(?P<barcode>\d{6}")


def test_regex_object_is_reusable() -> None:
    assert isinstance(SIX, re.Pattern)
    assert barcode_from_name("620995", SIX) == barcode_from_name("620995", SIX) == "620995"


# --- from a name -----------------------------------------------------------------------------


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


def test_an_optional_group_that_did_not_take_part_is_no_match() -> None:
    optional = compile_barcode_regex(r"S(?P<barcode>\d{6})?")
    assert barcode_from_name("S_only", optional) is None


# --- cleaning ----------------------------------------------------------------------------------


def test_clean_barcode_strips_only_the_outside() -> None:
    assert clean_barcode("\t620995 \n") == "620995"
    assert clean_barcode("AB-12.x") == "AB-12.x"
    assert clean_barcode("x" * 64) == "x" * 64
    with pytest.raises(ValueError, match="empty"):
        clean_barcode("   ")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("620 995", "whitespace"),
        ("../620995", "path separator"),
        ("a\\b", "path separator"),
        ("62\x00995", "control character U\\+0000"),
        ("..", "not a usable barcode"),
        (".", "not a usable barcode"),
        ("x" * 65, "65 characters long \\(at most 64\\)"),
        ("\u0666\u0662\u0660", "non-ASCII"),  # Arabic-Indic digits
    ],
)
def test_unsafe_barcodes_are_rejected(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        clean_barcode(value)


# --- from metadata properties --------------------------------------------------------------------


def test_aperio_barcode() -> None:
    result = barcode_from_properties({"aperio.Barcode": "620995"}, SIX)
    assert result == BarcodeResult("620995", "slide metadata (aperio.Barcode)")


def test_surrounding_spaces_and_leading_zeros() -> None:
    assert barcode_from_properties({"aperio.Barcode": "  007123 "}, SIX).barcode == "007123"


def test_regex_picks_barcode_out_of_a_longer_label() -> None:
    assert barcode_from_properties({"aperio.Barcode": "LAB-620995-HE"}, SIX).barcode == "620995"


def test_whole_value_used_when_regex_does_not_match_it() -> None:
    anchored = compile_barcode_regex(r"^(?P<barcode>\d{6})_")
    assert barcode_from_properties({"aperio.Barcode": "AB-1"}, anchored).barcode == "AB-1"


def test_unsafe_value_is_rejected_with_its_key() -> None:
    anchored = compile_barcode_regex(r"^(?P<barcode>\d{6})$")
    with pytest.raises(ValueError, match="slide metadata aperio.Barcode: it contains the path separator"):
        barcode_from_properties({"aperio.Barcode": "../620995"}, anchored)


def test_philips_barcode_is_base64_decoded() -> None:
    props = {"philips.PIM_DP_UFS_BARCODE": base64.b64encode(b"620995").decode()}
    result = barcode_from_properties(props, SIX)
    assert result == BarcodeResult("620995", "slide metadata (philips.PIM_DP_UFS_BARCODE)")


@pytest.mark.parametrize("raw", ["%%%", base64.b64encode(b"\xff\xfe").decode()])
def test_bad_base64_or_not_utf8_is_reported(raw: str) -> None:
    with pytest.raises(ValueError, match="philips.PIM_DP_UFS_BARCODE: it is not valid base64-encoded UTF-8"):
        barcode_from_properties({"philips.PIM_DP_UFS_BARCODE": raw}, SIX)


def test_only_philips_is_decoded() -> None:
    encoded = base64.b64encode(b"620995").decode()  # "NjIwOTk1": used as it is, not decoded
    assert barcode_from_properties({"aperio.Barcode": encoded}, SIX).barcode == encoded


def test_metadata_keys_are_tried_in_order() -> None:
    props = {"aperio.Barcode": "111111", "openslide.barcode": "222222", "leica.barcode": "333333"}
    assert barcode_from_properties(props, SIX).barcode == "222222"
    assert METADATA_KEYS[0] == "openslide.barcode"


def test_a_bad_value_falls_through_to_the_next_key() -> None:
    props = {"aperio.Barcode": "62 09 95", "dicom.ContainerIdentifier": "620995"}
    assert barcode_from_properties(props, SIX).source == "slide metadata (dicom.ContainerIdentifier)"


def test_every_bad_key_is_named() -> None:
    props = {"aperio.Barcode": "62 09 95", "leica.barcode": "a/b"}
    with pytest.raises(ValueError) as info:
        barcode_from_properties(props, SIX)
    assert str(info.value) == (
        "slide metadata aperio.Barcode: it contains whitespace; "
        "slide metadata leica.barcode: it contains the path separator '/'"
    )


def test_empty_values_and_other_keys_are_no_barcode() -> None:
    with pytest.raises(ValueError, match="^slide metadata has none of openslide.barcode, aperio.Barcode"):
        barcode_from_properties({"aperio.Barcode": "   ", "tiff.Model": "x"}, SIX)
    with pytest.raises(ValueError, match="has none of"):
        barcode_from_properties({}, SIX)


# --- codes decoded from a label, vendor text fields, the sources list ------------------------------

from scanner_agent.core.barcode import (  # noqa: E402
    LabelCode,
    barcode_from_label,
    barcode_from_text,
    check_barcode_sources,
)


def test_label_code_counts_only_when_the_regex_matches() -> None:
    codes = [LabelCode("ABC-12", "Code128"), LabelCode("S-620995", "DataMatrix")]
    assert barcode_from_label(codes, SIX, "label image") == BarcodeResult("620995", "label image, DataMatrix")


def test_label_with_nothing_valid_says_what_was_decoded() -> None:
    with pytest.raises(ValueError, match=r"label image: decoded Code128 'ABC-12' does not match"):
        barcode_from_label([LabelCode("ABC-12", "Code128")], SIX, "label image")
    with pytest.raises(ValueError, match=r"^label image: no barcode symbol could be decoded$"):
        barcode_from_label([], SIX, "label image")


def test_two_different_label_codes_are_an_error_naming_both() -> None:
    codes = [LabelCode("620995", "QRCode"), LabelCode("645750", "Code128"), LabelCode("620995", "Code128")]
    with pytest.raises(ValueError) as info:
        barcode_from_label(codes, SIX, "label image")
    assert str(info.value) == (
        "label image holds 2 different barcodes, '620995' (QRCode, Code128) and '645750' (Code128); "
        "nothing is guessed"
    )


def test_same_label_barcode_in_two_symbols() -> None:
    codes = [LabelCode("620995", "QRCode"), LabelCode("620995", "Code128")]
    assert barcode_from_label(codes, SIX, "label image").source == "label image, QRCode + Code128"


def test_vendor_text_field() -> None:
    where = "slide metadata (NDPI tag 65468)"
    assert barcode_from_text(" 620995 ", SIX, where) == BarcodeResult("620995", where)
    with pytest.raises(ValueError, match=r"^slide metadata \(NDPI tag 65468\) is empty$"):
        barcode_from_text("  ", SIX, where)
    with pytest.raises(ValueError, match="path separator"):
        barcode_from_text("a/b", SIX, where)


@pytest.mark.parametrize(
    ("sources", "problem"),
    [
        (["name", "ocr"], "unknown barcode source 'ocr'"),
        (["name", "name"], "listed twice"),
        ([], "at least one"),
    ],
)
def test_barcode_sources_are_checked(sources: list[str], problem: str) -> None:
    assert check_barcode_sources(["label", "name"]) == ("label", "name")
    with pytest.raises(ValueError, match=problem):
        check_barcode_sources(sources)
