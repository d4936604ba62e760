"""Quick slide quality check on a thumbnail: is there tissue, and is it in focus?

In the spirit of HistoQC (LightDarkModule for tissue, BlurDetectionModule for focus), reduced to
two numbers that can be computed in milliseconds on a ~512 px thumbnail:

* **tissue fraction**: the share of pixels that are tissue. Glass is bright and grey; tissue is
  darker or coloured (stained). A pixel is tissue if its grey level is below
  ``TISSUE_MAX_GRAY`` or its saturation is above ``TISSUE_MIN_SATURATION``; near-black pixels
  (scan-area padding, slide edges) are not tissue.
* **blur score**: the variance of the Laplacian of the grey image (0..255) over the inside of the
  tissue (the mask shrunk by a few pixels, so the tissue/glass edge, which stays sharp-looking
  even when out of focus, does not count). A sharp thumbnail has strong pixel-to-pixel detail
  (nuclei, fibres); an out-of-focus one has almost none.

Both numbers depend on scale: the defaults below were chosen for an image of 512 px on its long
side, so the caller reduces a larger picture to about that first (``slides.assess_thumbnail``
decodes the PNG thumbnail and does so). They separate a sharp synthetic H&E-like
thumbnail (score about 1100) from the same image Gaussian-blurred with radius 4 (about 1.3; radius 2
gives about 14, radius 1.5 about 42), with a wide margin on both sides. Tune ``blur_threshold`` per
scanner if real slides need it.

A thumbnail is ~100x smaller than the scan, so this catches gross failures (whole slide out of
focus, nothing scanned), not a few blurry fields; feed a larger level (e.g. 1.25x) and retune the
thresholds for finer focus QC. Input is an RGB array; nothing here reads files or images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Variance of the Laplacian (grey levels²) below which tissue counts as out of focus.
DEFAULT_BLUR_THRESHOLD = 25.0
#: Share of the thumbnail that must be tissue; below it the slide is treated as blank.
DEFAULT_MIN_TISSUE_FRACTION = 0.01
#: Grey level (0..255) under which a pixel is darker than glass, so tissue.
TISSUE_MAX_GRAY = 220.0
#: Saturation ((max-min)/max of RGB) above which a pixel is stained, so tissue, even if pale.
TISSUE_MIN_SATURATION = 0.08
#: Pixels whose brightest channel is below this are padding or slide edge, not tissue.
BLACK_MAX = 30.0
#: How far (px) the tissue mask is shrunk before measuring focus.
EDGE_MARGIN = 2
#: Fewer inner tissue pixels than this and the focus cannot be judged (score reported as 0).
MIN_FOCUS_PIXELS = 200


@dataclass(frozen=True)
class QcResult:
    """The verdict, both numbers, and for a failure the reasons a person reads."""

    passed: bool
    blur_score: float
    tissue_fraction: float
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed: " + "; ".join(self.reasons)
        return f"QC {verdict} (blur score {self.blur_score:.1f}, tissue {self.tissue_fraction:.1%})"


def assess(
    rgb: ArrayLike,
    *,
    blur_threshold: float = DEFAULT_BLUR_THRESHOLD,
    min_tissue_fraction: float = DEFAULT_MIN_TISSUE_FRACTION,
) -> QcResult:
    """Judge a slide thumbnail given as an RGB array of shape (height, width, 3), values 0..255:
    enough tissue, and that tissue in focus. Does not modify ``rgb``."""
    image = np.asarray(rgb, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB array of shape (height, width, 3), got shape {image.shape}")
    gray = image @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's "L" conversion
    tissue = tissue_mask(image, gray)
    fraction = float(tissue.mean()) if tissue.size else 0.0
    score = blur_score(gray, tissue)

    reasons: list[str] = []
    if fraction < min_tissue_fraction:
        reasons.append(
            f"no tissue found: {fraction:.1%} of the thumbnail is tissue, "
            f"at least {min_tissue_fraction:.1%} expected (blank or empty slide?)"
        )
    elif score < blur_threshold:
        reasons.append(
            f"out of focus: blur score {score:.1f} is below {blur_threshold:g} "
            "(variance of the Laplacian over the tissue)"
        )
    return QcResult(passed=not reasons, blur_score=score, tissue_fraction=fraction, reasons=reasons)


def tissue_mask(rgb: NDArray[np.float64], gray: NDArray[np.float64]) -> NDArray[np.bool_]:
    """True where a pixel is tissue: darker than glass or stained, and not black padding."""
    hi = rgb.max(axis=2)
    lo = rgb.min(axis=2)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-9), 0.0)
    mask: NDArray[np.bool_] = ((gray < TISSUE_MAX_GRAY) | (saturation > TISSUE_MIN_SATURATION)) & (
        hi >= BLACK_MAX
    )
    return mask


def blur_score(gray: NDArray[np.float64], tissue: NDArray[np.bool_]) -> float:
    """Variance of the 4-neighbour Laplacian over the tissue, away from its edges."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    lap = (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]) - 4.0 * gray[1:-1, 1:-1]
    inner = _erode(tissue, EDGE_MARGIN + 1)[1:-1, 1:-1]  # +1: the Laplacian itself looks one px out
    if int(inner.sum()) < MIN_FOCUS_PIXELS:
        return 0.0
    return float(lap[inner].var())


def _erode(mask: NDArray[np.bool_], steps: int) -> NDArray[np.bool_]:
    """Shrink a boolean mask by ``steps`` pixels (3x3 neighbourhood); the border counts as outside."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1, constant_values=False)
        shrunk = np.ones_like(out)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                shrunk &= padded[dy : dy + out.shape[0], dx : dx + out.shape[1]]
        out = shrunk
    return out
