"""Vendor TIFF slides OpenSlide opens with its own drivers: Aperio GT450 SVS, Ventana/Roche BIF, Leica SCN,
Philips TIFF.

Each carries exactly what OpenSlide's driver for it looks for (read from OpenSlide's
``openslide-vendor-*.c``), and the barcode where that vendor writes it:

- GT450 SVS: an ``Aperio Leica Biosystems GT450`` description, ``[0,0,WxH]`` with a comma, the
  fields the GT450 adds (``Rack``, ``Slot``, ``SessionMode``...) and ``Barcode = ...``.
- BIF: a BigTIFF whose first directory holds the ``iScan`` XMP packet (barcode in ``Barcode1D``),
  levels described ``level=N mag=M quality=Q``, level 0 with its ``EncodeInfo`` XMP (one scanned
  area, tile joints with no overlap), and the ``Label_Image``.
- SCN: the ``<scn>`` XML (2010/10/01 namespace) in the first ImageDescription naming each image's
  directories, a macro image covering the whole collection and a brightfield main image inside
  it; the barcode base64-encoded in ``<barcode>``.
- Philips TIFF: Software ``Philips``, a ``DPUfsImport`` XML with one WSI image and the pixel
  spacing of each level, levels marked reduced-resolution, ``Label``/``Macro`` strips; the
  barcode base64-encoded in ``PIM_DP_UFS_BARCODE``.

The GT450 SVS is ``tiff_slides``' Aperio layout with the GT450's head and fields; levels and
tiles are written by ``tiling`` (deflate-compressed: tifffile needs ``imagecodecs`` for JPEG;
OpenSlide reads either).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import tifffile

from scanner_agent.testing.artwork import Artwork, fit, label_image, macro_image
from scanner_agent.testing.tiff_slides import write_aperio_layout
from scanner_agent.testing.tiling import ExtraTag, check_size, level_sizes, tiles, write_strip, write_tiled

_TAG_XMP = 700


# --- Aperio GT450 ------------------------------------------------------------------------------


def write_gt450_svs(
    path: Path,
    *,
    barcode: str | None = None,
    width: int = 2048,
    height: int = 1536,
    tile: int = 256,
    seed: int = 0,
) -> Path:
    """An SVS as the Aperio GT450 writes it (its own description head and fields)."""
    fields = [
        "AppMag = 40",
        "Date = 06/20/22",
        "Exposure Scale = 0.000001",
        "Exposure Time = 8",
        "Filtered = 3",
        "Focus Offset = 0.089996",
        "Gamma = 2.2",
        "Left = 6.0465",
        "MPP = 0.2630",
        "Rack = 1",
        "ScanScope ID = SS45002",
        "SessionMode = NR",
        "Slot = 1",
        "Time = 09:15:39",
        "Time Zone = GMT+0100",
        "Top = 23.4493",
    ]
    return write_aperio_layout(
        path,
        software="Aperio Leica Biosystems GT450 v1.0.1",
        fields=fields,
        barcode=barcode,
        width=width,
        height=height,
        tile=tile,
        seed=seed,
        comma_origin=True,
        level0_quality=91,
        thumbnail_side=768,
    )


# --- Ventana / Roche BIF -------------------------------------------------------------------------


def _bif_tile_number(col: int, row: int, across: int, down: int) -> int:
    """The 1-based number a BIF gives tile (col, row), row 0 at the top: numbered from the bottom
    row up, serpentine (every other row right to left), as OpenSlide's ventana driver reads it."""
    raw_row = down - 1 - row
    raw_col = col if raw_row % 2 == 0 else across - 1 - col
    return raw_row * across + raw_col + 1


def _encode_info(across: int, down: int, tile: int) -> str:
    joints = []
    for row in range(down):
        for col in range(across):
            t = _bif_tile_number(col, row, across, down)
            if col + 1 < across:
                right = _bif_tile_number(col + 1, row, across, down)
                joints.append(
                    f'<TileJointInfo FlagJoined="1" Direction="RIGHT" Tile1="{t}" Tile2="{right}" '
                    'OverlapX="0" OverlapY="0" Confidence="100"/>'
                )
            if row > 0:
                up = _bif_tile_number(col, row - 1, across, down)
                joints.append(
                    f'<TileJointInfo FlagJoined="1" Direction="UP" Tile1="{t}" Tile2="{up}" '
                    'OverlapX="0" OverlapY="0" Confidence="100"/>'
                )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<EncodeInfo Ver="2.0">'
        '<SlideInfo><AoiInfo XIMAGESIZE="{t}" YIMAGESIZE="{t}" NumRows="{d}" NumCols="{a}" '
        'Pos-X="0" Pos-Y="0"/>'
        "</SlideInfo>"
        '<AoiOrigin><AOI0 OriginX="0" OriginY="0"/></AoiOrigin>'
        '<SlideStitchInfo><ImageInfo AOIScanned="1" AOIIndex="0" Width="{t}" Height="{t}" '
        'NumRows="{d}" NumCols="{a}" Pos-X="0" Pos-Y="0">{j}</ImageInfo></SlideStitchInfo>'
        "</EncodeInfo>"
    ).format(t=tile, d=down, a=across, j="".join(joints))


