"""Check that a scan is a readable whole-slide image, and make its thumbnail, with OpenSlide.

A scan passes when OpenSlide opens it, every TIFF tile it lists lies inside the file, its
smallest level decodes completely and a sample from every level decodes. Anything else is
``errors.CorruptSlide`` naming the file and what failed. Image sizes are checked before any
pixels are read, so a file claiming 200000 x 200000 pixels with no pyramid is refused without
allocating gigabytes. Files are only ever opened for reading.

A scan matching ``[scanner] passthrough_patterns`` (a format OpenSlide cannot read: Philips
iSyntax, Zeiss CZI, Olympus VSI) is not opened at all: its files must be there and non-empty, and
its ``SlideInfo`` says ``validated=False`` with the note "not validated: <format> is not readable
by OpenSlide", never "corrupt".

openslide-python finds the OpenSlide library shipped by the ``openslide-bin`` wheel on its own.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import openslide
import tifffile
from PIL import Image

from scanner_agent.core import errors
from scanner_agent.core.patterns import matches
from scanner_agent.scanunit import ScanUnit

#: A smallest level bigger than this (pixels) is refused: a real pyramid always has a small
#: level, so a huge one means a missing pyramid or a decompression bomb.
MAX_DECODE_PIXELS = 64_000_000
#: Pixels decoded per OpenSlide call while reading the smallest level (RGBA: 4 bytes each), so
#: memory stays bounded whatever the level's size.
_CHUNK_PIXELS = 4_000_000
#: Side of the square sampled from the middle of each level.
_SAMPLE = 512
_TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
#: What a person calls the pass-through formats, by extension (others: the extension itself).
_FORMAT_NAMES = {
    ".isyntax": "Philips iSyntax",
    ".czi": "Zeiss CZI",
    ".vsi": "Olympus VSI",
    ".qptiff": "Akoya QPTIFF",
}


@dataclass(frozen=True)
class SlideInfo:
    """What validation learnt about a slide; ``properties`` are OpenSlide's (all strings)."""

    vendor: str | None
    width: int
    height: int
    level_count: int
    mpp: float | None
    properties: Mapping[str, str] = field(repr=False)
    thumbnail_png: bytes = field(repr=False)
    #: False for a pass-through format: stored as it is, never opened (``note`` says why).
    validated: bool = True
    note: str = ""


def format_name(unit: ScanUnit) -> str:
    """The scan's format as a person names it (``Zeiss CZI``), for pass-through notes."""
    ext = unit.primary.suffix.lower()
    return _FORMAT_NAMES.get(ext, ext.lstrip(".").upper() or "folder")


def is_passthrough(unit: ScanUnit, patterns: Sequence[str]) -> bool:
    """Whether the scan matches one of ``[scanner] passthrough_patterns``."""
    return bool(patterns) and matches(unit.name, patterns)


def passthrough_info(unit: ScanUnit) -> SlideInfo:
    """A pass-through scan's record: its files are there and non-empty; nothing is decoded."""
    files = unit.files()
    if not unit.primary.exists():
        raise errors.SourceChanged(
            f"{unit.primary} is missing (moved or deleted while being checked?)", path=str(unit.primary)
        )
    for path, _rel in files:
        _check_nonempty(path, what=f"{format_name(unit)} file")
    return SlideInfo(
        vendor=None,
        width=0,
        height=0,
        level_count=0,
        mpp=None,
        properties=MappingProxyType({}),
        thumbnail_png=b"",
        validated=False,
        note=f"not validated: {format_name(unit)} is not readable by OpenSlide",
    )


