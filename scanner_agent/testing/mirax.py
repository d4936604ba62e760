"""MIRAX slides (``.mrxs`` plus a data folder of JPEG camera images) that OpenSlide opens."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from scanner_agent.testing.artwork import Artwork, label_image, padded_tile


def write_mrxs(
    folder: Path,
    stem: str,
    *,
    barcode: str | None = None,
    finished: bool = True,
    images_x: int = 8,
    images_y: int = 6,
    image_size: int = 256,
    seed: int = 0,
    slide_id: str | None = None,
) -> Path:
    """Write a MIRAX slide ``folder/stem.mrxs`` + ``folder/stem/`` that OpenSlide opens; returns the .mrxs.

    The data folder holds ``Slidedat.ini`` (``[GENERAL] SLIDE_CREATION_FINISHED = True|False``,
    the scanner's own "done" signal), ``Index.dat`` and ``Data0000.dat`` (JPEG camera images
    in a power-of-two pyramid, no overlap, plus a label image). Level 0 is
    ``images_x * image_size`` by ``images_y * image_size``. ``barcode`` goes into
    ``SLIDE_NAME`` and onto the label picture: real MIRAX slides carry no barcode text
    property, so a scanner names the files by barcode instead.
    """
    folder = Path(folder)
    data_dir = folder / stem
    data_dir.mkdir(parents=True, exist_ok=True)
    slide_id = slide_id or f"{seed:08d}-synthetic-{images_x}x{images_y}"
    art = Artwork(images_x * image_size, images_y * image_size, seed=seed)
    level_count = _mirax_level_count(images_x, images_y)

    data = bytearray()
    levels: list[list[tuple[int, int, int]]] = []  # per level: (image_index, offset, length)
    for k in range(level_count):
        step = 1 << k
        size = (images_x * image_size // step, images_y * image_size // step)
        records = []
        for gy in range(0, images_y, step):
            for gx in range(0, images_x, step):
                blob = _jpeg(
                    padded_tile(art, k, size, gx * image_size // step, gy * image_size // step, image_size)
                )
                records.append((gy * images_x + gx, len(data), len(blob)))
                data += blob
        levels.append(records)
    label_blob = _jpeg(label_image(barcode, seed))
    label_record = (len(data), len(label_blob))
    data += label_blob

    (data_dir / "Data0000.dat").write_bytes(bytes(data))
    (data_dir / "Index.dat").write_bytes(_mirax_index(slide_id, levels, label_record))
    ini = _mirax_slidedat(slide_id, barcode or stem, finished, images_x, images_y, image_size, level_count)
    (data_dir / "Slidedat.ini").write_text(ini, encoding="utf-8")
    mrxs = folder / f"{stem}.mrxs"
    # The .mrxs itself is only a marker to OpenSlide; scanners write a short binary stub.
    mrxs.write_bytes(b"MIRAX synthetic slide\n")
    return mrxs


def _mirax_level_count(images_x: int, images_y: int) -> int:
    """How many power-of-two levels the grid of camera images gives (at most 10)."""
    count = 1
    while (images_x >> count) >= 1 and (images_y >> count) >= 1 and count < 10:
        count += 1
    return count


def _jpeg(pixels: np.ndarray) -> bytes:
    """``pixels`` as JPEG bytes (quality 85), as MIRAX scanners store camera images."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _mirax_index(slide_id: str, levels: list[list[tuple[int, int, int]]], label: tuple[int, int]) -> bytes:
    """Index.dat: version, slide id, then pointer chains to one data page per level.

    Layout read by OpenSlide: at ``hier_root`` a pointer to a table of one pointer per level;
    each points at ``[0, page]``, and a page is ``[count, next=0, (index, offset, length,
    file)...]``. Non-hierarchical records (the label) are ``[0, page]`` -> ``[1, 0, 0, 0,
    offset, length, file]``.
    """
    head = b"01.02" + slide_id.encode("ascii")
    out = bytearray(head)
    out += b"\0" * 8  # hier_root and nonhier_root pointers, filled below

    def i32(*values: int) -> bytes:
        """Little-endian 32-bit integers."""
        return struct.pack(f"<{len(values)}i", *values)

    hier_table = len(out)
    out += b"\0" * (4 * len(levels))
    for k, records in enumerate(levels):
        header = len(out)
        out += i32(0, header + 8)
        out += i32(len(records), 0)
        for index, offset, length in records:
            out += i32(index, offset, length, 0)
        out[hier_table + 4 * k : hier_table + 4 * k + 4] = i32(header)
    nonhier_table = len(out)
    out += i32(nonhier_table + 4)
    out += i32(0, nonhier_table + 12)
    out += i32(1, 0, 0, 0, label[0], label[1], 0)
    out[len(head) : len(head) + 8] = i32(hier_table, nonhier_table)
    return bytes(out)


def _mirax_slidedat(
    slide_id: str, name: str, finished: bool, images_x: int, images_y: int, image_size: int, level_count: int
) -> str:
    """Slidedat.ini: the slide's description, levels and data file, as OpenSlide reads it."""
    lines = [
        "[GENERAL]",
        "SLIDE_VERSION = 01.03",
        f"SLIDE_ID = {slide_id}",
        f"SLIDE_NAME = {name}",
        "SLIDE_TYPE = SYNTHETIC",
        f"SLIDE_CREATION_FINISHED = {'True' if finished else 'False'}",
        f"IMAGENUMBER_X = {images_x}",
        f"IMAGENUMBER_Y = {images_y}",
        "OBJECTIVE_MAGNIFICATION = 20",
        "CameraImageDivisionsPerSide = 1",
        "",
        "[HIERARCHICAL]",
        "HIER_COUNT = 1",
        "NONHIER_COUNT = 1",
        "INDEXFILE = Index.dat",
        "HIER_0_NAME = Slide zoom level",
        f"HIER_0_COUNT = {level_count}",
    ]
    lines += [f"HIER_0_VAL_{k}_SECTION = LAYER_0_LEVEL_{k}_SECTION" for k in range(level_count)]
    lines += [
        "NONHIER_0_NAME = Scan data layer",
        "NONHIER_0_COUNT = 1",
        "NONHIER_0_VAL_0 = ScanDataLayer_SlideBarcode",
        "NONHIER_0_VAL_0_SECTION = NONHIERLAYER_0_VAL_0_SECTION",
        "",
        "[DATAFILE]",
        "FILE_COUNT = 1",
        "FILE_0 = Data0000.dat",
        "",
        "[NONHIERLAYER_0_VAL_0_SECTION]",
        "BARCODE_IMAGE_TYPE = JPEG",
        "",
    ]
    for k in range(level_count):
        lines += [
            f"[LAYER_0_LEVEL_{k}_SECTION]",
            f"IMAGE_CONCAT_FACTOR = {0 if k == 0 else 1}",
            "OVERLAP_X = 0",
            "OVERLAP_Y = 0",
            f"MICROMETER_PER_PIXEL_X = {0.25 * (1 << k)}",
            f"MICROMETER_PER_PIXEL_Y = {0.25 * (1 << k)}",
            "IMAGE_FILL_COLOR_BGR = 16777215",
            f"DIGITIZER_WIDTH = {image_size}",
            f"DIGITIZER_HEIGHT = {image_size}",
            "IMAGE_FORMAT = JPEG",
            "",
        ]
    return "\n".join(lines)
