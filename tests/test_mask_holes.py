"""``fill_holes`` against SciPy's ``binary_fill_holes`` (the independent implementation
it replaces): random masks of every density, real expert masks with holes punched in
them, masks touching the border, degenerate shapes and other dimensions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_recist_seg.mask_holes import fill_holes

ISIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017_train256" / "masks"


def test_random_masks_equal_scipy():
    rng = np.random.default_rng(7)
    for _ in range(600):
        h, w = rng.integers(1, 48, size=2)
        m = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        got = fill_holes(m)
        assert got.dtype == bool and got.shape == m.shape
        np.testing.assert_array_equal(got, ndimage.binary_fill_holes(m))


def test_real_masks_with_holes_and_the_border():
    files = sorted(ISIC.glob("*.png"))[:40]
    if not files:
        pytest.skip("ISIC masks not found")
    rng = np.random.default_rng(3)
    filled_any = False
    for f in files:
        m = np.asarray(Image.open(f)) > 127
        punched = m & (rng.random(m.shape) > 0.1)  # holes everywhere inside
        punched[:, :3] = rng.random((m.shape[0], 3)) > 0.5  # a ragged left border
        want = ndimage.binary_fill_holes(punched)
        np.testing.assert_array_equal(fill_holes(punched), want)
        np.testing.assert_array_equal(fill_holes(punched.astype(np.uint8) * 255), want)
        filled_any |= bool((want & ~punched).any())
    assert filled_any  # the check above compared real fills, not copies


def test_hand_made_cases():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    assert fill_holes(ring).sum() == 25
    ring[3, 1] = False  # a channel to the outside: no longer a hole
    assert fill_holes(ring).sum() == 25 - 9 - 1  # the 3x3 inside and the channel
    full = np.ones((3, 4), bool)
    full[1, 1] = False  # a hole needs foreground around it: here the border pixels
    assert fill_holes(full).all()
    assert not fill_holes(np.zeros((5, 5))).any()
    assert fill_holes(np.zeros((0, 4), bool)).shape == (0, 4)


def test_volumes_go_to_scipy():
    vol = np.zeros((5, 6, 6), bool)
    vol[1:4, 1:5, 1:5] = True
    vol[2, 2:4, 2:4] = False
    np.testing.assert_array_equal(fill_holes(vol), ndimage.binary_fill_holes(vol))
    assert fill_holes(vol)[2, 2, 2]
