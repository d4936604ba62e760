"""Slide validation and the synthetic slide files, with the real OpenSlide on real files."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from scanner_agent.core import errors
from scanner_agent.scanunit import ScanUnit
from scanner_agent.slides import SlideInfo, read_properties, slide_file, validate_slide
from scanner_agent.testing import synthetic


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    return {
        "svs": synthetic.write_svs(d / "620995.svs", barcode="620995"),
        "blurred": synthetic.write_svs(d / "blurred.svs", blurred=True),
        "blank": synthetic.write_svs(d / "blank.svs", blank=True),
        "tiff": synthetic.write_generic_tiff(d / "generic.tif"),
        "mrxs": synthetic.write_mrxs(d, "645750", barcode="645750"),
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png(info: SlideInfo) -> Image.Image:
    img = Image.open(io.BytesIO(info.thumbnail_png))
    assert img.format == "PNG"
    img.load()
    return img


def _sharpness(img: Image.Image) -> float:
    g = np.asarray(img.convert("L"), dtype=float)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


# --- good slides -----------------------------------------------------------------------------


def test_svs_opens_as_aperio_with_barcode_and_thumbnail(slides: dict[str, Path]) -> None:
    info = validate_slide(ScanUnit.from_path(slides["svs"]))
    assert info.vendor == "aperio"
    assert (info.width, info.height) == (4096, 3072)
    assert info.level_count == 3
    assert info.mpp == pytest.approx(0.5)
    assert info.properties["aperio.Barcode"] == "620995"
    thumb = _png(info)
    assert max(thumb.size) == 512 and thumb.mode == "RGB"
    assert thumb.size[0] / thumb.size[1] == pytest.approx(4 / 3, rel=0.02)


def test_svs_has_the_parts_of_a_real_svs(slides: dict[str, Path]) -> None:
    with openslide.OpenSlide(str(slides["svs"])) as s:
        assert set(s.associated_images) == {"thumbnail", "label", "macro"}
        assert s.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert s.properties["openslide.objective-power"] == "20"


def test_thumbnail_size_is_respected(slides: dict[str, Path]) -> None:
    info = validate_slide(ScanUnit.from_path(slides["svs"]), thumbnail_size=100)
    assert max(_png(info).size) <= 100


def test_validation_never_modifies_the_file(slides: dict[str, Path]) -> None:
    p = slides["svs"]
    before = (_sha(p), p.stat().st_mtime_ns, p.stat().st_size)
    validate_slide(ScanUnit.from_path(p))
    read_properties(p)
    assert (_sha(p), p.stat().st_mtime_ns, p.stat().st_size) == before


def test_generic_tiff(slides: dict[str, Path]) -> None:
    info = validate_slide(ScanUnit.from_path(slides["tiff"]))
    assert info.vendor == "generic-tiff"
    assert (info.width, info.height) == (2048, 1536)
    assert not any(k.startswith("aperio.") for k in info.properties)


def test_mrxs_opens_with_openslide(slides: dict[str, Path]) -> None:
    unit = ScanUnit.from_path(slides["mrxs"])
    assert unit.companion is not None and (unit.companion / "Slidedat.ini").is_file()
    info = validate_slide(unit)
    assert info.vendor == "mirax"
    assert (info.width, info.height) == (2048, 1536)
    assert info.level_count == 3
    assert info.properties["mirax.GENERAL.SLIDE_CREATION_FINISHED"] == "True"
    assert "label" in openslide.OpenSlide(str(slides["mrxs"])).associated_images
    assert _sharpness(_png(info)) > 100


def test_mrxs_levels_show_the_same_picture(slides: dict[str, Path]) -> None:
    """Tiles are placed where OpenSlide expects them: level 0 shrunk matches the top level."""
    with openslide.OpenSlide(str(slides["mrxs"])) as s:
        top = np.asarray(s.read_region((0, 0), 2, s.level_dimensions[2]).convert("RGB"), float)
        full = (
            s.read_region((0, 0), 0, s.dimensions)
            .convert("RGB")
            .resize(s.level_dimensions[2], Image.Resampling.BOX)
        )
    assert np.abs(np.asarray(full, float) - top).mean() < 12


def test_unfinished_mrxs_says_so(tmp_path: Path) -> None:
    mrxs = synthetic.write_mrxs(tmp_path, "scan", finished=False, images_x=2, images_y=2)
    ini = (tmp_path / "scan" / "Slidedat.ini").read_text()
    assert "SLIDE_CREATION_FINISHED = False" in ini
    assert read_properties(mrxs)["mirax.GENERAL.SLIDE_CREATION_FINISHED"] == "False"


def test_mrxs_without_its_data_is_corrupt(tmp_path: Path) -> None:
    mrxs = synthetic.write_mrxs(tmp_path, "scan", images_x=2, images_y=2)
    (tmp_path / "scan" / "Index.dat").unlink()
    with pytest.raises(errors.CorruptSlide, match="Index.dat"):
        validate_slide(ScanUnit.from_path(mrxs))


def test_large_smallest_level_is_decoded_in_bands(tmp_path: Path) -> None:
    # One level of 2400x2000 = 4.8 Mpx is more than one 4 Mpx band.
    p = synthetic.write_generic_tiff(tmp_path / "one-level.tif", width=2400, height=2000, tile=2400)
    info = validate_slide(ScanUnit.from_path(p))
    assert info.level_count == 1
    thumb = np.asarray(_png(info), float)
    with openslide.OpenSlide(str(p)) as s:
        ref = np.asarray(s.get_thumbnail((512, 512)).resize(_png(info).size), float)
    assert np.abs(thumb - ref).mean() < 6  # no seam or gap between bands


# --- what QC relies on -----------------------------------------------------------------------


def test_blurred_and_blank_are_distinguishable(slides: dict[str, Path]) -> None:
    sharp = _sharpness(_png(validate_slide(ScanUnit.from_path(slides["svs"]))))
    blurred = _sharpness(_png(validate_slide(ScanUnit.from_path(slides["blurred"]))))
    blank_img = _png(validate_slide(ScanUnit.from_path(slides["blank"])))
    assert sharp > 20 * blurred
    assert np.asarray(blank_img.convert("L")).mean() > 235
    assert _sharpness(blank_img) < blurred * 10


def test_synthetic_output_is_deterministic(tmp_path: Path) -> None:
    a = synthetic.write_svs(tmp_path / "a.svs", barcode="1", width=1024, height=768)
    b = synthetic.write_svs(tmp_path / "b.svs", barcode="1", width=1024, height=768)
    c = synthetic.write_svs(tmp_path / "c.svs", barcode="1", width=1024, height=768, seed=1)
    assert _sha(a) == _sha(b) != _sha(c)


def test_synthetic_rejects_barcode_that_breaks_the_description(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Aperio description"):
        synthetic.write_svs(tmp_path / "x.svs", barcode="a|b")


# --- broken slides ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", synthetic.CORRUPT_KINDS)
def test_corrupt_kinds_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    p = synthetic.write_corrupt(tmp_path / f"bad-{kind}.svs", kind)
    with pytest.raises(errors.CorruptSlide) as info:
        validate_slide(ScanUnit.from_path(p))
    assert str(p) in str(info.value)
    assert info.value.path == str(p)
    assert info.value.state == "quarantined"


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("zero", "is zero bytes"),
        ("truncated", "truncated"),
        ("garbage", "OpenSlide cannot open"),
        ("bad_tags", "level 0 could not be decoded"),
        ("bomb_tiled", "decode limit"),
    ],
)
def test_corrupt_messages_say_what_failed(tmp_path: Path, kind: str, words: str) -> None:
    p = synthetic.write_corrupt(tmp_path / "bad.svs", kind)
    with pytest.raises(errors.CorruptSlide, match=words):
        validate_slide(ScanUnit.from_path(p))


def test_bomb_is_refused_without_a_huge_allocation(tmp_path: Path) -> None:
    """In a fresh process: refusing a 200000 x 200000 single-level TIFF keeps memory small."""
    p = synthetic.write_corrupt(tmp_path / "bomb.tif", "bomb_tiled")
    code = (
        "import json, sys\n"
        "from scanner_agent.core import errors\n"
        "from scanner_agent.scanunit import ScanUnit\n"
        "from scanner_agent.slides import validate_slide\n"
        "try:\n"
        "    validate_slide(ScanUnit.from_path(sys.argv[1])); outcome = 'accepted'\n"
        "except errors.CorruptSlide as e:\n"
        "    outcome = str(e)\n"
        # VmHWM, not ru_maxrss: Linux carries the parent's peak across exec into ru_maxrss, so a child of a
        # big pytest process would report the parent's size.
        "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(json.dumps([outcome, hwm]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True)
    outcome, maxrss_kb = json.loads(out.stdout)
    assert "decode limit" in outcome
    assert maxrss_kb < 400 * 1024  # the image would need 160 GB


def test_decode_limit_is_a_parameter(slides: dict[str, Path]) -> None:
    with pytest.raises(errors.CorruptSlide, match="decode limit"):
        validate_slide(ScanUnit.from_path(slides["svs"]), max_decode_pixels=10_000)


def test_vanished_file_is_source_changed_not_corrupt(tmp_path: Path) -> None:
    with pytest.raises(errors.SourceChanged):
        validate_slide(ScanUnit.from_path(tmp_path / "gone.svs"))


def test_dicom_folder_without_dcm_files_is_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "620995"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    with pytest.raises(errors.CorruptSlide, match="no .dcm"):
        validate_slide(ScanUnit.from_path(folder))


def test_dicom_folder_opens_its_first_dcm(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("b.dcm", "a.DCM", "index.txt"):
        (folder / name).write_bytes(b"x")
    assert slide_file(ScanUnit.from_path(folder)) == folder / "a.DCM"


def test_read_properties_is_empty_when_slide_will_not_open(tmp_path: Path, slides: dict[str, Path]) -> None:
    assert read_properties(slides["svs"])["aperio.Barcode"] == "620995"
    assert read_properties(synthetic.write_corrupt(tmp_path / "g.svs", "garbage")) == {}
    assert read_properties(tmp_path / "missing.svs") == {}