def write_bif(
    path: Path,
    *,
    barcode: str | None = None,
    width: int = 2048,
    height: int = 1536,
    tile: int = 256,
    seed: int = 0,
) -> Path:
    """A Ventana/Roche BIF (BigTIFF, ``iScan`` XMP) that OpenSlide opens as vendor ``ventana``.

    Level 0 is rounded down to whole tiles (a BIF level is a grid of whole scanned tiles).
    """
    path = Path(path)
    check_size(width, height, tile)
    across, down = max(2, width // tile), max(2, height // tile)
    width, height = across * tile, down * tile
    art = Artwork(width, height, seed=seed)
    attrs = {
        "Magnification": "40",
        "ScanRes": "0.25",
        "UnitNumber": "BI10N0001",
        "ScannerModel": "VENTANA DP 200",
        "BuildVersion": "1.1.0.15854",
        "SlideAnnotation": "synthetic",
    }
    if barcode is not None:
        attrs["Barcode1D"] = barcode
    iscan = (
        '<?xml version="1.0" encoding="utf-8"?>\n<Metadata><iScan '
        + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
        + "/></Metadata>"
    ).encode()
    label = label_image(barcode, seed)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        # The label photo of the slide is the first directory and carries the iScan packet.
        write_strip(
            tw, macro_image(art, label), "Label_Image", extratags=[(_TAG_XMP, 1, len(iscan), iscan, True)]
        )
        write_strip(tw, art.overview(fit(width, height, 512)), "Thumbnail")
        mag = 40.0
        for i, size in enumerate(level_sizes(width, height, tile)):
            tags: list[ExtraTag] = []
            if i == 0:
                encode = _encode_info(across, down, tile).encode()
                tags = [(_TAG_XMP, 1, len(encode), encode, True)]
            write_tiled(
                tw,
                tiles(art, size, tile, i),
                size,
                tile,
                description=f"level={i} mag={mag:g} quality=95",
                extratags=tags,
            )
            mag /= 4
    return path


# --- Leica SCN -----------------------------------------------------------------------------------


def write_scn(
    path: Path,
    *,
    barcode: str | None = None,
    width: int = 2048,
    height: int = 1536,
    tile: int = 256,
    seed: int = 0,
) -> Path:
    """A Leica SCN that OpenSlide opens as vendor ``leica`` (``leica.barcode`` when given)."""
    path = Path(path)
    check_size(width, height, tile)
    art = Artwork(width, height, seed=seed)
    nm_per_px = 500  # 0.5 um per pixel at level 0
    main_nm = (width * nm_per_px, height * nm_per_px)
    margin = 200_000  # the main image sits 0.2 mm inside the macro's field
    coll_nm = (main_nm[0] + 2 * margin, main_nm[1] + 2 * margin)
    label = label_image(barcode, seed)
    macro = macro_image(art, label)
    mains = level_sizes(width, height, tile)
    # Directories: 0 the macro (tiled), then the main image's levels.
    dims = "".join(
        f'<dimension sizeX="{w}" sizeY="{h}" sizeC="3" c="0" ifd="{1 + i}" r="{i}"/>'
        for i, (w, h) in enumerate(mains)
    )
    barcode_xml = (
        f"<barcode>{base64.b64encode(barcode.encode()).decode()}</barcode>" if barcode is not None else ""
    )

    def settings(objective: str) -> str:
        return (
            f"<scanSettings><objectiveSettings><objective>{objective}</objective></objectiveSettings>"
            "<illuminationSettings><numericalAperture>0.4</numericalAperture>"
            "<illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings>"
        )

    xml = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection name="{escape(path.stem)}" uuid="synthetic-{seed}" '
        f'sizeX="{coll_nm[0]}" sizeY="{coll_nm[1]}">'
        f"{barcode_xml}"
        '<image name="macro" uuid="synthetic-macro">'
        "<creationDate>2026-01-01T09:00:00.00Z</creationDate>"
        '<device model="Leica SCN400;Leica SCN" version="1.5.1.10804 2012/05/10 13:29:07;1.5.1.10864"/>'
        f'<pixels sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}">'
        f'<dimension sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}" sizeC="3" c="0" ifd="0" r="0"/>'
        "</pixels>"
        f'<view sizeX="{coll_nm[0]}" sizeY="{coll_nm[1]}" offsetX="0" offsetY="0" spacingZ="0"/>'
        f"{settings('1.25')}</image>"
        '<image name="main" uuid="synthetic-main">'
        "<creationDate>2026-01-01T09:00:00.00Z</creationDate>"
        '<device model="Leica SCN400;Leica SCN" version="1.5.1.10804 2012/05/10 13:29:07;1.5.1.10864"/>'
        f'<pixels sizeX="{width}" sizeY="{height}">{dims}</pixels>'
        f'<view sizeX="{main_nm[0]}" sizeY="{main_nm[1]}" '
        f'offsetX="{margin}" offsetY="{margin}" spacingZ="0"/>'
        f"{settings('20')}</image>"
        "</collection></scn>"
    )
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**30) as tw:
        write_tiled(
            tw,
            _padded_tiles_of(macro, tile),
            (macro.shape[1], macro.shape[0]),
            tile,
            description=xml,
            subfiletype=None,
        )
        for i, size in enumerate(mains):
            write_tiled(tw, tiles(art, size, tile, i), size, tile, subfiletype=1 if i else 0)
    return path


