"""Synthetic slide thumbnails as numpy RGB arrays, for the QC tests (no PIL, no files)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def gaussian_blur(image: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    """``image`` (h, w, 3) blurred by a Gaussian of ``sigma`` px, edges mirrored."""
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        out = sum(
            w * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis) for i, w in enumerate(kernel)
        )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def synthetic_slide(size: int = 512, seed: int = 7) -> tuple[NDArray[np.uint8], float]:
    """An H&E-like thumbnail: pink tissue islands dotted with purple nuclei on near-white glass.

    Returns the image and the true share of tissue pixels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3))
    img[:] = (242, 241, 244)
    img += rng.normal(0, 1.5, (size, size, 1))  # glass is not perfectly flat
    tissue = np.zeros((size, size), bool)
    for cy, cx, ry, rx in [(0.35, 0.3, 0.18, 0.22), (0.65, 0.65, 0.2, 0.17), (0.3, 0.72, 0.1, 0.12)]:
        tissue |= ((yy - cy * size) / (ry * size)) ** 2 + ((xx - cx * size) / (rx * size)) ** 2 <= 1
    img[tissue] = np.array([232, 170, 205.0]) + rng.normal(0, 8, (int(tissue.sum()), 1))  # eosin stroma
    ys, xs = np.nonzero(tissue)
    for i in rng.choice(len(ys), int(len(ys) * 0.02), replace=False):  # haematoxylin nuclei
        y, x, r = ys[i], xs[i], int(rng.integers(1, 3))
        win = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
        dot = ((yy[win] - y) ** 2 + (xx[win] - x) ** 2 <= r * r) & tissue[win]
        img[win][dot] = (110, 60, 150)
    sharp = np.clip(img, 0, 255).astype(np.uint8)
    return gaussian_blur(sharp, 0.7), float(tissue.mean())  # the softness of a downsampled scan