def slide_file(unit: ScanUnit) -> Path:
    """The file OpenSlide opens for ``unit``: the file itself, the ``.mrxs``, or a DICOM folder's
    first ``.dcm`` (OpenSlide finds the rest of the series from it)."""
    if unit.primary.is_dir():
        dcms = sorted(p for p in unit.primary.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
        if not dcms:
            raise errors.CorruptSlide(
                f"DICOM folder {unit.primary} holds no .dcm file", path=str(unit.primary)
            )
        return dcms[0]
    return unit.primary


def read_properties(path: Path) -> Mapping[str, str]:
    """OpenSlide's properties of the slide at ``path`` (file, .mrxs or DICOM folder), or ``{}``
    if it cannot be opened. Used to look for a barcode; validation reports the reason."""
    try:
        target = slide_file(ScanUnit.from_path(path))
        with openslide.OpenSlide(str(target)) as slide:
            return MappingProxyType(dict(slide.properties))
    except (openslide.OpenSlideError, errors.ScanError, OSError):
        return MappingProxyType({})


def validate_slide(
    unit: ScanUnit,
    *,
    thumbnail_size: int = 512,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
    passthrough: Sequence[str] = (),
) -> SlideInfo:
    """Open the scan with OpenSlide, check its structure, decode it and make a PNG thumbnail.

    A scan matching ``passthrough`` patterns is only checked for presence (``passthrough_info``).
    Raises ``errors.CorruptSlide`` (file named, reason given) for an unreadable slide,
    ``errors.SourceChanged`` if the file vanished, ``errors.ScanError`` if it cannot be read
    for lack of permission (not the slide's fault, so not quarantined).
    """
    if is_passthrough(unit, passthrough):
        return passthrough_info(unit)
    target = slide_file(unit)
    _check_files(unit, target)
    if _is_tiff(target):
        _check_tiff_extents(target)
    try:
        slide = openslide.OpenSlide(str(target))
    except openslide.OpenSlideUnsupportedFormatError:
        raise _corrupt(target, f"OpenSlide cannot open {target}: not a slide format it recognises") from None
    except openslide.OpenSlideError as exc:
        raise _corrupt(target, f"OpenSlide cannot open {target}: {exc}") from None
    with slide:
        dims = _checked_dimensions(slide, target, max_decode_pixels)
        props = MappingProxyType(dict(slide.properties))
        smallest = len(dims) - 1
        thumb = _decode_level(slide, target, smallest, thumbnail_size)
        view = _thumbnail_level(dims, thumbnail_size, max_decode_pixels)
        if view != smallest:  # a sharper source for the picture people look at
            thumb = _decode_level(slide, target, view, thumbnail_size)
        _sample_levels(slide, target, dims)
    return SlideInfo(
        vendor=props.get("openslide.vendor"),
        width=dims[0][0],
        height=dims[0][1],
        level_count=len(dims),
        mpp=_mpp(props),
        properties=props,
        thumbnail_png=_png(thumb),
    )


# --- checks before OpenSlide -----------------------------------------------------------------


def _corrupt(target: Path, message: str) -> errors.CorruptSlide:
    return errors.CorruptSlide(message, path=str(target))


def _check_files(unit: ScanUnit, target: Path) -> None:
    """Existence, readability and emptiness, with messages a person understands."""
    if unit.companion is not None:  # MIRAX: the .mrxs is only a marker, the data is in the folder
        if not target.exists():
            raise errors.SourceChanged(
                f"{target} is missing (moved or deleted while being checked?)", path=str(target)
            )
        for name in ("Slidedat.ini", "Index.dat"):
            _check_nonempty(unit.companion / name, what=f"MIRAX {name}", vanished_is_corrupt=True)
        return
    _check_nonempty(target, what="slide file")


def _check_nonempty(path: Path, *, what: str, vanished_is_corrupt: bool = False) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        if vanished_is_corrupt:  # a part of the scan that was never written
            raise _corrupt(path, f"{what} {path} is missing") from None
        raise errors.SourceChanged(
            f"{what} {path} is missing (moved or deleted while being checked?)", path=str(path)
        ) from None
    except PermissionError:
        raise errors.UnreadableSource(
            f"{what} {path} cannot be read: permission denied", path=str(path)
        ) from None
    if size == 0:
        raise _corrupt(path, f"{what} {path} is zero bytes")


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) in _TIFF_MAGICS


def _check_tiff_extents(path: Path) -> None:
    """Every tile/strip a TIFF directory lists must lie inside the file.

    This is what catches a copy cut short: OpenSlide opens such a file happily when the
    directories survived, and only fails later, on the missing tiles. If tifffile cannot parse
    the file at all, OpenSlide's verdict is left to stand.
    """
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                # strict=False: a damaged directory may list more offsets than counts; check the pairs.
                pairs = zip(page.dataoffsets, page.databytecounts, strict=False)
                ends = [o + n for o, n in pairs if n > 0]
                if ends and max(ends) > size:
                    raise _corrupt(
                        path,
                        f"{path} is truncated or damaged: TIFF directory {index} lists image data "
                        f"up to byte {max(ends)} but the file has only {size} bytes",
                    )
    except errors.CorruptSlide:
        raise
    except Exception:  # tifffile disagrees with an exotic vendor layout: not our verdict to give
        return


