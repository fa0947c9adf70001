"""Metrics against hand-computed cases, a brute-force reference and medpy, on real masks."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_recist_seg.metrics import (
    METRIC_KEYS,
    centre_error,
    dice,
    evaluate_case,
    image_diagonal,
    iou,
    perimeter,
    perimeter_error,
    summarize,
    surface_distances,
    volume_similarity,
)

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC_MASKS = SHARED_DATA / "isic2017_train256" / "masks"
LITS_LABELS = SHARED_DATA / "lits_case117" / "labels.nii.gz"


# -- independent reference implementations --------------------------------------------


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """Surface pixel coordinates by definition: a lesion pixel with a face-neighbour
    outside the lesion or outside the image (no erosion involved)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask, dtype=bool)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            nb = np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
            inner &= nb
    return np.argwhere(mask & ~inner).astype(float)


def _reference_distances(a, b, spacing=None):
    """Directed surface distances by nearest-neighbour search between point sets."""
    sp = np.ones(a.ndim) if spacing is None else np.asarray(spacing, float)
    pa, pb = _surface_points(a) * sp, _surface_points(b) * sp
    return cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]


def _reference(a, b, spacing=None):
    d_ab, d_ba = _reference_distances(a, b, spacing)
    return {
        "hd": max(d_ab.max(), d_ba.max()),
        "hd95": max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)),
        "avd": (d_ab.mean() + d_ba.mean()) / 2,
    }


def _square(n=40, side=10, top=5, left=5):
    m = np.zeros((n, n), bool)
    m[top:top + side, left:left + side] = True
    return m


@pytest.fixture(scope="module")
def isic_masks() -> list[np.ndarray]:
    if not ISIC_MASKS.is_dir():
        pytest.skip(f"real ISIC masks not found at {ISIC_MASKS}")
    from PIL import Image

    files = sorted(ISIC_MASKS.glob("*_segmentation.png"))[:12]
    return [np.asarray(Image.open(f)) > 0 for f in files]


def _real_pairs(masks):
    """(pred, gt) pairs: eroded, dilated, shifted versions and other images' masks."""
    pairs = []
    for i, gt in enumerate(masks[:6]):
        pairs.append((ndimage.binary_erosion(gt, iterations=3), gt))
        pairs.append((ndimage.binary_dilation(gt, iterations=2), gt))
        pairs.append((np.roll(gt, (2, -3), axis=(0, 1)), gt))
        pairs.append((masks[i + 6], gt))
    return pairs


# -- overlap, hand computed -------------------------------------------------------------


def test_dice_iou_vs_of_two_known_rectangles():
    a = np.zeros((30, 40), bool)
    b = np.zeros((30, 40), bool)
    a[0:10, 0:20] = True  # 200 px
    b[5:15, 10:30] = True  # 200 px, overlap rows 5-9 x cols 10-19 = 50 px
    assert dice(a, b) == pytest.approx(2 * 50 / 400)
    assert iou(a, b) == pytest.approx(50 / 350)
    assert volume_similarity(a, b) == pytest.approx(1.0)
    c = np.zeros((30, 40), bool)
    c[0:10, 0:5] = True  # 50 px inside a
    assert dice(c, a) == pytest.approx(100 / 250)
    assert iou(c, a) == pytest.approx(50 / 200)
    assert volume_similarity(c, a) == pytest.approx(1 - 150 / 250)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("axis", [0, 1])
def test_square_offset_by_k_has_hausdorff_k(k, axis):
    a = _square()
    b = np.roll(a, k, axis=axis)
    m = evaluate_case(b, a)
    assert m["hd"] == pytest.approx(k)
    assert m["centre_error"] == pytest.approx(k)
    assert m["dice"] == pytest.approx((10 - k) / 10)
    assert m["iou"] == pytest.approx(10 * (10 - k) / (10 * (10 + k)))
    assert m["vs"] == 1.0
    assert m["perimeter_error"] == pytest.approx(0.0)


def test_one_pixel_shift_of_a_square_by_hand():
    # n x n square moved one row: per direction, the n pixels of the leading edge and
    # the n - 2 inner pixels of the trailing edge are 1 px away, the other 2n - 2
    # surface pixels lie on the other surface: mean 0.5, 95th percentile 1.
    n = 10
    a = _square(side=n)
    m = evaluate_case(np.roll(a, 1, axis=0), a)
    assert m["hd"] == 1.0
    assert m["hd95"] == 1.0
    assert m["avd"] == pytest.approx(0.5)


