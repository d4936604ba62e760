"""Slide quality check on a PNG thumbnail: decode it to an RGB array of working size, let core.qc judge.

The thresholds in ``core.qc`` were chosen at 512 px on the long side, so a larger thumbnail is
reduced to that first (never enlarged). Transparent pixels mean "nothing scanned there" and are
shown as glass (white), not black.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from scanner_agent.core.qc import DEFAULT_BLUR_THRESHOLD, DEFAULT_MIN_TISSUE_FRACTION, QcResult, assess

#: Long side (px) the thumbnail is reduced to before scoring.
WORK_SIZE = 512


def assess_thumbnail(
    png: bytes, *, blur_threshold: float | None = None, min_tissue_fraction: float | None = None
) -> QcResult:
    """Judge a slide's thumbnail (image bytes, PNG as ``validate_slide`` makes them).

    ``None`` for a threshold means the default of ``core.qc``.
    """
    with Image.open(io.BytesIO(png)) as image:
        rgb = working_rgb(image, WORK_SIZE)
    return assess(
        rgb,
        blur_threshold=DEFAULT_BLUR_THRESHOLD if blur_threshold is None else blur_threshold,
        min_tissue_fraction=(
            DEFAULT_MIN_TISSUE_FRACTION if min_tissue_fraction is None else min_tissue_fraction
        ),
    )


def working_rgb(image: Image.Image, work_size: int = WORK_SIZE) -> NDArray[np.uint8]:
    """``image`` as an RGB array (h, w, 3), reduced so its long side is at most ``work_size``.

    ``image`` itself is not modified.
    """
    img = image
    if img.mode != "RGB":
        if "A" in img.getbands():  # transparent = no scan there: show it as glass, not black
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img.convert("RGBA"))
        img = img.convert("RGB")
    if max(img.size) > work_size:
        img = img.copy()
        img.thumbnail((work_size, work_size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)