# --- checks with OpenSlide -------------------------------------------------------------------


def _checked_dimensions(
    slide: openslide.OpenSlide, target: Path, max_decode_pixels: int
) -> tuple[tuple[int, int], ...]:
    dims = slide.level_dimensions
    if not dims:
        raise _corrupt(target, f"{target} has no image levels")
    for level, (w, h) in enumerate(dims):
        if w <= 0 or h <= 0:
            raise _corrupt(target, f"{target}: level {level} has impossible size {w}x{h}")
    w, h = dims[-1]
    if w * h > max_decode_pixels:
        raise _corrupt(
            target,
            f"{target}: smallest level {len(dims) - 1} is {w}x{h} "
            f"({w * h / 1e6:.0f} Mpx), over the {max_decode_pixels / 1e6:.0f} Mpx "
            "decode limit; refusing to read it (missing pyramid or decompression bomb)",
        )
    return dims


def _thumbnail_level(dims: tuple[tuple[int, int], ...], thumbnail_size: int, max_decode_pixels: int) -> int:
    """The smallest level still at least ``thumbnail_size`` on its long side, within the limit."""
    for level in range(len(dims) - 1, -1, -1):
        w, h = dims[level]
        if w * h > max_decode_pixels:
            break
        if max(w, h) >= thumbnail_size:
            return level
    return len(dims) - 1


def _decode_level(slide: openslide.OpenSlide, target: Path, level: int, thumbnail_size: int) -> Image.Image:
    """Decode a whole level, band by band, into a thumbnail on the slide's background colour."""
    w, h = slide.level_dimensions[level]
    downsample = slide.level_downsamples[level]
    scale = min(1.0, thumbnail_size / max(w, h))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    background = "#" + slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
    thumb = Image.new("RGB", (tw, th), background)
    # Read in pieces of at most _CHUNK_PIXELS (full-width bands; very wide levels also split
    # across), each shrunk straight into its place in the thumbnail.
    piece_w = min(w, _CHUNK_PIXELS)
    piece_h = max(1, min(h, _CHUNK_PIXELS // piece_w))
    for y in range(0, h, piece_h):
        ph = min(piece_h, h - y)
        for x in range(0, w, piece_w):
            pw = min(piece_w, w - x)
            try:
                region = slide.read_region((round(x * downsample), round(y * downsample)), level, (pw, ph))
            except openslide.OpenSlideError as exc:
                raise _corrupt(target, f"{target}: level {level} could not be decoded: {exc}") from None
            x0, x1 = round(x * scale), round((x + pw) * scale)
            y0, y1 = round(y * scale), round((y + ph) * scale)
            if x1 > x0 and y1 > y0:
                flat = Image.new("RGB", region.size, background)
                flat.paste(region, None, region)
                thumb.paste(flat.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), (x0, y0))
    return thumb


def _sample_levels(slide: openslide.OpenSlide, target: Path, dims: tuple[tuple[int, int], ...]) -> None:
    """Decode a square from the middle of every level, so a damaged full-resolution level is
    caught too, not only the small one the thumbnail comes from."""
    for level, (w, h) in enumerate(dims[:-1]):
        sw, sh = min(_SAMPLE, w), min(_SAMPLE, h)
        x, y = (w - sw) // 2, (h - sh) // 2
        ds = slide.level_downsamples[level]
        try:
            slide.read_region((round(x * ds), round(y * ds)), level, (sw, sh))
        except openslide.OpenSlideError as exc:
            raise _corrupt(
                target, f"{target}: level {level} could not be decoded at ({x}, {y}): {exc}"
            ) from None


def _mpp(props: Mapping[str, str]) -> float | None:
    try:
        value = float(props["openslide.mpp-x"])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False)
    return buf.getvalue()
