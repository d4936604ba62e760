"""Every common slide format end to end: validated, barcode found where the format carries one, stored as
one unit, named from the sheet.

Each slide is built here (``scanner_agent.testing``) to what OpenSlide's driver for that format
reads, then goes through the daemon's own path (``harness.process``: journal row, Prefect run)
with a real CSV sheet and real storage. The stored copy must open in OpenSlide again with the
same vendor, and the scanner's copy must be gone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openslide
import pytest

from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import slide_file
from scanner_agent.testing.dicom import write_dicom_wsi
from scanner_agent.testing.ndpi import write_ndpi
from scanner_agent.testing.synthetic import write_generic_tiff, write_mrxs, write_svs
from scanner_agent.testing.vendor_tiff import write_bif, write_gt450_svs, write_philips_tiff, write_scn
from tests.harness import Folders, make_agent, process, write_config

STORED = "Prec01_Run-2_P1_Cardinal_620995"
SIZE = {"width": 1024, "height": 768}


@pytest.fixture
def site(tmp_path: Path, prefect_api: str) -> Iterator[tuple[Folders, Any]]:
    cfg = write_config(tmp_path)
    agent = make_agent(cfg)
    yield Folders(tmp_path), agent
    agent.close()


Maker = Callable[[Path, str, str | None], Path]  # (watch folder, file stem, barcode) -> the scan's path

#: format -> (maker, stored extension, OpenSlide vendor, where its barcode is, or None if the format has none)
FORMATS: dict[str, tuple[Maker, str, str, str | None]] = {
    "aperio-svs": (
        lambda w, stem, bc: write_svs(w / f"{stem}.svs", barcode=bc, **SIZE),
        ".svs",
        "aperio",
        "aperio.Barcode",
    ),
    "aperio-gt450": (
        lambda w, stem, bc: write_gt450_svs(w / f"{stem}.svs", barcode=bc, **SIZE),
        ".svs",
        "aperio",
        "aperio.Barcode",
    ),
    "hamamatsu-ndpi": (
        lambda w, stem, bc: write_ndpi(w / f"{stem}.ndpi", barcode=bc, **SIZE),
        ".ndpi",
        "hamamatsu",
        None,  # in TIFF tag 65468, which OpenSlide does not parse (read by the label-barcode work)
    ),
    "mirax": (
        lambda w, stem, bc: write_mrxs(w, stem, barcode=bc, images_x=4, images_y=3),
        ".mrxs",
        "mirax",
        None,  # MIRAX carries no barcode text: the name, or the label picture
    ),
    "ventana-bif": (
        lambda w, stem, bc: write_bif(w / f"{stem}.bif", barcode=bc, **SIZE),
        ".bif",
        "ventana",
        "ventana.Barcode1D",
    ),
    "leica-scn": (
        lambda w, stem, bc: write_scn(w / f"{stem}.scn", barcode=bc, **SIZE),
        ".scn",
        "leica",
        "leica.barcode",
    ),
    "philips-tiff": (
        lambda w, stem, bc: write_philips_tiff(w / f"{stem}.tiff", barcode=bc, **SIZE),
        ".tiff",
        "philips",
        "openslide.barcode",
    ),
    "dicom": (
        lambda w, stem, bc: write_dicom_wsi(w / stem, barcode=bc, **SIZE),
        "",
        "dicom",
        "openslide.barcode",
    ),
    "generic-tiff": (
        lambda w, stem, bc: write_generic_tiff(w / f"{stem}.tif", **SIZE),
        ".tif",
        "generic-tiff",
        None,
    ),
}


def _unit_files(unit: ScanUnit) -> set[str]:
    return {rel for _p, rel in unit.files()}


def _stored_rels(dest: Path) -> set[str]:
    return {rel for _p, rel in ScanUnit.from_path(dest).files()}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_named_by_barcode_is_validated_stored_as_one_unit_and_named_from_the_sheet(
    site: tuple[Folders, Any], fmt: str
) -> None:
    at, agent = site
    maker, ext, vendor, _where = FORMATS[fmt]
    src = maker(at.watch, "620995_scan", "620995")
    unit = ScanUnit.from_path(src)
    files_before = _unit_files(unit)
    [rec] = process(agent, src)
    assert rec.state == "stored", (fmt, rec.kind, rec.reason)
    assert rec.barcode == "620995" and rec.details["barcode_source"] == "file name"
    dest = at.storage / "Prec01" / "Run-2" / f"{STORED}{ext}"
    assert Path(rec.dest) == dest
    # One unit: every file of the scan is stored (renamed with it), and the scanner's copy is gone.
    stored = _stored_rels(dest)
    assert len(stored) == len(files_before), (sorted(stored), sorted(files_before))
    assert not unit.exists() and all(not (at.watch / r).exists() for r in files_before)
    sidecar = json.loads((dest.parent / f"{STORED}.json").read_text())
    assert sidecar["slide"]["vendor"] == vendor and "validated" not in sidecar["slide"]  # validated
    with openslide.OpenSlide(str(slide_file(ScanUnit.from_path(dest)))) as slide:
        assert slide.properties["openslide.vendor"] == vendor
        slide.read_region((0, 0), slide.level_count - 1, (16, 16))


@pytest.mark.parametrize("fmt", [f for f, spec in FORMATS.items() if spec[3] is not None])
def test_format_with_a_barcode_in_its_metadata_is_found_there_when_the_name_has_none(
    site: tuple[Folders, Any], fmt: str
) -> None:
    at, agent = site
    maker, ext, _vendor, where = FORMATS[fmt]
    src = maker(at.watch, "scan_0001", "620995")
    [rec] = process(agent, src)
    assert rec.state == "stored", (fmt, rec.kind, rec.reason)
    assert rec.barcode == "620995"
    # OpenSlide's own normalised key (4.0.1+) or the vendor's: both are the vendor's barcode field.
    assert rec.details["barcode_source"] in {
        f"slide metadata ({where})",
        "slide metadata (openslide.barcode)",
    }
    assert Path(rec.dest) == at.storage / "Prec01" / "Run-2" / f"{STORED}{ext}"


def test_ndpi_carries_its_barcode_in_tag_65468_and_an_empty_tag_can_be_written(tmp_path: Path) -> None:
    import tifffile

    for barcode in ("620995", ""):
        path = write_ndpi(tmp_path / f"x{barcode}.ndpi", barcode=barcode, width=256, height=256)
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].tags[65468].value == barcode
        with openslide.OpenSlide(str(path)) as slide:
            assert slide.properties["openslide.vendor"] == "hamamatsu"
            assert "macro" in slide.associated_images
