"""Edge-aware upsampling of the probability (napari_recist_seg.upsample) on real images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor
from napari_recist_seg.recist import recist_from_mask
from napari_recist_seg.upsample import (
    colour_guided_filter,
    guide_image,
    guided_filter,
    guided_upsample,
    upsample_box,
)

ISIC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isic2017_train256"
CLINIC = (576, 768)


def _clinic(stem: str) -> tuple[np.ndarray, np.ndarray]:
    """A real ISIC image and its expert mask at 768 x 576 (3x, bicubic / linear)."""
    if not (ISIC / "images").is_dir():
        pytest.skip(f"real ISIC data not found at {ISIC}")
    image = np.asarray(Image.open(ISIC / "images" / f"{stem}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0
    size = (CLINIC[1], CLINIC[0])
    big = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    gt = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5
    return big, gt


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _val_ids(n: int) -> list[str]:
    split = DEFAULT_MODEL_DIR / "split.json"
    if not split.is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    return json.loads(split.read_text())["val"][:n]


def test_guided_upsampling_brings_the_default_models_masks_closer_to_the_experts():
    # Real lesions at 3x resolution (validation ids: never trained on), exact RECIST:
    # the probability known at 128 px of a ~2-5x larger crop box, made to follow the
    # full-resolution image, gives masks closer to the expert outline on average.
    predictor = Predictor.load(None, device="cpu")
    plain, sharp = [], []
    for stem in _val_ids(8):
        image, gt = _clinic(stem)
        r = recist_from_mask(gt)
        for method, out in (("none", plain), ("guided", sharp)):
            predictor.upsample = method
            [res] = predictor.segment(image, [r])
            out.append(_dice(res.full_mask(gt.shape), gt))
    gains = np.subtract(sharp, plain)
    assert gains.mean() > 0.002 and (gains > 0).sum() >= 5, gains.round(4)  # 0.0056, 6 of 8


def test_colour_filter_reduces_to_the_grey_one_on_a_grey_guide():
    # Three equal channels: the 3 x 3 covariance is rank one, and the colour filter
    # with ridge eps is the grey filter with eps / 3 (a check of the closed-form solve).
    image, gt = _clinic("ISIC_0000001")
    grey = guide_image(image[100:300, 200:420])
    prob = cv2.GaussianBlur(gt[100:300, 200:420].astype(np.float32), (0, 0), 4)
    ref = guided_filter(grey, prob, 6, 1e-2 / 3)
    out = colour_guided_filter(np.repeat(grey[..., None], 3, axis=2), prob, 6, 1e-2)
    assert np.abs(out - ref).max() < 1e-4


def test_small_boxes_and_unknown_methods():
    prob = np.full((40, 40), 0.3, np.float32)
    image = np.zeros((40, 40, 3), np.uint8)
    # A box not larger than the network input has nothing to recover: unchanged.
    assert guided_upsample(prob, image, 1.2) is prob
    assert upsample_box("none", prob, image, (0, 0), 4.0) is prob
    with pytest.raises(ValueError, match="unknown upsampling"):
        upsample_box("bicubic", prob, image, (0, 0), 4.0)
    # A flat guide: the probability is smoothed, never invented.
    flat = guided_upsample(prob, image, 4.0)
    assert np.allclose(flat, 0.3, atol=1e-5)


def test_guide_of_16_bit_and_grey_images_is_stretched_to_unit_range():
    ct = np.linspace(-1000, 1000, 64 * 64, dtype=np.float32).reshape(64, 64).astype(np.int16)
    g = guide_image(ct)
    assert g.dtype == np.float32 and g.min() == 0.0 and g.max() == 1.0
    assert not guide_image(np.full((8, 8), 7, np.uint16)).any()
