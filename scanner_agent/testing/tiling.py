"""Pyramid levels and tiles of the synthetic slides, and the tifffile writes every TIFF maker shares.

Used by ``tiff_slides`` (SVS, generic TIFF), ``vendor_tiff`` (GT450, BIF, SCN, Philips) and, for
the level sizes and tiles only, ``dicom``. Tiles are deflate-compressed, not JPEG: tifffile can
only write JPEG tiles with the ``imagecodecs`` package, which is not a dependency; OpenSlide
reads deflate tiles fine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tifffile

from scanner_agent.testing.artwork import Artwork, padded_tile

#: A TIFF tag for tifffile's ``extratags``: (code, type, count, value, write once).
ExtraTag = tuple[int, int, int, object, bool]


def check_size(width: int, height: int, tile: int) -> None:
    """Refuse sizes TIFF cannot hold: a non-positive slide, or a tile not a multiple of 16."""
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile size must be a positive multiple of 16 (TIFF rule), got {tile}")


def level_sizes(width: int, height: int, tile: int, factor: int = 4) -> list[tuple[int, int]]:
    """Level 0, then ``factor``-times reductions while a level still spans more than one tile."""
    sizes = [(width, height)]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append((max(1, w // factor), max(1, h // factor)))
    return sizes


def tiles(art: Artwork, size: tuple[int, int], tile: int, level: int) -> Iterator[np.ndarray]:
    """The tiles of ``art``'s level of ``size``, row by row, as tifffile writes them."""
    for y0 in range(0, size[1], tile):
        for x0 in range(0, size[0], tile):
            yield padded_tile(art, level, size, x0, y0, tile)


def write_tiled(
    tw: tifffile.TiffWriter,
    level_tiles: Iterator[np.ndarray],
    size: tuple[int, int],
    tile: int,
    *,
    description: str | None = None,
    subfiletype: int | None = 0,
    extratags: list[ExtraTag] | None = None,
    software: str | None = None,
    resolution: tuple[int, int] | None = None,
) -> None:
    """One tiled, deflate-compressed RGB image of ``size`` (w, h) from its full-size tiles.

    ``subfiletype=None`` writes no NewSubfileType tag; ``resolution`` is in pixels per centimetre
    (None: no resolution written).
    """
    _write(
        tw,
        level_tiles,
        description=description,
        subfiletype=subfiletype,
        extratags=extratags,
        software=software,
        shape=(size[1], size[0], 3),
        dtype=np.uint8,
        tile=(tile, tile),
        resolution=resolution,
        resolutionunit="CENTIMETER" if resolution is not None else None,
    )


def write_strip(
    tw: tifffile.TiffWriter,
    pixels: np.ndarray,
    description: str | None,
    *,
    subfiletype: int = 0,
    extratags: list[ExtraTag] | None = None,
    software: str | None = None,
) -> None:
    """One stripped, deflate-compressed image (thumbnail, label or macro)."""
    _write(
        tw,
        pixels,
        description=description,
        subfiletype=subfiletype,
        extratags=extratags,
        software=software,
        rowsperstrip=64,
    )


def _write(
    tw: tifffile.TiffWriter,
    data: np.ndarray | Iterator[np.ndarray],
    *,
    description: str | None,
    subfiletype: int | None,
    extratags: list[ExtraTag] | None,
    software: str | None,
    **layout: Any,
) -> None:
    """The one tifffile write behind both: RGB, deflate level 1, no tifffile metadata; ``layout``
    is the tiled or stripped geometry."""
    tw.write(
        data,
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
        description=description,
        metadata=None,
        subfiletype=subfiletype,
        extratags=extratags or [],
        software=software,
        **layout,
    )
