"""Real slide files made on the spot, for tests, the demo and the scanner simulator.

Everything written here is opened by the real OpenSlide: an Aperio-style SVS (vendor
``aperio``, with ``aperio.Barcode``), a generic tiled pyramidal TIFF (``generic-tiff``), a MIRAX
slide (``.mrxs`` + data folder) and a set of broken files that a scanner or a network share can
really produce. Output is deterministic: the same arguments give the same bytes, so two scans
made with the same seed are byte-identical and a different seed gives a different file.

Tiles are deflate-compressed, not JPEG: tifffile can only write JPEG tiles with the
``imagecodecs`` package, which is not a dependency; OpenSlide reads deflate tiles fine.
Content is tissue-like (pink/purple regions with dark nuclei on white glass) so QC can tell a
sharp scan from a ``blurred`` one, and ``blank`` is empty glass.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFilter

#: The tissue image is drawn once at up to this many pixels on the long side and resampled per
#: tile, so making a 256 MB slide never holds the whole level 0 in memory.
_BASE_LONG_SIDE = 1024
#: Each pyramid level is this much smaller than the one above it, as on Aperio scanners.
_LEVEL_FACTOR = 4
_GLASS = (243, 242, 240)
_GRAIN_POOL = 1024
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
    path = Path(path)
    _check_size(width, height, tile)
    if barcode is not None and any(c in barcode for c in "|\r\n"):
        raise ValueError(f"barcode {barcode!r} cannot be stored in an Aperio description ('|' or newline)")
    art = _Artwork(width, height, seed=seed, blurred=blurred, blank=blank)
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
        thumb = art.overview(_fit(width, height, 1024))
        _write_stripped(tw, thumb, f"{head} -> {thumb.shape[1]}x{thumb.shape[0]} - {tail}")
        for i, size in enumerate(levels[1:], start=1):
            _write_tiled(tw, art, size, tile, f"{head} -> {size[0]}x{size[1]} Deflate/RGB{tail}", level=i)
        label = _label_image(barcode, seed)
        _write_stripped(
            tw, label, f"{_APERIO_HEAD}\r\nlabel {label.shape[1]}x{label.shape[0]}", subfiletype=1
        )
        macro = _macro_image(art, label)
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
    art = _Artwork(width, height, seed=seed)
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31 // 2) as tw:
        for i, size in enumerate(_level_sizes(width, height, tile)):
            _write_tiled(tw, art, size, tile, None, level=i, subfiletype=1 if i else 0)
    return path


def write_corrupt(path: Path, kind: str) -> Path:
    """Write a broken slide file of the given ``kind``; returns ``path``.

    Kinds: ``zero`` (0 bytes), ``truncated`` (a valid SVS cut in half, as an interrupted copy
    leaves it), ``garbage`` (random bytes), ``bad_tags`` (a TIFF whose tile tags contradict each
    other, over noise posing as deflate data: OpenSlide opens it, decoding fails), ``bomb`` (a tiny TIFF claiming a 200000 x 200000
    image in one strip), ``bomb_tiled`` (a tiny tiled TIFF that OpenSlide opens, claiming
    200000 x 200000 pixels with no pyramid, every tile pointing at the same few bytes).
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


# --- the picture -----------------------------------------------------------------------------


