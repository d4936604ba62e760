"""A scan's barcode from its name, else from its real slide metadata (OpenSlide on generated slides).

The text rules (regex, cleaning, metadata keys, base64) are unit-tested in ``tests/unit/test_barcode.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from scanner_agent.core import errors
from scanner_agent.core.barcode import BarcodeResult, compile_barcode_regex
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import find_barcode
from scanner_agent.testing import synthetic

SIX = compile_barcode_regex(r"(?P<barcode>\d{6})")


def unit(path: Path) -> ScanUnit:
    return ScanUnit.from_path(path)


# --- from the name ---------------------------------------------------------------------------


def test_name_first_without_opening_the_slide(tmp_path: Path) -> None:
    p = synthetic.write_corrupt(tmp_path / "620995_HE.svs", "garbage")  # the name is enough
    assert find_barcode(unit(p), SIX) == BarcodeResult("620995", "file name")


def test_dicom_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "620995"
    folder.mkdir()
    assert find_barcode(unit(folder), SIX) == BarcodeResult("620995", "file name")


def test_mrxs_name(tmp_path: Path) -> None:
    mrxs = synthetic.write_mrxs(tmp_path, "645750", images_x=2, images_y=2)
    assert find_barcode(unit(mrxs), SIX) == BarcodeResult("645750", "file name")


def test_ambiguous_name_falls_back_to_metadata_and_says_so(tmp_path: Path) -> None:
    p = synthetic.write_svs(tmp_path / "620995_645750.svs", width=512, height=384)
    with pytest.raises(errors.NoBarcode) as info:
        find_barcode(unit(p), SIX)
    assert "file name '620995_645750': the regex matches 2 different barcodes" in info.value.message


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


def test_whole_metadata_value_used_when_regex_does_not_match_it(tmp_path: Path) -> None:
    anchored = compile_barcode_regex(r"^(?P<barcode>\d{6})_")
    p = synthetic.write_svs(tmp_path / "scan_f.svs", barcode="620995", width=512, height=384)
    assert find_barcode(unit(p), anchored).barcode == "620995"


def test_neither_name_nor_metadata_is_no_barcode(tmp_path: Path) -> None:
    p = synthetic.write_svs(tmp_path / "scan_d.svs", width=512, height=384)
    with pytest.raises(errors.NoBarcode) as info:
        find_barcode(unit(p), SIX)
    message = info.value.message
    assert message.startswith(f"No barcode for {p}: file name 'scan_d' does not match scanner.barcode_regex")
    assert "slide metadata has none of openslide.barcode, aperio.Barcode" in message
    assert message.endswith("; label image: no barcode symbol could be decoded")  # a text-only label
    assert info.value.path == str(p)
    assert info.value.state == "quarantined"


def test_unopenable_slide_without_barcode_in_name(tmp_path: Path) -> None:
    p = synthetic.write_corrupt(tmp_path / "scan_e.svs", "garbage")
    with pytest.raises(errors.NoBarcode) as info:
        find_barcode(unit(p), SIX)
    assert info.value.message.endswith(
        "; slide metadata: OpenSlide could not open the slide; "
        "label image: OpenSlide could not open the slide (Unsupported or missing image file)"
    )


# --- properties handed in by the caller (no slide is opened) ------------------------------------


def test_given_properties_are_used_instead_of_opening_the_slide(tmp_path: Path) -> None:
    missing = tmp_path / "never_written.tiff"  # opening it would fail: the properties must be used
    props = {"philips.PIM_DP_UFS_BARCODE": base64.b64encode(b"620995").decode()}
    result = find_barcode(unit(missing), SIX, properties=props)
    assert result == BarcodeResult("620995", "slide metadata (philips.PIM_DP_UFS_BARCODE)")


def test_unusable_given_properties_are_named_in_the_error(tmp_path: Path) -> None:
    anchored = compile_barcode_regex(r"^(?P<barcode>\d{6})$")
    with pytest.raises(errors.NoBarcode) as info:
        find_barcode(
            unit(tmp_path / "scan.svs"),
            anchored,
            properties={"aperio.Barcode": "../620995"},
            sources=("name", "metadata"),
        )
    assert info.value.message.endswith("; slide metadata aperio.Barcode: it contains the path separator '/'")