def test_diagonal_offset_and_centre_error():
    a = _square()
    b = np.roll(a, (3, 4), axis=(0, 1))
    m = evaluate_case(b, a)
    assert m["hd"] == pytest.approx(5.0)
    assert m["centre_error"] == pytest.approx(5.0)


def test_disc_inside_disc_distances():
    yy, xx = np.mgrid[:81, :81]
    r2 = (yy - 40) ** 2 + (xx - 40) ** 2
    big, small = r2 <= 30 ** 2, r2 <= 20 ** 2
    m = evaluate_case(small, big)
    # Concentric circles 10 px apart: every distance is about 10 (pixel rounding).
    assert m["hd"] == pytest.approx(10, abs=1.0)
    assert m["avd"] == pytest.approx(10, abs=0.6)
    assert m["centre_error"] == pytest.approx(0.0, abs=1e-9)
    ref = _reference(small, big)
    for key in ("hd", "hd95", "avd"):
        assert m[key] == pytest.approx(ref[key], abs=1e-9)


def test_surface_distances_match_brute_force_on_random_blobs():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = ndimage.binary_opening(rng.random((48, 52)) > 0.55, iterations=1)
        b = ndimage.binary_opening(rng.random((48, 52)) > 0.55, iterations=1)
        d_ab, d_ba = surface_distances(a, b, spacing=(1.5, 0.6))
        r_ab, r_ba = _reference_distances(a, b, spacing=(1.5, 0.6))
        np.testing.assert_allclose(np.sort(d_ab), np.sort(r_ab), atol=1e-9)
        np.testing.assert_allclose(np.sort(d_ba), np.sort(r_ba), atol=1e-9)


def test_lesion_touching_the_image_edge():
    a = np.zeros((20, 20), bool)
    a[0:8, 0:8] = True
    b = np.zeros((20, 20), bool)
    b[0:8, 2:10] = True
    m = evaluate_case(b, a)
    assert m["hd"] == pytest.approx(_reference(b, a)["hd"])
    assert m["hd"] == pytest.approx(2.0)
    assert m["perimeter_pred"] == pytest.approx(m["perimeter_gt"])


# -- spacing ------------------------------------------------------------------------------


def test_anisotropic_spacing_scales_each_axis():
    a = _square()
    sp = (2.5, 0.5)
    assert evaluate_case(np.roll(a, 2, axis=0), a, sp)["hd"] == pytest.approx(5.0)
    assert evaluate_case(np.roll(a, 2, axis=1), a, sp)["hd"] == pytest.approx(1.0)
    assert centre_error(np.roll(a, (2, 2), axis=(0, 1)), a, sp) == pytest.approx(math.hypot(5, 1))
    m = evaluate_case(np.roll(a, (1, 3), axis=(0, 1)), a, sp)
    ref = _reference(np.roll(a, (1, 3), axis=(0, 1)), a, sp)
    for key in ("hd", "hd95", "avd"):
        assert m[key] == pytest.approx(ref[key], abs=1e-9)


def test_perimeter_of_a_circle_in_mm_on_an_anisotropic_grid():
    # A 30 mm radius circle sampled on 0.5 x 1.2 mm pixels (an ellipse in pixels).
    radius = 30.0
    sp = (0.5, 1.2)
    yy, xx = np.mgrid[:160, :70]
    circle = ((yy - 80) * sp[0]) ** 2 + ((xx - 35) * sp[1]) ** 2 <= radius ** 2
    assert perimeter(circle, sp) == pytest.approx(2 * math.pi * radius, rel=0.03)
    # In pixels the same mask is an ellipse with semi-axes 60 and 25 px (Ramanujan).
    a, b = radius / sp[0], radius / sp[1]
    h = ((a - b) / (a + b)) ** 2
    ellipse = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
    assert perimeter(circle) == pytest.approx(ellipse, rel=0.03)