def _padded_tiles_of(pixels: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The tiles of an in-memory image, the edge ones padded to full size."""
    h, w = pixels.shape[:2]
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            out = np.full((tile, tile, 3), 255, dtype=np.uint8)
            part = pixels[y0 : y0 + tile, x0 : x0 + tile]
            out[: part.shape[0], : part.shape[1]] = part
            yield out


# --- Philips TIFF --------------------------------------------------------------------------------


def write_philips_tiff(
    path: Path,
    *,
    barcode: str | None = None,
    width: int = 2048,
    height: int = 1536,
    tile: int = 256,
    seed: int = 0,
) -> Path:
    """A Philips TIFF (IntelliSite export) that OpenSlide opens as vendor ``philips``."""
    path = Path(path)
    check_size(width, height, tile)
    art = Artwork(width, height, seed=seed)
    levels = level_sizes(width, height, tile, factor=2)
    mm_per_px = 0.00025
    reps = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_NUMBER" Group="0x101D" Element="0x2002" '
        f'PMSVR="IUInt16">{i}'
        "</Attribute>"
        f'<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">'
        f"&quot;{mm_per_px * 2**i:.8g}&quot; &quot;{mm_per_px * 2**i:.8g}&quot;</Attribute>"
        "</DataObject>"
        for i in range(len(levels))
    )
    barcode_attr = (
        '<Attribute Name="PIM_DP_UFS_BARCODE" Group="0x301D" Element="0x1002" PMSVR="IString">'
        f"{base64.b64encode(barcode.encode()).decode()}</Attribute>"
        if barcode is not None
        else ""
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="DICOM_MANUFACTURER" Group="0x0008" Element="0x0070" PMSVR="IString">'
        "PHILIPS</Attribute>"
        f"{barcode_attr}"
        '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" '
        'PMSVR="IDataObjectArray"><Array>'
        '<DataObject ObjectType="DPScannedImage">'
        '<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x301D" Element="0x1004" PMSVR="IString">WSI</Attribute>'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" Element="0x8B01" '
        f'PMSVR="IDataObjectArray"><Array>{reps}</Array></Attribute>'
        "</DataObject></Array></Attribute></DataObject>"
    )
    software = "Philips DP v1.0"
    label = label_image(barcode, seed)
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**30) as tw:
        for i, size in enumerate(levels):
            write_tiled(
                tw,
                tiles(art, size, tile, i),
                size,
                tile,
                description=xml if i == 0 else None,
                subfiletype=1 if i else 0,
                software=software,
            )
        write_strip(tw, macro_image(art, label), "Macro", software=software)
        write_strip(tw, label, "Label", software=software)
    return path
