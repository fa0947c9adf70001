"""Acquisition-shift augmentation (issue 10): blur, JPEG, colour balance of the raw crop."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.preprocess import PreprocessConfig
from napari_recist_seg.training import TrainConfig
from napari_recist_seg.training.samples import _augment, _prepare_one, shift_augment
from tests.test_training import _cfg, _samples


def _texture(shape=(64, 64, 3)) -> np.ndarray:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=shape).astype(np.uint8)
    img[:, : shape[1] // 2] = 40  # a sharp vertical edge + noise on the right
    return img


def test_shift_augment_off_is_identity_and_on_changes_picture_not_geometry():
    img = _texture()
    np.testing.assert_array_equal(shift_augment(img, np.random.default_rng(0), 0.0), img)
    out = shift_augment(img, np.random.default_rng(0), 1.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(float) - img.astype(float))
    assert diff.mean() > 2  # blurred / recompressed / re-balanced
    # The picture stays in place: the flat left half stays flat-ish, the edge stays put.
    assert abs(out[:, :28].astype(float).mean() - 40) < 40 * 0.15
    # Noise is blurred away (down/up-scaling + JPEG): lower variance on the noisy half.
    assert out[:, 40:].astype(float).std() < img[:, 40:].astype(float).std()


@pytest.mark.parametrize("shape,dtype", [((48, 48), np.uint8), ((48, 48), np.float32), ((48, 48), np.int32)])
def test_shift_augment_keeps_grey_and_float_crops(shape, dtype):
    img = (np.random.default_rng(1).random(shape) * 200).astype(dtype)
    out = shift_augment(img, np.random.default_rng(2), 1.0)
    assert out.shape == shape and out.dtype == dtype


def test_shift_aug_in_training_changes_only_the_image_channels():
    pcfg = PreprocessConfig(input_size=64)
    prep, _ = _prepare_one(_samples()[0], pcfg, "ellipse", False, -1)
    kw = dict(jitter=0.05, rotate_deg=20.0, colour_jitter=0.0, input_size=64)
    x0, t0, _ = _augment(prep, np.random.default_rng(5), _cfg(**kw), pcfg, None)
    x1, t1, _ = _augment(prep, np.random.default_rng(5), _cfg(shift_aug=1.0, **kw), pcfg, None)
    np.testing.assert_array_equal(t0, t1)  # same geometry, same target
    np.testing.assert_array_equal(x0[3], x1[3])  # same RECIST channel
    d = np.abs(x0[:3] - x1[:3]).mean()
    assert 0.0 < d < 0.5


def test_shift_aug_must_be_a_probability():
    with pytest.raises(ValueError, match="shift_aug"):
        TrainConfig(shift_aug=1.5)