class _Artwork:
    """A tissue-like picture drawn once at base resolution and resampled for any level or tile."""

    def __init__(
        self, width: int, height: int, *, seed: int, blurred: bool = False, blank: bool = False
    ) -> None:
        self.width, self.height = width, height
        self.seed, self.blurred, self.blank = seed, blurred, blank
        bw, bh = _fit(width, height, _BASE_LONG_SIDE)
        self.base = _draw_base(bw, bh, seed=seed, blurred=blurred, blank=blank)
        # Pixel-level grain comes from one seeded pool, sliced at a different place for each
        # tile: any tile can be drawn alone, and it costs no random numbers per tile.
        pool = np.random.default_rng([seed, 1]).integers(
            -6, 7, size=(_GRAIN_POOL, _GRAIN_POOL, 1), dtype=np.int16
        )
        self.grain = pool // 6 if blank else pool  # empty glass: only faint sensor noise

    def region(self, level: int, size: tuple[int, int], x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Pixels (h, w, 3) of the level of ``size`` starting at (x0, y0)."""
        sx = self.base.width / size[0]
        sy = self.base.height / size[1]
        box = (x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy)
        px = np.asarray(self.base.resize((w, h), Image.Resampling.BILINEAR, box=box), dtype=np.int16)
        if self.blurred:  # defocus removes the grain too, so QC sees the difference at every level
            return px.astype(np.uint8)
        grain = self._grain_at(level, x0, y0, w, h)
        if not self.blank:
            grain = grain * (px[..., 1:2] < 230)  # stained tissue is grainy, bare glass nearly flat
        return np.clip(px + grain, 0, 255).astype(np.uint8)

    def _grain_at(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        spare = _GRAIN_POOL - max(w, h)
        if spare < 0:  # tiles larger than the pool: tile it
            reps = -(-max(w, h) // _GRAIN_POOL)
            return np.tile(self.grain, (reps, reps, 1))[:h, :w]
        ox = (x0 * 7919 + y0 * 104729 + level * 31) % (spare + 1)
        oy = (y0 * 7919 + x0 * 15485863 + level * 17) % (spare + 1)
        return self.grain[oy : oy + h, ox : ox + w]

    def overview(self, size: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.base.resize(size, Image.Resampling.BILINEAR))


def _draw_base(w: int, h: int, *, seed: int, blurred: bool, blank: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = _GLASS
    if not blank:
        tissue = _smooth_field(rng, w, h, cells=6) + _blobs(rng, w, h) > 0.95
        shade = _smooth_field(rng, w, h, cells=10)[..., None]  # pink (eosin) to purple (haematoxylin)
        pink = np.array([232, 160, 196], np.float32)
        purple = np.array([170, 100, 180], np.float32)
        colour = pink + (purple - pink) * np.clip(shade, 0, 1)
        img[tissue] = colour[tissue]
        img = _stamp_nuclei(rng, img, tissue)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if blurred:
        # Defocus wide enough to show on a 512-pixel thumbnail, whatever the slide size.
        out = out.filter(ImageFilter.GaussianBlur(radius=3 * max(w, h) / 512))
    return out


def _smooth_field(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Values in [0, 1] varying smoothly over the image (coarse noise, bicubic-upsampled)."""
    coarse = rng.random((max(2, cells * h // max(w, h)) + 1, cells + 1), dtype=np.float32)
    im = Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(im)


def _blobs(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A few elliptical tissue sections, strongest at their centres."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    acc = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = rng.uniform(0.12, 0.3) * w, rng.uniform(0.12, 0.3) * h
        acc = np.maximum(acc, 1.2 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2)
    return acc


def _stamp_nuclei(rng: np.random.Generator, img: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    h, w = tissue.shape
    ys, xs = np.nonzero(tissue)
    if len(xs) == 0:
        return img
    n = min(len(xs) // 60, 40000)
    pick = rng.integers(0, len(xs), size=n)
    scale = max(w, h) / 1024
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for x, y, r, d in zip(xs[pick], ys[pick], rng.uniform(1.0, 2.5, n) * scale, rng.integers(40, 90, n)):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(int(d), int(d * 0.6), int(d + 60)))
    return np.asarray(canvas, dtype=np.float32)


def _label_image(barcode: str | None, seed: int) -> np.ndarray:
    """A slide label: white card with the barcode text and stripes standing in for a 1D code."""
    im = Image.new("RGB", (387, 463), (250, 250, 250))
    draw = ImageDraw.Draw(im)
    text = barcode if barcode is not None else "NO BARCODE"
    draw.text((20, 40), text, fill=(0, 0, 0))
    rng = np.random.default_rng([seed, 7])
    x = 20
    for bar in rng.integers(1, 5, size=60):
        draw.rectangle((x, 120, x + int(bar) - 1, 300), fill=(0, 0, 0))
        x += int(bar) * 2
        if x > 360:
            break
    return np.asarray(im)


def _macro_image(art: _Artwork, label: np.ndarray) -> np.ndarray:
    macro = Image.new("RGB", (1280, 431), (200, 200, 205))
    macro.paste(Image.fromarray(label).resize((320, 383)), (20, 24))
    macro.paste(Image.fromarray(art.overview(_fit(art.width, art.height, 800))).resize((880, 400)), (380, 15))
    return np.asarray(macro)


# --- TIFF writing ----------------------------------------------------------------------------


def _check_size(width: int, height: int, tile: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile size must be a positive multiple of 16 (TIFF rule), got {tile}")


def _fit(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) scaled down so the long side is at most ``long_side``, never up."""
    f = min(1.0, long_side / max(width, height))
    return max(1, round(width * f)), max(1, round(height * f))


def _level_sizes(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """Level 0 then 4x reductions while the level still spans more than one tile."""
    sizes = [(width, height)]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append((max(1, w // _LEVEL_FACTOR), max(1, h // _LEVEL_FACTOR)))
    return sizes


def _tiles(art: _Artwork, size: tuple[int, int], tile: int, level: int) -> Iterator[np.ndarray]:
    for y0 in range(0, size[1], tile):
        for x0 in range(0, size[0], tile):
            yield _padded_tile(art, level, size, x0, y0, tile)


def _padded_tile(art: _Artwork, level: int, size: tuple[int, int], x0: int, y0: int, tile: int) -> np.ndarray:
    """One full tile; the part beyond the level's edge is glass, as scanners pad it."""
    tw, th = min(tile, size[0] - x0), min(tile, size[1] - y0)
    if tw == tile and th == tile:
        return art.region(level, size, x0, y0, tile, tile)
    block = np.empty((tile, tile, 3), np.uint8)
    block[:] = _GLASS
    if tw > 0 and th > 0:
        block[:th, :tw] = art.region(level, size, x0, y0, tw, th)
    return block


def _write_tiled(
    tw: tifffile.TiffWriter,
    art: _Artwork,
    size: tuple[int, int],
    tile: int,
    description: str | None,
    *,
    level: int,
    subfiletype: int = 0,
) -> None:
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


# --- broken files ----------------------------------------------------------------------------


def _corrupt_zero(path: Path) -> None:
    path.write_bytes(b"")


def _corrupt_truncated(path: Path) -> None:
    scratch = path.with_name(path.name + ".whole.tmp")
    try:
        write_svs(scratch, width=1024, height=768, barcode="000000")
        data = scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)
    path.write_bytes(data[: len(data) // 2])


def _corrupt_garbage(path: Path) -> None:
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
    for tag, typ, count, value in tags:
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


# --- MIRAX ------------------------------------------------------------------------------------


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
    art = _Artwork(images_x * image_size, images_y * image_size, seed=seed)
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
                    _padded_tile(art, k, size, gx * image_size // step, gy * image_size // step, image_size)
                )
                records.append((gy * images_x + gx, len(data), len(blob)))
                data += blob
        levels.append(records)
    label_blob = _jpeg(_label_image(barcode, seed))
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
    count = 1
    while (images_x >> count) >= 1 and (images_y >> count) >= 1 and count < 10:
        count += 1
    return count


def _jpeg(pixels: np.ndarray) -> bytes:
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
