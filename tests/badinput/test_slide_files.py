"""Files that carry a slide extension but are not a readable slide: each is quarantined, never stored.

Truncated, zero-byte, random and non-slide content under .svs/.tif/.ndpi/.bif/.mrxs, TIFFs with
contradicting tags, decompression bombs (tiny files claiming 200000 x 200000 pixels), and MIRAX
scans missing their data. One scanner processes the whole table in one batch.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.badinput.corpus import Case, Outcome, Site, check_outcome, check_storage, row, run_corpus


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (256, 192), (200, 120, 160)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (256, 192), (200, 120, 160)).save(buf, "JPEG")
    return buf.getvalue()


def _plain_tiff(site: Site, name: str) -> Path:
    """A one-page stripped TIFF photo: a TIFF, but no slide (no tiles, no pyramid)."""
    p = site.watch / name
    tifffile.imwrite(p, np.full((192, 256, 3), 180, np.uint8), photometric="rgb")
    return p


def _cut_last_byte(site: Site, name: str) -> Path:
    """A valid slide missing only its last byte, as a copy that died at the very end leaves it."""
    p = site.svs(name)
    data = p.read_bytes()
    p.write_bytes(data[:-1])
    return p


def _mrxs_without(site: Site, stem: str, part: str) -> Path:
    m = site.mrxs(stem)
    (site.watch / stem / part).unlink()
    return m


def _mrxs_garbled_index(site: Site, stem: str) -> Path:
    m = site.mrxs(stem)
    (site.watch / stem / "Index.dat").write_bytes(b"\x00garbage, not a MIRAX index" * 8)
    return m


def _folder_named_like_a_slide(site: Site, name: str) -> Path:
    d = site.watch / name
    d.mkdir()
    (d / "readme.txt").write_text("not a slide\n")
    return d


Q, C = "quarantined", "corrupt_slide"
CASES: list[Case] = [
    Case(
        "truncated-svs",
        "valid SVS cut in half",
        lambda s: s.corrupt("100001_trunc.svs", "truncated"),
        Q,
        C,
        ("{src}", "truncated"),
        row("100001"),
    ),
    Case(
        "last-byte-missing-svs",
        "valid SVS missing its last byte",
        lambda s: _cut_last_byte(s, "100002_cut.svs"),
        Q,
        C,
        ("{src}", "truncated"),
        row("100002"),
    ),
    Case(
        "zero-byte-svs",
        "0-byte .svs",
        lambda s: s.raw("100003_zero.svs", b""),
        Q,
        C,
        ("{src}", "zero bytes"),
        row("100003"),
    ),
    Case(
        "zero-byte-tif",
        "0-byte .tif",
        lambda s: s.raw("100004_zero.tif", b""),
        Q,
        C,
        ("{src}", "zero bytes"),
        row("100004"),
    ),
    Case(
        "zero-byte-ndpi",
        "0-byte .ndpi",
        lambda s: s.raw("100005_zero.ndpi", b""),
        Q,
        C,
        ("{src}", "zero bytes"),
        row("100005"),
    ),
    Case(
        "zero-byte-mrxs",
        "0-byte .mrxs, no data folder",
        lambda s: s.raw("100006_zero.mrxs", b""),
        Q,
        C,
        ("Slidedat.ini", "missing"),
        row("100006"),
    ),
    Case(
        "garbage-svs",
        "64 KiB random bytes as .svs",
        lambda s: s.corrupt("100007_rand.svs", "garbage"),
        Q,
        C,
        ("{src}", "not a slide format"),
        row("100007"),
    ),
    Case(
        "garbage-ndpi",
        "random bytes as .ndpi",
        lambda s: s.corrupt("100008_rand.ndpi", "garbage"),
        Q,
        C,
        ("{src}", "not a slide format"),
        row("100008"),
    ),
    Case(
        "garbage-bif",
        "random bytes as .bif",
        lambda s: s.corrupt("100009_rand.bif", "garbage"),
        Q,
        C,
        ("{src}",),
        row("100009"),
    ),
    Case(
        "text-as-svs",
        "a text file named .svs",
        lambda s: s.raw("100010_notes.svs", b"Scanned by Bob. Call me.\n" * 40),
        Q,
        C,
        ("{src}", "not a slide format"),
        row("100010"),
    ),
    Case(
        "png-as-tif",
        "a PNG picture named .tif",
        lambda s: s.raw("100011_photo.tif", _png_bytes()),
        Q,
        C,
        ("{src}", "not a slide format"),
        row("100011"),
    ),
    Case(
        "jpeg-as-svs",
        "a JPEG picture named .svs",
        lambda s: s.raw("100012_photo.svs", _jpeg_bytes()),
        Q,
        C,
        ("{src}", "not a slide format"),
        row("100012"),
    ),
    Case(
        "plain-tiff-as-svs",
        "a one-page stripped TIFF photo named .svs",
        lambda s: _plain_tiff(s, "100013_photo.svs"),
        Q,
        C,
        ("{src}",),
        row("100013"),
    ),
    Case(
        "bad-tags-tif",
        "TIFF whose tile tags contradict each other",
        lambda s: s.corrupt("100014_tags.tif", "bad_tags"),
        Q,
        C,
        ("{src}",),
        row("100014"),
    ),
    Case(
        "bomb-tif",
        "tiny TIFF claiming 200000x200000 in one strip",
        lambda s: s.corrupt("100015_bomb.tif", "bomb"),
        Q,
        C,
        ("{src}",),
        row("100015"),
    ),
    Case(
        "bomb-tiled-svs",
        "tiny tiled TIFF claiming 200000x200000, no pyramid",
        lambda s: s.corrupt("100016_bomb.svs", "bomb_tiled"),
        Q,
        C,
        ("{src}", "decode limit"),
        row("100016"),
    ),
    Case(
        "mrxs-no-index",
        "MIRAX without Index.dat",
        lambda s: _mrxs_without(s, "100017_m", "Index.dat"),
        Q,
        C,
        ("Index.dat", "missing"),
        row("100017"),
    ),
    Case(
        "mrxs-no-slidedat",
        "MIRAX without Slidedat.ini",
        lambda s: _mrxs_without(s, "100018_m", "Slidedat.ini"),
        Q,
        C,
        ("Slidedat.ini", "missing"),
        row("100018"),
    ),
    Case(
        "mrxs-garbled-index",
        "MIRAX whose Index.dat is garbage",
        lambda s: _mrxs_garbled_index(s, "100019_m"),
        Q,
        C,
        ("100019_m",),
        row("100019"),
    ),
    Case(
        "folder-named-svs",
        "a folder named 100020.svs",
        lambda s: _folder_named_like_a_slide(s, "100020.svs"),
        Q,
        C,
        ("{src}", "no .dcm file"),
        row("100020"),
    ),
    Case(
        "good-control",
        "a valid SVS (control: the batch still stores good scans)",
        lambda s: s.svs("100099_ok.svs"),
        "stored",
        None,
        (),
        row("100099"),
        stored_as="Prec01/Run-2/Prec01_Run-2_P1_Cardinal_100099.svs",
    ),
]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str
) -> Iterator[tuple[dict[str, Outcome], Site]]:
    yield from run_corpus(tmp_path_factory.mktemp("slides"), CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_slide_file(case: Case, corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_outcome(outcomes[case.id], site)


def test_storage_holds_only_the_good_scan(corpus: tuple[dict[str, Outcome], Site]) -> None:
    outcomes, site = corpus
    check_storage(outcomes, site)
