"""Tiled pyramidal TIFF slides that OpenSlide opens: Aperio-style SVS and generic TIFF.

``write_aperio_layout`` is the SVS layout itself, shared with the Aperio GT450 maker in
``vendor_tiff`` (which gives its own description head and fields). Levels, tiles and the
deflate-compressed writes come from ``tiling``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

from scanner_agent.testing.artwork import Artwork, fit, label_image, macro_image
from scanner_agent.testing.tiling import check_size, level_sizes, tiles, write_strip, write_tiled

_APERIO_HEAD = "Aperio Image Library v12.0.15 (synthetic)"
#: 0.5 um per pixel (the SVS says ``MPP = 0.5000``), in pixels per centimetre.
_RESOLUTION = (20000, 20000)


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
    """The SVS of ``write_svs`` and ``write_labelled_svs``: this synthetic scanner's head and fields."""
    fields = [
        "AppMag = 20",
        "StripeWidth = 2040",
        "ScanScope ID = SYNTH01",
        "MPP = 0.5000",
        f"OriginalWidth = {width}",
        f"OriginalHeight = {height}",
    ]
    return write_aperio_layout(
        path,
        software=_APERIO_HEAD,
        fields=fields,
        barcode=barcode,
        width=width,
        height=height,
        tile=tile,
        seed=seed,
        blurred=blurred,
        blank=blank,
        label=label,
        label_in=label_in,
        resolution=_RESOLUTION,
    )


def write_aperio_layout(
    path: Path,
    *,
    software: str,
    fields: list[str],
    barcode: str | None,
    width: int,
    height: int,
    tile: int,
    seed: int,
    blurred: bool = False,
    blank: bool = False,
    label: np.ndarray | None = None,
    label_in: Literal["label", "macro"] = "label",
    comma_origin: bool = False,
    level0_quality: int | None = None,
    thumbnail_side: int = 1024,
    resolution: tuple[int, int] | None = None,
) -> Path:
    """An SVS in Aperio's layout (see ``write_svs``) as a given scanner model writes it; returns ``path``.

    ``software`` is the first line of every description, ``fields`` its ``|key = value`` tail
    (``Barcode = ...`` is added after them when ``barcode`` is given). Model differences:
    ``comma_origin`` writes the level-0 origin ``[0,0,WxH]`` (GT450) instead of ``[0,0 WxH]``,
    ``level0_quality`` adds ``Q=...`` to level 0's description, ``thumbnail_side`` is the
    thumbnail's long side, ``resolution`` (pixels per centimetre) is written on the tiled levels
    if given. ``label`` (default: ``artwork.label_image``) is stored as the ``label`` image
    (``label_in="macro"``: only in the macro photo).
    """
    path = Path(path)
    check_size(width, height, tile)
    if barcode is not None and any(c in barcode for c in "|\r\n"):
        raise ValueError(f"barcode {barcode!r} cannot be stored in an Aperio description ('|' or newline)")
    art = Artwork(width, height, seed=seed, blurred=blurred, blank=blank)
    if barcode is not None:
        fields = [*fields, f"Barcode = {barcode}"]
    tail = "|" + "|".join(fields)
    origin = f"[0,0,{width}x{height}]" if comma_origin else f"[0,0 {width}x{height}]"
    head = f"{software}\r\n{width}x{height} {origin} ({tile}x{tile})"
    quality = f" Q={level0_quality}" if level0_quality is not None else ""
    levels = level_sizes(width, height, tile)

    with tifffile.TiffWriter(path, bigtiff=width * height > 2**30) as tw:
        write_tiled(
            tw,
            tiles(art, levels[0], tile, 0),
            levels[0],
            tile,
            description=f"{head} Deflate/RGB{quality}{tail}",
            resolution=resolution,
        )
        thumb = art.overview(fit(width, height, thumbnail_side))
        write_strip(tw, thumb, f"{head} -> {thumb.shape[1]}x{thumb.shape[0]} - {tail}")
        for i, size in enumerate(levels[1:], start=1):
            write_tiled(
                tw,
                tiles(art, size, tile, i),
                size,
                tile,
                description=f"{head} -> {size[0]}x{size[1]} Deflate/RGB{tail}",
                resolution=resolution,
            )
        if label is None:
            label = label_image(barcode, seed)
        if label_in == "label":
            write_strip(tw, label, f"{software}\r\nlabel {label.shape[1]}x{label.shape[0]}", subfiletype=1)
        macro = macro_image(art, label)
        write_strip(tw, macro, f"{software}\r\nmacro {macro.shape[1]}x{macro.shape[0]}", subfiletype=9)
    return path


def write_generic_tiff(
    path: Path, *, width: int = 2048, height: int = 1536, tile: int = 256, seed: int = 0
) -> Path:
    """Write a plain tiled pyramidal TIFF (OpenSlide vendor ``generic-tiff``, no barcode)."""
    path = Path(path)
    check_size(width, height, tile)
    art = Artwork(width, height, seed=seed)
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**30) as tw:
        for i, size in enumerate(level_sizes(width, height, tile)):
            write_tiled(
                tw,
                tiles(art, size, tile, i),
                size,
                tile,
                subfiletype=1 if i else 0,
                resolution=_RESOLUTION,
            )
    return path
