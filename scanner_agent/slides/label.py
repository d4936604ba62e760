"""The slide's label picture and the codes printed on it (zxing-cpp), and Hamamatsu's barcode tag.

OpenSlide exposes the label as the associated image ``label``; scanners without one (Ventana BIF,
Hamamatsu NDPI, Leica SCN) photograph it in ``macro``, so that is read instead. The picture is
decoded for DataMatrix, QR and the common 1D codes at any rotation: zxing-cpp finds 2D codes at
any angle and 1D codes within about 15 degrees of a multiple of 90, so a label where nothing is
found is tried again with its contrast stretched and then turned by 30 and 60 degrees. What a
decoded text means (does it match ``barcode_regex``, two different codes) is ``core.barcode``'s.

Every failure is a ``ValueError`` whose message says what was tried, for the "no barcode" error.
"""

from __future__ import annotations

import io
from pathlib import Path

import openslide
import tifffile
import zxingcpp
from openslide import lowlevel
from PIL import Image, ImageOps

from scanner_agent.core.barcode import NDPI_BARCODE_TAG, LabelCode

#: The associated images holding the label, in the order they are looked for.
LABEL_IMAGES = ("label", "macro")
#: A label or macro picture bigger than this (pixels) is not decoded: a real one is at most a few
#: megapixels, so a huge one is a damaged or hostile file.
MAX_LABEL_PIXELS = 40_000_000
#: Long side (pixels) a picture is reduced to before decoding, to keep decoding fast.
_DECODE_LONG_SIDE = 2400
#: Long side of the picture attached to a "no barcode" alert.
_ATTACH_LONG_SIDE = 800
#: The codes printed on slide labels: the 2D ones and the common 1D ones (fewer formats: faster,
#: and fewer chances of reading a pattern on the label as a code).
_FORMATS = zxingcpp.barcode_formats_from_str(
    "DataMatrix,QRCode,MicroQRCode,Aztec,PDF417,Code128,Code39,Code93,Codabar,ITF,EAN13,EAN8,UPCA,UPCE"
)
#: Extra turns (degrees) for 1D codes printed at an angle; with zxing's own 90-degree turns they
#: bring every angle within 15 degrees of a readable one.
_TURNS = (30, 60)


def read_label(target: Path) -> tuple[str, Image.Image]:
    """The label picture of the slide at ``target`` (the file OpenSlide opens): ("label" or
    "macro", RGB image). ``ValueError`` says why there is none."""
    try:
        slide = openslide.OpenSlide(str(target))
    except (openslide.OpenSlideError, OSError) as exc:
        raise ValueError(f"OpenSlide could not open the slide ({exc})") from None
    with slide:
        names = set(slide.associated_images.keys())
        name = next((n for n in LABEL_IMAGES if n in names), None)
        if name is None:
            have = ", ".join(sorted(names)) or "none"
            raise ValueError(f"the slide has no label or macro image (associated images: {have})")
        try:
            w, h = lowlevel.get_associated_image_dimensions(slide._osr, name)
        except openslide.OpenSlideError as exc:
            raise ValueError(f"its {name} image is not a readable image ({exc})") from None
        if w <= 0 or h <= 0 or w * h > MAX_LABEL_PIXELS:
            raise ValueError(f"its {name} image claims {w}x{h} pixels; not decoded")
        try:
            picture = slide.associated_images[name]
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise ValueError(f"its {name} image is not a readable image ({exc})") from None
    flat = Image.new("RGB", picture.size, "white")
    flat.paste(picture, None, picture if picture.mode == "RGBA" else None)
    return name, flat


def decode_codes(picture: Image.Image) -> list[LabelCode]:
    """Every code zxing-cpp reads on ``picture``: as it is, then contrast-stretched, then turned."""
    gray = picture.convert("L")
    if max(gray.size) > _DECODE_LONG_SIDE:
        gray.thumbnail((_DECODE_LONG_SIDE, _DECODE_LONG_SIDE), Image.Resampling.LANCZOS)
    found = _read(gray)
    if found:
        return found
    stretched = ImageOps.autocontrast(gray, cutoff=1)  # a faint print or a dim photograph
    found = _read(stretched)
    for angle in _TURNS:
        if found:
            break
        turned = stretched.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=255)
        found = _read(turned)
    return found


def _read(gray: Image.Image) -> list[LabelCode]:
    codes = zxingcpp.read_barcodes(gray, formats=_FORMATS)
    out: list[LabelCode] = []
    for code in codes:
        item = LabelCode(code.text, _symbology(code.format))
        if code.valid and item not in out:
            out.append(item)
    return out


def _symbology(fmt: zxingcpp.BarcodeFormat) -> str:
    """zxing-cpp's name for a format without spaces ("DataMatrix", "Code128", "QRCode")."""
    return str(fmt).replace(" ", "")


def attachment_png(picture: Image.Image) -> bytes:
    """The label picture as a PNG small enough for an alert."""
    small = picture.copy()
    small.thumbnail((_ATTACH_LONG_SIDE, _ATTACH_LONG_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "PNG")
    return buf.getvalue()


def ndpi_barcode_text(path: Path) -> str:
    """The text of Hamamatsu's barcode tag (65468) in the NDPI at ``path``, stripped ("" when the
    tag is there but empty). ``ValueError`` when the file has no such tag or cannot be parsed."""
    try:
        value = _first_page_tag(path, ndpi_offsets=True)
    except Exception:
        # tifffile reads a ``.ndpi`` with NDPI's 64-bit IFD offsets; a file laid out as a classic
        # TIFF (an exporter's, or the synthetic ones) only parses without them.
        try:
            value = _first_page_tag(path, ndpi_offsets=False)
        except Exception as exc:  # tifffile on a damaged file: any parser error means "not readable"
            raise ValueError(f"it is not a TIFF tifffile can read ({type(exc).__name__}: {exc})") from None
    if value is None:
        raise ValueError("it has no barcode tag")
    if isinstance(value, bytes):
        try:
            value = value.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("its barcode tag is not UTF-8 text") from None
    if not isinstance(value, str):
        raise ValueError(f"its barcode tag holds {type(value).__name__}, not text")
    return value.strip("\0 \t\r\n")


def _first_page_tag(path: Path, *, ndpi_offsets: bool) -> object:
    with tifffile.TiffFile(path, is_ndpi=ndpi_offsets) as tif:
        tag = tif.pages.first.tags.get(NDPI_BARCODE_TAG)
        return None if tag is None else tag.value
