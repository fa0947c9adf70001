"""Snapping keeps every endpoint of a RECIST drawn inside the image inside it
(issue 10: 16 of 200 jittered RECIST drawn at the border were refused because the
rotated short axis swung out of the image). Hand-computed geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_recist_seg.recist import Recist, RecistError, plane_shape, snap

# Long axis on the anti-diagonal near the top-left corner of a 40 x 40 image; short axis
# drawn vertically at col 2, crossing the long axis at (18, 2) (t = 0.1).
# normal = (-1, -1)/sqrt 2; reaches: +18/sqrt 2 (towards the top-left) and -12/sqrt 2.
# Rotated, the first end is (18 - 9, 2 - 9) = (9, -7): outside. Pulled back along the
# normal until col = -0.5: scale 2.5/9 -> (15.5, -0.5). The other end, (24, 8), stays.
CORNER = Recist(long_axis=[[20, 0], [0, 20]], short_axis=[[0, 2], [30, 2]])


def test_plain_snap_swings_the_endpoint_out_of_the_image():
    # Without the image shape the old behaviour: the rotated endpoint is at (9, -7).
    r = snap(CORNER)
    assert np.allclose(r.short_axis, [[9, -7], [24, 8]])
    with pytest.raises(RecistError, match="outside"):
        r.validate((40, 40))


def test_snap_with_image_shape_pulls_the_endpoint_back_along_the_perpendicular():
    CORNER.validate((40, 40))  # drawn inside the image
    r = snap(CORNER, image_shape=(40, 40, 3))
    assert np.allclose(r.short_axis, [[15.5, -0.5], [24, 8]])
    assert np.allclose(r.long_axis, CORNER.long_axis)
    # Still perpendicular to the long axis, through the crossing.
    d = np.diff(r.long_axis, axis=0)[0]
    assert abs(float(np.diff(r.short_axis, axis=0)[0] @ d)) < 1e-9
    assert r.short_length == pytest.approx(8.5 * math.sqrt(2))
    r.validate((40, 40))  # no refusal


def test_bottom_right_border_and_volume_shape():
    # Mirror image of CORNER in a 40 x 40 plane: (r, c) -> (39 - r, 39 - c); the upper
    # bound is 39.5, so the outside end (30, 46) is pulled back to (23.5, 39.5).
    mirrored = Recist(long_axis=[[19, 39], [39, 19]], short_axis=[[39, 37], [9, 37]])
    r = snap(mirrored, image_shape=(5, 40, 40))  # a volume: the plane is 40 x 40
    assert np.allclose(r.short_axis, [[23.5, 39.5], [15, 31]])
    r.validate((40, 40))


def test_endpoints_already_inside_are_unchanged():
    r = Recist([[10, 10], [10, 50]], [[0, 28], [20, 32]])
    assert np.allclose(snap(r, image_shape=(60, 60)).short_axis, snap(r).short_axis)


def test_plane_shape_of_images_and_volumes():
    assert plane_shape((576, 768)) == (576, 768)
    assert plane_shape((576, 768, 3)) == (576, 768)
    assert plane_shape((12, 64, 80)) == (64, 80)


def test_predictor_segments_a_border_recist_without_refusing(tiny):
    image = np.full((40, 40, 3), 128, np.uint8)
    [res] = tiny.segment(image, [CORNER])
    assert np.allclose(res.recist.short_axis, [[15.5, -0.5], [24, 8]])
