"""Slide QC on PNG thumbnails as ``validate_slide`` makes them: decoding, modes, sizes and thresholds.

The scoring itself is tested on arrays in ``tests/unit/test_qc.py``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from scanner_agent.core.qc import DEFAULT_BLUR_THRESHOLD, QcResult, assess
from scanner_agent.slides import assess_thumbnail
from tests.unit.qc_images import synthetic_slide


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def slide() -> Image.Image:
    return Image.fromarray(synthetic_slide()[0])


def test_sharp_thumbnail_passes_and_scores_like_its_pixels(slide: Image.Image) -> None:
    result = assess_thumbnail(png(slide))
    assert isinstance(result, QcResult)
    assert result.passed, result.reasons
    assert result == assess(np.asarray(slide))  # a 512 px RGB PNG is scored as it is


def test_blurred_thumbnail_fails_on_focus(slide: Image.Image) -> None:
    result = assess_thumbnail(png(slide.filter(ImageFilter.GaussianBlur(4))))
    assert not result.passed
    assert result.blur_score < DEFAULT_BLUR_THRESHOLD / 5
    assert result.reasons[0].startswith("out of focus")


def test_other_modes_and_sizes_work(slide: Image.Image) -> None:
    big = slide.resize((1024, 1024), Image.Resampling.LANCZOS)
    assert assess_thumbnail(png(big)).passed  # reduced to the working size first
    assert assess_thumbnail(png(slide.convert("RGBA"))).passed
    assert assess_thumbnail(png(slide.convert("L"))).passed  # no colour: tissue is darker than glass


def test_reduction_keeps_the_score_in_the_range_the_thresholds_were_set_for(slide: Image.Image) -> None:
    big = slide.resize((2048, 2048), Image.Resampling.BICUBIC)
    # Unreduced, an enlarged image has little pixel-to-pixel detail and would look blurred.
    assert assess(np.asarray(big)).blur_score < assess_thumbnail(png(big)).blur_score


def test_transparent_is_glass_and_black_padding_is_not_tissue() -> None:
    assert assess_thumbnail(png(Image.new("RGBA", (300, 200), (0, 0, 0, 0)))).tissue_fraction == 0.0
    padded = Image.new("RGB", (512, 512), (242, 241, 244))
    padded.paste((0, 0, 0), (0, 0, 512, 100))
    assert assess_thumbnail(png(padded)).tissue_fraction == 0.0


def test_thresholds_are_optional_parameters(slide: Image.Image) -> None:
    data = png(slide)
    assert assess_thumbnail(data, blur_threshold=None, min_tissue_fraction=None).passed
    strict = assess_thumbnail(data, blur_threshold=1e9)
    assert not strict.passed and "out of focus" in strict.reasons[0]
    picky = assess_thumbnail(data, min_tissue_fraction=0.9)
    assert not picky.passed and picky.reasons[0].startswith("no tissue found")


def test_not_an_image_is_an_error() -> None:
    with pytest.raises(OSError):
        assess_thumbnail(b"not a png")
