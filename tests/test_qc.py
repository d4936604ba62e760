"""Slide QC on synthetic thumbnails: sharp tissue passes, the same tissue blurred fails, a blank slide fails."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from scanner_agent.core.qc import DEFAULT_BLUR_THRESHOLD, QcResult, assess


def synthetic_slide(size: int = 512, seed: int = 7) -> tuple[Image.Image, float]:
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
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(0.7)), float(
        tissue.mean()
    )  # the softness of a downsampled scan


@pytest.fixture(scope="module")
def slide() -> tuple[Image.Image, float]:
    return synthetic_slide()


def test_sharp_tissue_passes(slide: tuple[Image.Image, float]) -> None:
    image, true_fraction = slide
    result = assess(image)
    assert isinstance(result, QcResult)
    assert result.passed, result.reasons
    assert result.reasons == []
    assert result.blur_score > 10 * DEFAULT_BLUR_THRESHOLD  # a wide margin, not a near miss
    assert result.tissue_fraction == pytest.approx(true_fraction, abs=0.02)


def test_same_slide_out_of_focus_fails_on_blur(slide: tuple[Image.Image, float]) -> None:
    image, true_fraction = slide
    blurred = image.filter(ImageFilter.GaussianBlur(4))
    result = assess(blurred)
    assert not result.passed
    assert result.blur_score < DEFAULT_BLUR_THRESHOLD / 5
    assert len(result.reasons) == 1 and result.reasons[0].startswith("out of focus")
    # Blur does not make the tissue vanish: it is a focus failure, not an empty slide.
    assert result.tissue_fraction == pytest.approx(true_fraction, abs=0.03)


def test_blur_score_falls_as_blur_grows(slide: tuple[Image.Image, float]) -> None:
    image, _ = slide
    scores = [
        assess(image.filter(ImageFilter.GaussianBlur(r)) if r else image).blur_score for r in (0, 1, 2, 4)
    ]
    assert scores == sorted(scores, reverse=True)


def test_blank_slide_fails_the_tissue_check() -> None:
    rng = np.random.default_rng(3)
    glass = np.clip(np.array([240.0, 239, 243]) + rng.normal(0, 2, (400, 512, 1)), 0, 255).astype(np.uint8)
    result = assess(Image.fromarray(glass))
    assert not result.passed
    assert result.tissue_fraction < 0.001
    assert len(result.reasons) == 1 and result.reasons[0].startswith("no tissue found")


def test_black_padding_and_transparency_are_not_tissue() -> None:
    padded = Image.new("RGB", (512, 512), (242, 241, 244))
    padded.paste((0, 0, 0), (0, 0, 512, 100))  # scan-area padding some formats leave black
    assert assess(padded).tissue_fraction == 0.0
    assert assess(Image.new("RGBA", (300, 200), (0, 0, 0, 0))).tissue_fraction == 0.0


def test_other_modes_and_sizes_work_and_the_input_is_untouched(slide: tuple[Image.Image, float]) -> None:
    image, _ = slide
    before = image.tobytes()
    big = image.resize((1024, 1024), Image.Resampling.LANCZOS)
    assert assess(big).passed  # reduced to the working size first
    assert assess(image.convert("RGBA")).passed
    assert assess(image.convert("L")).passed  # no colour: tissue is found by being darker than glass
    assert image.tobytes() == before


def test_thresholds_are_parameters(slide: tuple[Image.Image, float]) -> None:
    image, _ = slide
    strict = assess(image, blur_threshold=1e9)
    assert not strict.passed and "out of focus" in strict.reasons[0]
    assert not assess(image, min_tissue_fraction=0.9).passed
    assert assess(image, min_tissue_fraction=0.9).reasons[0].startswith("no tissue found")


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
def test_a_flat_colour_never_passes(colour: tuple[int, int, int]) -> None:
    # Either it is glass (no tissue) or featureless "tissue" with nothing in focus.
    result = assess(Image.new("RGB", (64, 64), colour))
    assert not result.passed
    assert result.blur_score == 0.0