def test_perimeter_matches_skimage_crofton_on_real_masks(isic_masks):
    from skimage.measure import perimeter_crofton

    for m in isic_masks[:6]:
        assert perimeter(m) == pytest.approx(perimeter_crofton(np.pad(m, 1), directions=4), rel=1e-9)


def test_perimeter_error_is_relative_to_ground_truth():
    yy, xx = np.mgrid[:101, :101]
    r2 = (yy - 50) ** 2 + (xx - 50) ** 2
    big, small = r2 <= 40 ** 2, r2 <= 20 ** 2
    err = perimeter_error(small, big)
    assert err == pytest.approx(abs(perimeter(small) - perimeter(big)) / perimeter(big))
    assert err == pytest.approx(0.5, abs=0.02)  # half the radius, half the perimeter


# -- medpy agreement on real masks ---------------------------------------------------------


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3)])
def test_agrees_with_medpy_on_real_masks(isic_masks, spacing):
    mb = pytest.importorskip("medpy.metric.binary")
    for pred, gt in _real_pairs(isic_masks):
        m = evaluate_case(pred, gt, spacing)
        assert m["dice"] == pytest.approx(mb.dc(pred, gt), abs=1e-12)
        assert m["iou"] == pytest.approx(mb.jc(pred, gt), abs=1e-12)
        assert m["hd"] == pytest.approx(mb.hd(pred, gt, voxelspacing=spacing), abs=1e-9)
        # Average Hausdorff distance = mean of the two directed means (medpy.asd);
        # medpy 0.5's assd pools both directions instead, so it is not compared.
        avd = (mb.asd(pred, gt, voxelspacing=spacing) + mb.asd(gt, pred, voxelspacing=spacing)) / 2
        assert m["avd"] == pytest.approx(avd, abs=1e-9)
        # HD95: ours is the max of the directed 95th percentiles (independent check by
        # nearest-neighbour search); medpy's percentile of the pooled distances lies
        # between the directed ones (up to percentile interpolation), so it is not larger.
        assert m["hd95"] == pytest.approx(_reference(pred, gt, spacing)["hd95"], abs=1e-9)
        assert m["hd95"] >= mb.hd95(pred, gt, voxelspacing=spacing) - 0.1


def test_3d_agrees_with_medpy_on_real_ct_labels():
    mb = pytest.importorskip("medpy.metric.binary")
    if not LITS_LABELS.is_file():
        pytest.skip(f"LiTS labels not found at {LITS_LABELS}")
    import nibabel as nib

    labels = np.asarray(nib.load(str(LITS_LABELS)).dataobj)
    tumour = labels == 2
    assert tumour.any()
    # Crop around a mid-sized tumour (keeps the test fast; other tumours that reach
    # into the box stay in) and compare against perturbed copies.
    lab, _ = ndimage.label(tumour)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    k = int(np.argmin(np.where((sizes >= 1000) & (sizes <= 20000), sizes, 10**9)))
    box = ndimage.find_objects(lab)[k - 1]
    box = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box)
    gt = tumour[box]
    spacing = (2.5, 0.8, 0.8)
    for pred in (ndimage.binary_dilation(gt), np.roll(gt, 1, axis=0), ndimage.binary_erosion(gt)):
        m = evaluate_case(pred, gt, spacing)
        assert m["dice"] == pytest.approx(mb.dc(pred, gt), abs=1e-12)
        assert m["hd"] == pytest.approx(mb.hd(pred, gt, voxelspacing=spacing), abs=1e-9)
        avd = (mb.asd(pred, gt, voxelspacing=spacing) + mb.asd(gt, pred, voxelspacing=spacing)) / 2
        assert m["avd"] == pytest.approx(avd, abs=1e-9)
        assert m["hd95"] == pytest.approx(_reference(pred, gt, spacing)["hd95"], abs=1e-9)


def test_3d_cube_shifted_along_z_in_mm():
    a = np.zeros((12, 20, 20), bool)
    a[3:8, 5:15, 5:15] = True
    b = np.roll(a, 2, axis=0)
    m = evaluate_case(b, a, spacing=(2.5, 0.7, 0.7))
    assert m["hd"] == pytest.approx(5.0)
    assert m["centre_error"] == pytest.approx(5.0)
    assert m["dice"] == pytest.approx(2 * 3 / 10)
    # 3D perimeter: the sum over slices of in-plane perimeters.
    assert perimeter(a, (2.5, 0.7, 0.7)) == pytest.approx(5 * perimeter(a[3], (0.7, 0.7)))


