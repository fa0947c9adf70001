"""The lesion's intensity region (propagate_intensity): the off-slice blend and the
RECIST slice's choice between the model's mask and its blend, for darker and brighter
lesions alike."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.propagate_intensity import IntensityBand, IntensityBlend
from napari_recist_seg.recist import recist_from_mask


def _disc(radius, shape=(60, 60), centre=(30, 30)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _plane(lesion, inside, outside, noise=3.0):
    rng = np.random.default_rng(1)
    return np.where(lesion, inside, outside) + rng.normal(0, noise, lesion.shape)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("inside, outside", [(-40.0, 60.0), (900.0, 400.0)])
def test_off_slice_blend_follows_the_shrinking_lesion(inside, outside):
    # The lesion shrank from radius 10 to 7; the model repeats last slice's outline.
    truth, prev = _disc(7), _disc(10)
    plane = _plane(truth, inside, outside)
    band = IntensityBand(inside=inside, outside=outside, sigma=3.0)
    out = IntensityBlend().apply(plane, prev.copy(), prev, band, shift_px=1.0)
    # The mean of the two signed distances: the outline moves halfway to the truth.
    assert _dice(prev, truth) < 0.70 and _dice(out, truth) > 0.80
    assert truth.sum() < out.sum() < prev.sum()


def test_no_lesion_like_pixel_left_ends_the_lesion():
    prev = _disc(5)
    plane = _plane(np.zeros_like(prev), -40.0, 60.0)  # liver only: the lesion has ended
    band = IntensityBand(inside=-40.0, outside=60.0, sigma=3.0)
    assert not IntensityBlend().apply(plane, prev.copy(), prev, band, shift_px=1.0).any()


def test_seed_takes_the_blend_only_when_it_matches_the_drawn_recist_better():
    truth = _disc(8)
    plane = _plane(truth, -40.0, 60.0)
    band = IntensityBand.from_seed(plane, truth)
    drawn = recist_from_mask(truth)
    blend = IntensityBlend()
    too_big = _disc(11)  # the model over-segments the RECIST slice
    seed = blend.seed(plane, too_big, drawn, band, 1.0)
    assert _dice(seed, truth) > _dice(too_big, truth) + 0.1
    # A model mask that already matches the drawn axes is kept as it is.
    assert (blend.seed(plane, truth, drawn, band, 1.0) == truth).all()
    # And the choice can be turned off.
    assert (IntensityBlend(seed_weight=None).seed(plane, too_big, drawn, band, 1.0) == too_big).all()
