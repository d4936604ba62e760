"""Broken slide files that a scanner or a network share can really produce, for the pipeline to refuse."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from scanner_agent.testing.tiff_slides import write_svs


def write_corrupt(path: Path, kind: str) -> Path:
    """Write a broken slide file of the given ``kind``; returns ``path``.

    Kinds: ``zero`` (0 bytes), ``truncated`` (a valid SVS cut in half, as an interrupted copy
    leaves it), ``garbage`` (random bytes), ``bad_tags`` (a TIFF whose tile tags contradict each
    other, over noise posing as deflate data: OpenSlide opens it, decoding fails), ``bomb`` (a
    tiny TIFF claiming a 200000 x 200000 image in one strip), ``bomb_tiled`` (a tiny tiled TIFF
    that OpenSlide opens, claiming 200000 x 200000 pixels with no pyramid, every tile pointing at
    the same few bytes).
    """
    path = Path(path)
    makers = {
        "zero": _corrupt_zero,
        "truncated": _corrupt_truncated,
        "garbage": _corrupt_garbage,
        "bad_tags": _corrupt_bad_tags,
        "bomb": _corrupt_bomb,
        "bomb_tiled": _corrupt_bomb_tiled,
    }
    if kind not in makers:
        raise ValueError(f"unknown corrupt kind {kind!r}; choose one of {sorted(makers)}")
    makers[kind](path)
    return path


CORRUPT_KINDS: tuple[str, ...] = ("zero", "truncated", "garbage", "bad_tags", "bomb", "bomb_tiled")


def _corrupt_zero(path: Path) -> None:
    """An empty file, as a scanner that died on open leaves it."""
    path.write_bytes(b"")


def _corrupt_truncated(path: Path) -> None:
    """A valid SVS cut in half, as an interrupted copy leaves it."""
    scratch = path.with_name(path.name + ".whole.tmp")
    try:
        write_svs(scratch, width=1024, height=768, barcode="000000")
        data = scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)
    path.write_bytes(data[: len(data) // 2])


def _corrupt_garbage(path: Path) -> None:
    """64 KiB of random bytes."""
    path.write_bytes(np.random.default_rng(1234).bytes(64 * 1024))


def _corrupt_bad_tags(path: Path) -> None:
    """A tiled RGB TIFF whose tags contradict each other: a 1024x1024 image needs 16 tiles but
    one is listed, the tile width is not a multiple of 16, and the "deflate" tile is noise."""
    tags = [
        (256, 4, 1, 1024),  # ImageWidth
        (257, 4, 1, 1024),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample (count 1 for 3 samples: wrong)
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 2),  # Photometric: RGB
        (277, 3, 1, 3),  # SamplesPerPixel
        (322, 3, 1, 250),  # TileWidth not a multiple of 16: illegal
        (323, 3, 1, 256),  # TileLength
        (324, 4, 1, None),  # TileOffsets: one entry (16 needed)
        (325, 4, 1, 4096),  # TileByteCounts
    ]
    path.write_bytes(_classic_tiff(tags, payload=np.random.default_rng(99).bytes(4096)))


def _corrupt_bomb(path: Path) -> None:
    """200000 x 200000 RGB in a single strip whose data is a few bytes of deflate."""
    blob = zlib.compress(b"\xff" * 3 * 256)
    tags = [
        (256, 4, 1, 200_000),
        (257, 4, 1, 200_000),
        (258, 3, 3, None),
        (259, 3, 1, 8),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (278, 4, 1, 200_000),
        (273, 4, 1, None),
        (279, 4, 1, len(blob)),
    ]
    path.write_bytes(_classic_tiff(tags, payload=blob))


def _corrupt_bomb_tiled(path: Path) -> None:
    """Tiled 200000 x 200000, one level, all 38416 tiles sharing one tiny deflate tile."""
    side, tile = 200_000, 1024
    n = (-(-side // tile)) ** 2
    blob = zlib.compress(b"\xf0" * 3 * tile * tile, 9)
    tags = [
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 3, None),
        (259, 3, 1, 8),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (322, 3, 1, tile),
        (323, 3, 1, tile),
        (324, 4, n, None),
        (325, 4, n, len(blob)),
    ]
    path.write_bytes(_classic_tiff(tags, payload=blob))


def _classic_tiff(tags: list[tuple[int, int, int, int | None]], *, payload: bytes) -> bytes:
    """Little-endian classic TIFF with one IFD, laid out by hand so tags can lie.

    A ``None`` value means "filled in here": BitsPerSample (8,8,8), or offsets pointing at
    ``payload`` (all entries at the same place), or a repeated byte count.
    """
    tags = sorted(tags)
    ifd_off = 8
    ifd_len = 2 + 12 * len(tags) + 4
    extra = bytearray()
    extra_base = ifd_off + ifd_len
    entries = bytearray()
    # Payload goes after all out-of-line arrays; first size those arrays.
    arrays_len = 0
    for _tag, typ, count, _value in tags:
        size = count * (2 if typ == 3 else 4)
        if size > 4:
            arrays_len += size + (size & 1)
    payload_off = extra_base + arrays_len
    for tag, typ, count, value in tags:
        fmt = "<H" if typ == 3 else "<I"
        values: list[int]
        if value is not None:
            values = [value] * count
        elif tag == 258:
            values = [8, 8, 8]
        else:  # StripOffsets / TileOffsets
            values = [payload_off] * count
        raw = b"".join(struct.pack(fmt, v) for v in values)
        if len(raw) <= 4:
            entries += struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, typ, count, extra_base + len(extra))
            extra += raw + (b"\0" if len(raw) & 1 else b"")
    head = b"II*\0" + struct.pack("<I", ifd_off)
    ifd = struct.pack("<H", len(tags)) + bytes(entries) + struct.pack("<I", 0)
    return head + ifd + bytes(extra) + payload
