"""Click mode on hand-made images: an elongated lesion at an angle, one click.

Every click candidate is a circle; the RECIST rounds must follow the lesion's own
long axis (a RECIST measured on each round's mask) rather than keep a round blob.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from napari_recist_seg.click_check import IMAGE_LIMIT
from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    return Predictor.load(None, device="cpu")


def _ellipse_image(shape: tuple[int, int], axes: tuple[int, int], angle: float,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Skin-coloured noisy background with a brown, blurred ellipse; its mask."""
    rng = np.random.default_rng(seed)
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), axes, angle, 0, 360, 1, -1)
    skin = np.array([225.0, 180.0, 160.0])
    lesion = np.array([120.0, 75.0, 55.0])
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)[..., None]
    img = skin * (1 - soft) + lesion * soft + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(bool)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@pytest.mark.parametrize("angle", [30.0, 120.0])
def test_an_elongated_lesion_at_an_angle_from_one_click(predictor, angle):
    image, mask = _ellipse_image((256, 256), (70, 28), angle)
    res = predictor.segment_click(image, (128.0, 128.0))
    got = res.full_mask(mask.shape)
    assert _dice(got, mask) > 0.9, _dice(got, mask)  # 0.912, 0.951
    # Its measured RECIST lies along the ellipse: long axis within 10 degrees of it
    # (OpenCV's angle turns the x axis towards +row), long axis within 15 % of 140 px
    # (the short axis is 84 px instead of 56 at 30 degrees: not checked).
    long = res.measured.long_axis
    d = long[1] - long[0]
    found = np.degrees(np.arctan2(d[0], d[1])) % 180.0
    assert min(abs(found - angle), 180 - abs(found - angle)) < 10.0, found
    assert abs(res.measured.long_length - 140.0) < 0.15 * 140.0


def test_the_recist_rounds_beat_the_single_pass_on_an_elongated_lesion(predictor):
    image, mask = _ellipse_image((576, 768), (200, 70), 30.0, seed=1)
    single = predictor.segment_click(image, (288.0, 384.0), refine=False)
    rounds = predictor.segment_click(image, (288.0, 384.0))
    one, many = (_dice(r.full_mask(mask.shape), mask) for r in (single, rounds))
    assert many > 0.93 and many > one + 0.03, (one, many)  # 0.898 -> 0.958
    assert rounds.mask.sum() <= IMAGE_LIMIT * mask.size
