"""Refinement of the model probability (napari_recist_seg.refine): hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.recist import Recist
from napari_recist_seg.refine import METHODS, recist_error, refine_mask


def _cone(side: int = 65, scale: float = 40.0) -> np.ndarray:
    # p = 1 - d / 40 around the centre: threshold t keeps the disc of radius 40 (1 - t).
    rr, cc = np.mgrid[:side, :side]
    d = np.hypot(rr - side // 2, cc - side // 2)
    return np.clip(1.0 - d / scale, 0.0, 1.0).astype(np.float32)


def _disc_recist(radius: float, c: int = 32) -> Recist:
    return Recist([[c, c - radius], [c, c + radius]], [[c - radius, c], [c + radius, c]])


def test_recist_error_is_small_for_the_matching_disc_and_large_otherwise():
    prob = _cone()
    r = _disc_recist(12)
    assert recist_error(prob > 0.7, r) < 0.1  # radius 12: matches
    assert recist_error(prob > 0.5, r) > 0.5  # radius 20: 2 x 8/24 too long
    assert recist_error(np.zeros((65, 65), bool), r) == float("inf")


def test_recist_threshold_picks_the_disc_the_drawn_axes_describe():
    prob = _cone()
    r = _disc_recist(12)  # 40 (1 - t) = 12 -> t = 0.7
    plain = refine_mask("none", prob, r)
    assert np.array_equal(plain, prob > 0.5)
    chosen = refine_mask("recist", prob, r)
    assert np.array_equal(chosen, prob > 0.7)
    # A RECIST matching the fixed threshold's disc keeps it (ties go to it).
    assert np.array_equal(refine_mask("recist", prob, _disc_recist(20)), prob > 0.5)


def test_fused_follows_a_real_edge_in_the_image():
    # A dark disc of radius 12 on a bright background, a model probability that is too
    # wide (radius 20 at 0.5): GrabCut on the image pulls the outline in.
    prob = _cone()
    rr, cc = np.mgrid[:65, :65]
    disc = np.hypot(rr - 32, cc - 32) <= 12
    image = np.where(disc[..., None], 60, 200).astype(np.uint8).repeat(3, axis=2)
    out = refine_mask("fused", prob, _disc_recist(12), image)
    # Mean of the signed distances of GrabCut (radius ~12) and of prob > 0.5 (radius
    # 20): a disc of radius about 16.
    radius = np.sqrt(out.sum() / np.pi)
    assert 14 < radius < 18
    # Without the image the GrabCut methods fall back to the fixed threshold.
    assert np.array_equal(refine_mask("fused", prob, _disc_recist(12)), prob > 0.5)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown refinement 'best'"):
        refine_mask("best", _cone(), _disc_recist(12))
    assert "none" in METHODS and "recist" in METHODS


def test_predictor_applies_its_refine_attribute(tiny):
    image = np.full((96, 96, 3), 128, np.uint8)
    r = _disc_recist(12, 48)
    saved = tiny.refine
    try:
        tiny.refine = "none"
        [plain] = tiny.segment(image, [r])
        tiny.refine = "recist"
        [ref] = tiny.segment(image, [r])
    finally:
        tiny.refine = saved
    local = r.transformed(ref.offset, 1.0)
    assert np.array_equal(ref.mask, refine_mask("recist", ref.probability, local))
    assert np.array_equal(plain.mask, plain.probability > tiny.threshold)
