"""Stand-ins for formats OpenSlide cannot read (Zeiss CZI, Philips iSyntax, Olympus VSI), for pass-through.

Only their shape on disk is real: the magic bytes each format starts with, and VSI's layout of a
small ``x.vsi`` beside a ``_x_/stackN/frame_t.ets`` folder. The payload is seeded noise; nothing
here claims to be a readable image (the agent never decodes these formats, it only stores them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: A CZI file starts with a ZISRAW segment header ("ZISRAWFILE", padded to 16 bytes).
_CZI_MAGIC = b"ZISRAWFILE\0\0\0\0\0\0"
#: An iSyntax file starts with an XML header in Philips' "DPUfsImport" shape.
_ISYNTAX_HEAD = b'<?xml version="1.0" encoding="UTF-8" ?>\r\n<DataObject ObjectType="DPUfsImport">\r\n'
#: VSI is a TIFF container of metadata; the pixels live in the .ets stacks.
_TIFF_LE = b"II*\0"
_ETS_MAGIC = b"SIS\0"


def _noise(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def write_czi(path: Path, *, size: int = 200_000, seed: int = 0) -> Path:
    """A file shaped like a Zeiss CZI (JPEG XR tiles, which OpenSlide cannot decode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_CZI_MAGIC + _noise(size, seed))
    return path


def write_isyntax(path: Path, *, size: int = 200_000, seed: int = 0) -> Path:
    """A file shaped like a Philips iSyntax (XML header, then wavelet-coded data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_ISYNTAX_HEAD + b"</DataObject>\r\n\x04" + _noise(size, seed))
    return path


def write_vsi(folder: Path, stem: str, *, stack_bytes: int = 100_000, seed: int = 0) -> Path:
    """An Olympus VSI scan: ``folder/stem.vsi`` plus ``folder/_stem_/stack1`` (the slide) and
    ``stack10001`` (the overview), each with a ``frame_t.ets``. Returns the ``.vsi``."""
    folder = Path(folder)
    data = folder / f"_{stem}_"
    for i, stack in enumerate(("stack1", "stack10001")):
        (data / stack).mkdir(parents=True, exist_ok=True)
        (data / stack / "frame_t.ets").write_bytes(_ETS_MAGIC + _noise(stack_bytes, seed + i + 1))
    vsi = folder / f"{stem}.vsi"
    vsi.write_bytes(_TIFF_LE + _noise(4_000, seed))
    return vsi
