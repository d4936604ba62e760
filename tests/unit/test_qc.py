"""Slide QC on RGB arrays: sharp tissue passes, the same tissue blurred fails, a blank slide fails."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from scanner_agent.core.qc import DEFAULT_BLUR_THRESHOLD, QcResult, assess, blur_score, tissue_mask
from tests.unit.qc_images import gaussian_blur, synthetic_slide

Slide = tuple[NDArray[np.uint8], float]


@pytest.fixture(scope="module")
def slide() -> Slide:
    return synthetic_slide()


def test_sharp_tissue_passes(slide: Slide) -> None:
    image, true_fraction = slide
    result = assess(image)
    assert isinstance(result, QcResult)
    assert result.passed, result.reasons
    assert result.reasons == []
    assert result.blur_score > 10 * DEFAULT_BLUR_THRESHOLD  # a wide margin, not a near miss
    assert result.tissue_fraction == pytest.approx(true_fraction, abs=0.02)
    assert result.summary().startswith("QC passed (blur score ")


def test_same_slide_out_of_focus_fails_on_blur(slide: Slide) -> None:
    image, true_fraction = slide
    result = assess(gaussian_blur(image, 4))
    assert not result.passed
    assert result.blur_score < DEFAULT_BLUR_THRESHOLD / 5
    assert len(result.reasons) == 1 and result.reasons[0].startswith("out of focus")
    assert result.summary().startswith("QC failed: out of focus")
    # Blur does not make the tissue vanish: it is a focus failure, not an empty slide.
    assert result.tissue_fraction == pytest.approx(true_fraction, abs=0.03)


def test_blur_score_falls_as_blur_grows(slide: Slide) -> None:
    image, _ = slide
    scores = [assess(gaussian_blur(image, s) if s else image).blur_score for s in (0, 1, 2, 4)]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == 4


def test_blank_slide_fails_the_tissue_check() -> None:
    rng = np.random.default_rng(3)
    glass = np.clip(np.array([240.0, 239, 243]) + rng.normal(0, 2, (400, 512, 1)), 0, 255).astype(np.uint8)
    result = assess(glass)
    assert not result.passed
    assert result.tissue_fraction < 0.001
    assert len(result.reasons) == 1 and result.reasons[0].startswith("no tissue found")


def test_black_padding_is_not_tissue() -> None:
    padded = np.empty((512, 512, 3), np.uint8)
    padded[:] = (242, 241, 244)
    padded[:100] = 0  # scan-area padding some formats leave black
    assert assess(padded).tissue_fraction == 0.0


def test_grey_tissue_is_found_by_being_darker_than_glass(slide: Slide) -> None:
    image, _ = slide
    grey = image @ np.array([0.299, 0.587, 0.114])
    assert assess(np.repeat(grey[:, :, None], 3, axis=2)).passed


def test_input_is_untouched_and_floats_are_accepted(slide: Slide) -> None:
    image, _ = slide
    before = image.copy()
    as_uint8 = assess(image)
    as_float = assess(image.astype(np.float64))
    assert np.array_equal(image, before)
    assert as_uint8 == as_float


def test_thresholds_are_parameters(slide: Slide) -> None:
    image, _ = slide
    strict = assess(image, blur_threshold=1e9)
    assert not strict.passed and "out of focus" in strict.reasons[0]
    picky = assess(image, min_tissue_fraction=0.9)
    assert not picky.passed and picky.reasons[0].startswith("no tissue found")


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 4), (64, 64, 1), (3,)])
def test_anything_but_rgb_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"RGB array of shape \(height, width, 3\)"):
        assess(np.zeros(shape, np.uint8))


def test_tiny_and_empty_images_score_zero() -> None:
    assert blur_score(np.zeros((2, 50)), np.ones((2, 50), bool)) == 0.0
    empty = assess(np.zeros((0, 0, 3), np.uint8))
    assert empty.tissue_fraction == 0.0 and empty.blur_score == 0.0 and not empty.passed


def test_tissue_mask_rules() -> None:
    rgb = np.array([[[242, 241, 244], [200, 200, 200], [250, 200, 250], [10, 10, 10]]], np.float64)
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    # glass: no; darker than glass: yes; pale but stained: yes; black padding: no
    assert tissue_mask(rgb, gray).tolist() == [[False, True, True, False]]


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
def test_a_flat_colour_never_passes(colour: tuple[int, int, int]) -> None:
    # Either it is glass (no tissue) or featureless "tissue" with nothing in focus.
    flat = np.empty((64, 64, 3), np.uint8)
    flat[:] = colour
    result = assess(flat)
    assert not result.passed
    assert result.blur_score == 0.0