# -- conventions and bad input -------------------------------------------------------------


def test_both_empty():
    z = np.zeros((16, 24), bool)
    m = evaluate_case(z, z, spacing=(0.5, 0.5))
    assert set(m) == set(METRIC_KEYS)
    assert m["dice"] == m["iou"] == m["vs"] == 1.0
    assert m["hd"] == m["hd95"] == m["avd"] == m["centre_error"] == 0.0
    assert m["perimeter_error"] == 0.0


@pytest.mark.parametrize("spacing", [None, (2.0, 0.5)])
def test_exactly_one_empty_gives_the_image_diagonal(spacing):
    z = np.zeros((30, 40), bool)
    a = _square(n=40)[:30]
    diag = math.hypot(30, 40) if spacing is None else math.hypot(60, 20)
    assert image_diagonal(z.shape, spacing) == pytest.approx(diag)
    for pred, gt in ((z, a), (a, z)):
        m = evaluate_case(pred, gt, spacing)
        assert m["dice"] == m["iou"] == m["vs"] == 0.0
        for key in ("hd", "hd95", "avd", "centre_error"):
            assert m[key] == pytest.approx(diag)
        assert m["perimeter_error"] == 1.0
        assert all(math.isfinite(v) for v in m.values())


def test_empty_3d_diagonal():
    z = np.zeros((4, 10, 10), bool)
    a = z.copy()
    a[1, 2:5, 2:5] = True
    assert evaluate_case(a, z, (3.0, 1.0, 1.0))["hd"] == pytest.approx(math.sqrt(12 ** 2 + 200))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(10, 13\)"):
        evaluate_case(np.zeros((10, 12)), np.zeros((10, 13)))
    with pytest.raises(ValueError, match="different shapes"):
        dice(np.zeros((4, 4)), np.zeros((5, 4)))


def test_bad_spacing_and_dimensions():
    a = _square()
    with pytest.raises(ValueError, match="3 values but the masks are 2D"):
        evaluate_case(a, a, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        evaluate_case(a, a, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="positive"):
        evaluate_case(a, a, spacing=(1.0, float("nan")))
    with pytest.raises(ValueError, match="2D .* or 3D"):
        evaluate_case(np.zeros(5), np.zeros(5))


def test_nan_pixels_count_as_background():
    a = _square().astype(float)
    b = np.roll(a, 2, axis=1)
    a_nan = a.copy()
    a_nan[0:3, :] = np.nan  # NaN outside the lesion
    a_nan[7, 7] = np.nan  # and one inside: a hole
    a_hole = a.astype(bool)
    a_hole[7, 7] = False
    m = evaluate_case(b, a_nan)
    assert m == evaluate_case(b.astype(bool), a_hole)
    assert all(math.isfinite(v) for v in m.values())


def test_integer_and_255_masks_equal_bool():
    a = _square()
    b = np.roll(a, 1, axis=1)
    assert evaluate_case(b.astype(np.uint8) * 255, a.astype(np.int32)) == evaluate_case(b, a)


# -- summary ------------------------------------------------------------------------------


def test_summarize_mean_and_sample_sd_ignoring_nan_and_names():
    cases = [
        {"case": "a", "dice": 0.9, "hd": 2.0},
        {"case": "b", "dice": 0.5, "hd": float("nan")},
        {"case": "c", "dice": 0.7, "hd": 4.0},
    ]
    mean, sd = summarize(cases)
    assert "case" not in mean
    assert mean["dice"] == pytest.approx(statistics.mean([0.9, 0.5, 0.7]))
    assert sd["dice"] == pytest.approx(statistics.stdev([0.9, 0.5, 0.7]))
    assert mean["hd"] == pytest.approx(3.0)
    assert sd["hd"] == pytest.approx(statistics.stdev([2.0, 4.0]))


def test_summarize_single_and_no_values():
    mean, sd = summarize([{"dice": 0.8, "hd": float("nan")}])
    assert mean["dice"] == 0.8 and sd["dice"] == 0.0
    assert math.isnan(mean["hd"]) and math.isnan(sd["hd"])
    assert summarize([]) == ({}, {})
