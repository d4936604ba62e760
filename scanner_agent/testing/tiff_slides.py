"""Tiled pyramidal TIFF slides that OpenSlide opens: Aperio-style SVS and generic TIFF.

Tiles are deflate-compressed, not JPEG: tifffile can only write JPEG tiles with the
``imagecodecs`` package, which is not a dependency; OpenSlide reads deflate tiles fine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

from scanner_agent.testing.artwork import Artwork, fit, label_image, macro_image, padded_tile

#: Each pyramid level is this much smaller than the one above it, as on Aperio scanners.
_LEVEL_FACTOR = 4
_APERIO_HEAD = "Aperio Image Library v12.0.15 (synthetic)"


def write_svs(
    path: Path,
    *,
    barcode: str | None = None,
    width: int = 4096,
    height: int = 3072,
    tile: int = 256,
    seed: int = 0,
    blurred: bool = False,
    blank: bool = False,
) -> Path:
    """Write an Aperio-style SVS that OpenSlide opens as vendor ``aperio``; returns ``path``.

    Layout as a real SVS: level 0 (tiled), the stripped thumbnail as the second directory, the
    lower pyramid levels (tiled, each 4x smaller), then the label and macro images. The
    barcode, if given, is stored as ``Barcode = ...`` in the description (``aperio.Barcode``).
    Size on disk is roughly 0.5 bytes per level-0 pixel (``blank``: far less).
    """
    return _write_aperio(
        path, barcode=barcode, width=width, height=height, tile=tile, seed=seed, blurred=blurred, blank=blank
    )


def write_labelled_svs(
    path: Path,
    label: np.ndarray,
    *,
    label_in: Literal["label", "macro"] = "label",
    barcode: str | None = None,
    width: int = 1024,
    height: int = 768,
    seed: int = 0,
) -> Path:
    """An SVS as ``write_svs`` whose label picture is ``label`` (``artwork.code_label`` prints
    real codes on it); ``label_in="macro"`` leaves out the ``label`` image, so the label is only
    in the macro photo, as on Ventana, Hamamatsu and Leica scanners. ``barcode``: also in the
    metadata (default: only on the label)."""
    return _write_aperio(
        path, barcode=barcode, width=width, height=height, seed=seed, label=label, label_in=label_in
    )


def _write_aperio(
    path: Path,
    *,
    barcode: str | None,
    width: int,
    height: int,
    seed: int,
    tile: int = 256,
    blurred: bool = False,
    blank: bool = False,
    label: np.ndarray | None = None,
    label_in: Literal["label", "macro"] = "label",
) -> Path:
    path = Path(path)
    _check_size(width, height, tile)
    if barcode is not None and any(c in barcode for c in "|\r\n"):
        raise ValueError(f"barcode {barcode!r} cannot be stored in an Aperio description ('|' or newline)")
    art = Artwork(width, height, seed=seed, blurred=blurred, blank=blank)
    fields = [
        "AppMag = 20",
        "StripeWidth = 2040",
        "ScanScope ID = SYNTH01",
        "MPP = 0.5000",
        f"OriginalWidth = {width}",
        f"OriginalHeight = {height}",
    ]
    if barcode is not None:
        fields.append(f"Barcode = {barcode}")
    tail = "|" + "|".join(fields)
    head = f"{_APERIO_HEAD}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    levels = _level_sizes(width, height, tile)

    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31 // 2) as tw:
        _write_tiled(tw, art, levels[0], tile, f"{head} Deflate/RGB{tail}", level=0)
        thumb = art.overview(fit(width, height, 1024))
        _write_stripped(tw, thumb, f"{head} -> {thumb.shape[1]}x{thumb.shape[0]} - {tail}")
        for i, size in enumerate(levels[1:], start=1):
            _write_tiled(tw, art, size, tile, f"{head} -> {size[0]}x{size[1]} Deflate/RGB{tail}", level=i)
        if label is None:
            label = label_image(barcode, seed)
        if label_in == "label":
            _write_stripped(
                tw, label, f"{_APERIO_HEAD}\r\nlabel {label.shape[1]}x{label.shape[0]}", subfiletype=1
            )
        macro = macro_image(art, label)
        _write_stripped(
            tw, macro, f"{_APERIO_HEAD}\r\nmacro {macro.shape[1]}x{macro.shape[0]}", subfiletype=9
        )
    return path


def write_generic_tiff(
    path: Path, *, width: int = 2048, height: int = 1536, tile: int = 256, seed: int = 0
) -> Path:
    """Write a plain tiled pyramidal TIFF (OpenSlide vendor ``generic-tiff``, no barcode)."""
    path = Path(path)
    _check_size(width, height, tile)
    art = Artwork(width, height, seed=seed)
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31 // 2) as tw:
        for i, size in enumerate(_level_sizes(width, height, tile)):
            _write_tiled(tw, art, size, tile, None, level=i, subfiletype=1 if i else 0)
    return path


def _check_size(width: int, height: int, tile: int) -> None:
    """Refuse sizes TIFF cannot hold: a non-positive slide, or a tile not a multiple of 16."""
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile size must be a positive multiple of 16 (TIFF rule), got {tile}")


def _level_sizes(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """Level 0 then 4x reductions while the level still spans more than one tile."""
    sizes = [(width, height)]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append((max(1, w // _LEVEL_FACTOR), max(1, h // _LEVEL_FACTOR)))
    return sizes


def _tiles(art: Artwork, size: tuple[int, int], tile: int, level: int) -> Iterator[np.ndarray]:
    """The level's tiles, row by row, as tifffile writes them."""
    for y0 in range(0, size[1], tile):
        for x0 in range(0, size[0], tile):
            yield padded_tile(art, level, size, x0, y0, tile)


def _write_tiled(
    tw: tifffile.TiffWriter,
    art: Artwork,
    size: tuple[int, int],
    tile: int,
    description: str | None,
    *,
    level: int,
    subfiletype: int = 0,
) -> None:
    """One tiled, deflate-compressed pyramid level."""
    tw.write(
        _tiles(art, size, tile, level),
        shape=(size[1], size[0], 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
        description=description,
        metadata=None,
        subfiletype=subfiletype,
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )


def _write_stripped(
    tw: tifffile.TiffWriter, pixels: np.ndarray, description: str, subfiletype: int = 0
) -> None:
    """One stripped image (thumbnail, label or macro)."""
    tw.write(
        pixels,
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
        description=description,
        metadata=None,
        subfiletype=subfiletype,
        rowsperstrip=64,
    )
