"""Hamamatsu NDPI slides that OpenSlide opens as vendor ``hamamatsu``.

What OpenSlide's NDPI driver (``openslide-vendor-hamamatsu.c``) needs: TIFF tag 65420 (the NDPI
format flag) in the first directory; each directory one strip holding one baseline JPEG; tag
65421 (source lens) > 0 for a pyramid level, levels widest first, tag 65424 (focal plane) 0;
and -1 for the macro photo. The barcode, when given, is in tag 65468 (``NDPI_BARCODE``), which
OpenSlide does not parse (``barcode=""`` writes the empty tag some scanners leave).

Written by hand rather than with tifffile: NDPI is a classic TIFF with 64-bit directory offsets
(tifffile and OpenSlide both read that layout, tifffile cannot write it), and its JPEG strips
come from Pillow, so no JPEG codec beyond Pillow is needed.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from scanner_agent.testing.artwork import Artwork, label_image, macro_image

NDPI_FORMAT_FLAG = 65420
NDPI_SOURCELENS = 65421
NDPI_FOCAL_PLANE = 65424
NDPI_BARCODE = 65468
_FLOAT, _SLONG, _LONG, _ASCII = 11, 9, 4, 2


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


_SHORT, _RATIONAL = 3, 5
_SIZES = {_ASCII: 1, _SHORT: 2, _LONG: 4, _RATIONAL: 8, _SLONG: 4, _FLOAT: 4}
_PACK = {_SHORT: "H", _LONG: "I", _SLONG: "i", _FLOAT: "f"}

Entry = tuple[int, int, int, bytes]  # tag, TIFF type, count, the value's bytes


def _entry(tag: int, kind: int, values: object) -> Entry:
    """One directory entry with its value(s) packed little-endian."""
    if kind == _ASCII:
        raw = str(values).encode("ascii") + b"\0"
        return tag, kind, len(raw), raw
    if kind == _RATIONAL:
        assert isinstance(values, tuple)
        return tag, kind, 1, struct.pack("<II", *values)
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    return tag, kind, len(items), struct.pack(f"<{len(items)}{_PACK[kind]}", *items)


class _NdpiFile:
    """A classic little-endian TIFF in NDPI's layout: 8-byte offsets to the first and each next
    directory, and after each directory the 4-byte high halves of its values (all zero here)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        fh.write(b"II*\0")
        self._next_ptr = fh.tell()
        fh.write(b"\0" * 8)

    def add(self, jpeg: bytes, width: int, height: int, tags: list[Entry]) -> None:
        fh = self.fh
        strip = fh.tell()
        fh.write(jpeg)
        if fh.tell() % 2:
            fh.write(b"\0")
        entries = sorted(
            [
                _entry(256, _LONG, width),
                _entry(257, _LONG, height),
                _entry(258, _SHORT, (8, 8, 8)),
                _entry(259, _SHORT, 7),  # JPEG
                _entry(262, _SHORT, 6),  # YCbCr
                _entry(273, _LONG, strip),
                _entry(277, _SHORT, 3),
                _entry(278, _LONG, height),
                _entry(279, _LONG, len(jpeg)),
                _entry(282, _RATIONAL, (40000, 1)),
                _entry(283, _RATIONAL, (40000, 1)),
                _entry(296, _SHORT, 3),  # centimetre
                *tags,
            ]
        )
        # Values over 4 bytes go before the directory; the directory points at them.
        fields: list[bytes] = []
        for _tag, _kind, _count, raw in entries:
            if len(raw) <= 4:
                fields.append(raw.ljust(4, b"\0"))
            else:
                fields.append(struct.pack("<I", fh.tell()))
                fh.write(raw)
                if fh.tell() % 2:
                    fh.write(b"\0")
        ifd = fh.tell()
        fh.write(struct.pack("<H", len(entries)))
        for (tag, kind, count, _raw), field in zip(entries, fields, strict=True):
            fh.write(struct.pack("<HHI", tag, kind, count) + field)
        next_ptr = fh.tell()
        fh.write(b"\0" * 8 + b"\0" * 4 * len(entries))
        end = fh.tell()
        fh.seek(self._next_ptr)
        fh.write(struct.pack("<Q", ifd))
        fh.seek(end)
        self._next_ptr = next_ptr


def write_ndpi(
    path: Path,
    *,
    barcode: str | None = None,
    width: int = 2048,
    height: int = 1536,
    levels: int = 3,
    seed: int = 0,
) -> Path:
    """Write ``path`` as an NDPI with ``levels`` pyramid levels (each half the one above) and a macro."""
    path = Path(path)
    if width < 16 or height < 16 or width > 65500 or height > 65500:
        raise ValueError(f"NDPI levels are single JPEGs: size must be 16..65500, got {width}x{height}")
    art = Artwork(width, height, seed=seed)
    lens = 20.0
    with open(path, "wb") as fh:
        out = _NdpiFile(fh)
        for k in range(levels):
            size = (max(1, width >> k), max(1, height >> k))
            tags = [
                _entry(NDPI_FORMAT_FLAG, _LONG, 1),
                _entry(NDPI_SOURCELENS, _FLOAT, lens / (1 << k)),
                _entry(NDPI_FOCAL_PLANE, _SLONG, 0),
            ]
            if barcode is not None:
                tags.append(_entry(NDPI_BARCODE, _ASCII, barcode))
            out.add(_jpeg(art.region(k, size, 0, 0, size[0], size[1])), size[0], size[1], tags)
        macro = macro_image(art, label_image(barcode, seed))
        macro_tags = [_entry(NDPI_FORMAT_FLAG, _LONG, 1), _entry(NDPI_SOURCELENS, _FLOAT, -1.0)]
        out.add(_jpeg(macro), macro.shape[1], macro.shape[0], macro_tags)
    return path
