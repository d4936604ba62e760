"""The tissue-like picture every synthetic slide shows, and its slide label and macro photo.

Pink and purple regions with dark nuclei on white glass, drawn once at a modest base size and
resampled for any pyramid level or tile, so QC can tell a sharp scan from a ``blurred`` one and
``blank`` is empty glass. The same seed always draws the same picture.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: The tissue image is drawn once at up to this many pixels on the long side and resampled per
#: tile, so making a 256 MB slide never holds the whole level 0 in memory.
_BASE_LONG_SIDE = 1024
#: The colour of bare glass, also used to pad tiles beyond a level's edge.
GLASS = (243, 242, 240)
_GRAIN_POOL = 1024


class Artwork:
    """A tissue-like picture drawn once at base resolution and resampled for any level or tile."""

    def __init__(
        self, width: int, height: int, *, seed: int, blurred: bool = False, blank: bool = False
    ) -> None:
        self.width, self.height = width, height
        self.seed, self.blurred, self.blank = seed, blurred, blank
        bw, bh = fit(width, height, _BASE_LONG_SIDE)
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
        out: np.ndarray = np.clip(px + grain, 0, 255).astype(np.uint8)
        return out

    def _grain_at(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The grain for one region: a slice of the pool chosen by level and position."""
        spare = _GRAIN_POOL - max(w, h)
        if spare < 0:  # tiles larger than the pool: tile it
            reps = -(-max(w, h) // _GRAIN_POOL)
            return np.tile(self.grain, (reps, reps, 1))[:h, :w]
        ox = (x0 * 7919 + y0 * 104729 + level * 31) % (spare + 1)
        oy = (y0 * 7919 + x0 * 15485863 + level * 17) % (spare + 1)
        return self.grain[oy : oy + h, ox : ox + w]

    def overview(self, size: tuple[int, int]) -> np.ndarray:
        """The whole picture resampled to ``size`` (w, h), without grain."""
        return np.asarray(self.base.resize(size, Image.Resampling.BILINEAR))


def _draw_base(w: int, h: int, *, seed: int, blurred: bool, blank: bool) -> Image.Image:
    """The whole picture at base size: tissue sections with nuclei on glass, defocused if ``blurred``."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = GLASS
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
    """Dark purple dots (cell nuclei) scattered over the tissue."""
    h, w = tissue.shape
    ys, xs = np.nonzero(tissue)
    if len(xs) == 0:
        return img
    n = min(len(xs) // 60, 40000)
    pick = rng.integers(0, len(xs), size=n)
    scale = max(w, h) / 1024
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    radii, darkness = rng.uniform(1.0, 2.5, n) * scale, rng.integers(40, 90, n)
    for x, y, r, d in zip(xs[pick], ys[pick], radii, darkness, strict=True):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(int(d), int(d * 0.6), int(d + 60)))
    return np.asarray(canvas, dtype=np.float32)


def label_image(barcode: str | None, seed: int) -> np.ndarray:
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


#: The symbologies ``code_label`` prints in two dimensions (the rest are 1D, printed as bars).
_MATRIX = frozenset({"DataMatrix", "QRCode", "Aztec", "MicroQRCode", "PDF417"})


def code_label(
    codes: Sequence[tuple[str, str]],
    *,
    angle: float = 0.0,
    jpeg_quality: int | None = None,
    blur: float = 0.0,
    contrast: float = 1.0,
    size: tuple[int, int] = (420, 480),
) -> np.ndarray:
    """A slide label printed with real codes: ``codes`` are (text, zxing-cpp format name, e.g.
    "DataMatrix", "QRCode", "Code128"), stacked down the card under a line of text.

    Then, as a scanner's camera might see it: turned by ``angle`` degrees, ``contrast`` (1 = black
    on white, 0.2 = faint grey print), Gaussian ``blur`` (pixels) and a JPEG round trip at
    ``jpeg_quality``. 2D modules are 5 pixels, 1D bars 3 pixels per module (about 300 dpi).
    """
    import zxingcpp  # only the synthetic slides need it to write codes

    card = Image.new("L", size, 250)
    draw = ImageDraw.Draw(card)
    draw.text((20, 16), "H&E  " + "  ".join(t for t, _ in codes)[:40], fill=0)
    y = 50
    for text, fmt in codes:
        symbol = zxingcpp.create_barcode(text, zxingcpp.barcode_format_from_str(fmt))
        pix = Image.fromarray(np.asarray(symbol.to_image(scale=1))).convert("L")
        if fmt in _MATRIX:
            pix = pix.resize((pix.width * 5, pix.height * 5), Image.Resampling.NEAREST)
        else:
            pix = pix.resize((pix.width * 3, 90), Image.Resampling.NEAREST)
        if pix.width > size[0] - 10 or y + pix.height > size[1]:
            raise ValueError(f"{fmt} {text!r} does not fit on a {size[0]}x{size[1]} label")
        card.paste(pix, ((size[0] - pix.width) // 2, y))
        y += pix.height + 20
    if angle:
        card = card.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=250)
    px = 128 + (np.asarray(card, np.float32) - 128) * contrast
    card = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
    if blur:
        card = card.filter(ImageFilter.GaussianBlur(blur))
    rgb = card.convert("RGB")
    if jpeg_quality is not None:  # the artefacts of a JPEG-compressed label, stored losslessly after
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=jpeg_quality)
        rgb = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(rgb)


def macro_image(art: Artwork, label: np.ndarray) -> np.ndarray:
    """The macro photo of the whole glass slide: the label beside an overview of the tissue."""
    macro = Image.new("RGB", (1280, 431), (200, 200, 205))
    # The label at about its own resolution (as a macro camera sees it), so its codes stay readable.
    lab = Image.fromarray(label)
    lab.thumbnail((360, 400), Image.Resampling.LANCZOS)
    macro.paste(lab, (20, 15))
    macro.paste(Image.fromarray(art.overview(fit(art.width, art.height, 800))).resize((880, 400)), (380, 15))
    return np.asarray(macro)


def fit(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) scaled down so the long side is at most ``long_side``, never up."""
    f = min(1.0, long_side / max(width, height))
    return max(1, round(width * f)), max(1, round(height * f))


def padded_tile(art: Artwork, level: int, size: tuple[int, int], x0: int, y0: int, tile: int) -> np.ndarray:
    """One full tile; the part beyond the level's edge is glass, as scanners pad it."""
    tw, th = min(tile, size[0] - x0), min(tile, size[1] - y0)
    if tw == tile and th == tile:
        return art.region(level, size, x0, y0, tile, tile)
    block = np.empty((tile, tile, 3), np.uint8)
    block[:] = GLASS
    if tw > 0 and th > 0:
        block[:th, :tw] = art.region(level, size, x0, y0, tw, th)
    return block
