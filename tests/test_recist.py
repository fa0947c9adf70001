"""RECIST geometry: hand-computed cases, and derivation from real masks checked against
independent implementations (scikit-image's Feret diameter, brute force)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_recist_seg.recist import (
    FEATURE_NAMES,
    Recist,
    RecistError,
    recist_from_mask,
    shape_features,
    snap,
)

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC_MASKS = SHARED_DATA / "isic2017_train256" / "masks"
LITS_LABELS = SHARED_DATA / "lits_case117" / "labels.nii.gz"


def _plain() -> Recist:
    # Long axis along row 10 from col 10 to 50; short axis vertical at col 30.
    return Recist(long_axis=[[10, 10], [10, 50]], short_axis=[[0, 30], [20, 30]])


# -- lengths, crossing, angle ----------------------------------------------------------


def test_lengths_in_pixels():
    r = Recist([[0, 0], [3, 4]], [[0, 4], [3, 0]])
    assert r.long_length == pytest.approx(5.0)
    assert r.short_length == pytest.approx(5.0)
    assert r.long_length_mm is None and r.short_length_mm is None


def test_lengths_in_mm_with_anisotropic_spacing():
    # (row_mm, col_mm) = (2, 0.5): a 3-row, 4-col step is 6 mm down and 2 mm across.
    r = Recist([[0, 0], [3, 4]], [[0, 4], [3, 0]], spacing=(2.0, 0.5))
    assert r.long_length_mm == pytest.approx(math.sqrt(6**2 + 2**2))
    # A purely horizontal axis only sees the column spacing, a vertical one the row spacing.
    r2 = Recist([[5, 0], [5, 40]], [[0, 20], [8, 20]], spacing=(2.0, 0.5))
    assert r2.long_length_mm == pytest.approx(20.0)
    assert r2.short_length_mm == pytest.approx(16.0)
    assert r2.spacing == (2.0, 0.5)
    assert r2.with_spacing(None).long_length_mm is None


def test_crossing_bisecting_and_off_centre():
    r = _plain()
    assert r.crossing_parameters() == pytest.approx((0.5, 0.5))
    np.testing.assert_allclose(r.crossing, [10, 30])
    # Short axis at col 20 from row 5 to 25: meets the long axis a quarter along each.
    r2 = Recist([[10, 10], [10, 50]], [[5, 20], [25, 20]])
    assert r2.crossing_parameters() == pytest.approx((0.25, 0.25))
    np.testing.assert_allclose(r2.crossing, [10, 20])
    # Centre is the bounding-box centre of the endpoints, not the crossing.
    np.testing.assert_allclose(r2.centre, [15, 30])
    lo, hi = r2.bbox()
    np.testing.assert_allclose(lo, [5, 10])
    np.testing.assert_allclose(hi, [25, 50])


def test_crossing_of_tilted_axes():
    # Long axis on the diagonal r = c, short from (0, 8) to (10, 2) meets it at (5, 5).
    r = Recist([[0, 0], [10, 10]], [[0, 8], [10, 2]])
    np.testing.assert_allclose(r.crossing, [5, 5])
    assert r.crossing_parameters() == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize(
    "long_axis, expected_deg",
    [
        ([[0, 0], [0, 10]], 0.0),
        ([[0, 10], [0, 0]], 0.0),  # an axis has no direction
        ([[0, 0], [10, 10]], 45.0),  # rows grow downwards: down-right is +45
        ([[10, 0], [0, 10]], -45.0),
        ([[0, 0], [10, 0]], 90.0),
        ([[10, 0], [0, 0]], 90.0),  # -90 folds onto +90
        ([[0, 0], [10, 10 * math.sqrt(3)]], 30.0),
    ],
)
def test_angle(long_axis, expected_deg):
    r = Recist(long_axis, [[0, 0], [1, 1]])
    assert math.degrees(r.angle) == pytest.approx(expected_deg)
    assert -math.pi / 2 < r.angle <= math.pi / 2


# -- validation --------------------------------------------------------------------------


def test_validate_returns_valid_measurement():
    r = _plain()
    assert r.validate((64, 64)) is r
    assert r.validate() is r
    # RGB shapes: the channel axis is ignored.
    assert r.validate((64, 64, 3)) is r


@pytest.mark.parametrize(
    "long_axis, short_axis, message",
    [
        ([[0, 0], [0, np.nan]], [[-1, 0], [1, 0]], "NaN"),
        ([[0, np.inf], [0, 10]], [[-1, 5], [1, 5]], "NaN or infinity"),
        ([[5, 5], [5, 5.5]], [[0, 5], [10, 5]], "long axis has (near) zero length"),
        ([[0, 0], [0, 10]], [[0, 5], [0.2, 5]], "short axis has (near) zero length"),
        ([[0, 0], [0, 10]], [[1, 0], [1, 8]], "parallel"),
        # 5 degrees off parallel is still too close.
        ([[0, 0], [0, 10]], [[0, 0], [10 * math.sin(math.radians(5)), 10]], "parallel"),
        # Perpendicular, but the short axis ends 5 px before reaching the long one.
        ([[0, 0], [0, 20]], [[5, 10], [15, 10]], "do not cross"),
        # Crosses the long axis' line beyond its end.
        ([[0, 0], [0, 20]], [[-5, 30], [5, 30]], "do not cross"),
    ],
)
def test_validate_specific_errors(long_axis, short_axis, message):
    r = Recist(long_axis, short_axis)
    with pytest.raises(RecistError, match=message.replace("(", r"\(").replace(")", r"\)")):
        r.validate()


def test_validate_tolerates_axes_ending_slightly_short():
    # The short axis stops 0.3 px (3% of its length) before the long axis.
    r = Recist([[0, 0], [0, 20]], [[0.3, 10], [10.3, 10]])
    assert r.validate() is r
    with pytest.raises(RecistError, match="do not cross"):
        r.validate(tolerance=0.0)


def test_validate_outside_image():
    r = _plain()  # cols reach 50, rows reach 20
    with pytest.raises(RecistError, match="outside the 64x40 image"):
        r.validate((64, 40))
    with pytest.raises(RecistError, match="outside the 20x64 image"):
        r.validate((20, 64))  # row 20 is past the last row (19)
    assert r.validate((21, 51)) is r
    # Half a pixel of slack: the pixel's edge is still inside.
    Recist([[0, -0.5], [0, 10]], [[-0.5, 5], [5, 5]]).validate((10, 11))
    neg = Recist([[0, -1], [0, 10]], [[-3, 5], [5, 5]])
    with pytest.raises(RecistError, match="outside"):
        neg.validate((64, 64))


def test_validate_slice_outside_volume():
    r = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]], slice_index=5)
    assert r.validate((6, 64, 64)) is r
    with pytest.raises(RecistError, match=r"slice 5 is outside the volume \(0..4\)"):
        r.validate((5, 64, 64))
    neg = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]], slice_index=-1)
    with pytest.raises(RecistError, match="slice -1 is outside"):
        neg.validate((5, 64, 64))
    # In-plane checks use the last two dimensions of a volume.
    with pytest.raises(RecistError, match="outside the 64x40 image"):
        r.validate((6, 64, 40))
    # A volume needs a slice; its first axis is not a row axis.
    with pytest.raises(RecistError, match="volume but the RECIST has no slice index"):
        _plain().validate((6, 64, 64))


def test_shape_errors():
    with pytest.raises(RecistError, match="long axis must be two"):
        Recist([[0, 0, 0], [1, 1, 1]], [[0, 0], [1, 1]])
    with pytest.raises(RecistError, match="short axis must be two"):
        Recist([[0, 0], [1, 1]], [1, 2, 3, 4])


# -- snapping ----------------------------------------------------------------------------


def test_snap_makes_short_axis_perpendicular_through_crossing():
    # Drawn short axis from (-3, 4) to (2, 6) crosses row 0 three fifths along: col 5.2.
    r = snap(Recist([[0, 0], [0, 10]], [[-3, 4], [2, 6]]))
    np.testing.assert_allclose(r.long_axis, [[0, 0], [0, 10]])
    np.testing.assert_allclose(r.short_axis, [[-3, 5.2], [2, 5.2]])
    # Each endpoint keeps its reach on its side of the long axis: 3 up, 2 down.
    assert r.short_length == pytest.approx(5.0)


def test_snap_tilted_keeps_reach():
    # Long axis on the diagonal; short axis (0, 8)-(10, 2) crosses it at (5, 5) but is
    # not perpendicular. Its reach along the normal (-1, 1)/sqrt2 is +-8/sqrt2.
    r = snap(Recist([[0, 0], [10, 10]], [[0, 8], [10, 2]]))
    np.testing.assert_allclose(r.short_axis, [[1, 9], [9, 1]], atol=1e-12)
    d_long = r.long_axis[1] - r.long_axis[0]
    d_short = r.short_axis[1] - r.short_axis[0]
    assert float(d_long @ d_short) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(r.crossing, [5, 5])
    assert r.short_length == pytest.approx(8 * math.sqrt(2))


def test_snap_swaps_when_short_is_longer():
    r = snap(Recist([[0, 0], [0, 4]], [[-5, 2], [5, 2]]))
    np.testing.assert_allclose(r.long_axis, [[-5, 2], [5, 2]])
    np.testing.assert_allclose(r.short_axis, [[0, 0], [0, 4]])
    assert r.long_length == pytest.approx(10.0)
    assert r.short_length == pytest.approx(4.0)


def test_snap_keeps_slice_and_spacing_and_is_idempotent():
    r0 = Recist([[0, 0], [0, 10]], [[-3, 4], [2, 6]], slice_index=7, spacing=(0.7, 0.8))
    r = snap(r0)
    assert r.slice_index == 7 and r.spacing == (0.7, 0.8)
    r2 = snap(r)
    np.testing.assert_allclose(r2.long_axis, r.long_axis)
    np.testing.assert_allclose(r2.short_axis, r.short_axis)


@pytest.mark.parametrize(
    "long_axis, short_axis, message",
    [
        ([[0, 0], [0, 10]], [[1, 0], [1, 8]], "parallel"),
        ([[0, 0], [0, 20]], [[5, 10], [15, 10]], "do not cross"),
        ([[0, 0], [0, 0]], [[5, 10], [15, 10]], "zero length"),
        ([[0, 0], [0, np.nan]], [[-1, 0], [1, 0]], "NaN"),
    ],
)
def test_snap_refuses_degenerate(long_axis, short_axis, message):
    with pytest.raises(RecistError, match=message):
        snap(Recist(long_axis, short_axis))


# -- conversions ---------------------------------------------------------------------------


def test_deeplesion_round_trip_swaps_x_and_y():
    values = [233.5, 95.1, 267.0, 119.9, 255.2, 97.8, 246.3, 114.4]
    r = Recist.from_deeplesion(values, slice_index=43, spacing=(0.8, 0.8))
    # x = col, y = row.
    np.testing.assert_allclose(r.long_axis, [[95.1, 233.5], [119.9, 267.0]])
    np.testing.assert_allclose(r.short_axis, [[97.8, 255.2], [114.4, 246.3]])
    assert r.slice_index == 43 and r.spacing == (0.8, 0.8)
    assert r.to_deeplesion() == pytest.approx(values)
    assert _plain().to_deeplesion() == [10.0, 10.0, 50.0, 10.0, 30.0, 0.0, 30.0, 20.0]


def test_deeplesion_needs_eight_numbers():
    with pytest.raises(RecistError, match="8 numbers, got 7"):
        Recist.from_deeplesion([1, 2, 3, 4, 5, 6, 7])


def test_from_lines_2d_longer_line_is_long_axis():
    short = np.array([[0, 30], [20, 30]])
    long = np.array([[10, 10], [10, 50]])
    r = Recist.from_lines(short, long, spacing=(1.0, 2.0))
    np.testing.assert_allclose(r.long_axis, long)
    np.testing.assert_allclose(r.short_axis, short)
    assert r.slice_index is None and r.spacing == (1.0, 2.0)
    la, lb = r.to_lines()
    np.testing.assert_allclose(la, long)
    np.testing.assert_allclose(lb, short)
    # to_lines returns copies: editing them does not change the measurement.
    la[0, 0] = 99
    assert r.long_axis[0, 0] == 10


def test_from_lines_3d_round_trip():
    long = np.array([[4, 10, 10], [4, 10, 50]])
    short = np.array([[4, 0, 30], [4, 20, 30]])
    r = Recist.from_lines(long, short)
    assert r.slice_index == 4
    np.testing.assert_allclose(r.long_axis, long[:, 1:])
    la, lb = r.to_lines(ndim=3)
    np.testing.assert_allclose(la, long)
    np.testing.assert_allclose(lb, short)
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        r.to_lines(ndim=4)


def test_from_lines_on_different_slices_is_an_error():
    with pytest.raises(RecistError, match="different slices"):
        Recist.from_lines([[4, 10, 10], [4, 10, 50]], [[5, 0, 30], [5, 20, 30]])
    with pytest.raises(RecistError, match="different slices"):
        # A line that itself spans two slices.
        Recist.from_lines([[4, 10, 10], [6, 10, 50]], [[4, 0, 30], [4, 20, 30]])
    with pytest.raises(RecistError, match="expected two lines"):
        Recist.from_lines([[10, 10], [10, 50]], [[4, 0, 30], [4, 20, 30]])


def test_transformed():
    r = _plain().with_spacing((0.5, 0.5))
    t = r.transformed(offset=(10, 20), scale=0.5)
    np.testing.assert_allclose(t.long_axis, [[0, -5], [0, 15]])
    np.testing.assert_allclose(t.short_axis, [[-5, 5], [5, 5]])
    assert t.spacing == (0.5, 0.5)
    t2 = r.transformed(offset=(0, 0), scale=(2, 3))  # anisotropic
    np.testing.assert_allclose(t2.long_axis, [[20, 30], [20, 150]])
    np.testing.assert_allclose(t2.short_axis, [[0, 90], [40, 90]])
    # The original is untouched (frozen dataclass, new arrays).
    np.testing.assert_allclose(r.long_axis, [[10, 10], [10, 50]])


# -- derivation from masks -------------------------------------------------------------------


def test_recist_from_mask_rectangle():
    m = np.zeros((20, 30), bool)
    m[5:10, 3:25] = True  # pixel centres span 4 rows and 21 columns
    r = recist_from_mask(m)
    # The longest diameter is the diagonal between opposite corner pixel centres.
    assert r.long_length == pytest.approx(math.hypot(4, 21))
    corners = {tuple(p) for p in r.long_axis.tolist()}
    assert corners in ({(5.0, 3.0), (9.0, 24.0)}, {(9.0, 3.0), (5.0, 24.0)})
    # Perpendicular to the diagonal the rectangle is 4 * L / 21 wide (to a pixel slab).
    assert r.short_length == pytest.approx(4 * math.hypot(4, 21) / 21, abs=0.15)
    d_long = r.long_axis[1] - r.long_axis[0]
    d_short = r.short_axis[1] - r.short_axis[0]
    assert abs(d_long @ d_short) < 1e-9
    r.validate(m.shape)


def test_recist_from_mask_diamond_is_exact():
    # |dr| + |dc| <= 10 around (20, 20): tips 20 px apart both ways.
    rr, cc = np.mgrid[:41, :41]
    m = (abs(rr - 20) + abs(cc - 20)) <= 10
    r = recist_from_mask(m, spacing=(0.5, 0.5), slice_index=3)
    assert r.long_length == pytest.approx(20.0)
    assert r.short_length == pytest.approx(20.0)
    np.testing.assert_allclose(r.crossing, [20, 20])
    assert r.spacing == (0.5, 0.5) and r.slice_index == 3
    assert r.long_length_mm == pytest.approx(10.0)


@pytest.mark.parametrize("radius", [10, 20.5, 40])
def test_recist_from_mask_disc(radius):
    from skimage.draw import disk

    m = np.zeros((100, 100), bool)
    m[disk((50, 50), radius, shape=m.shape)] = True
    r = recist_from_mask(m)
    # Diameters between pixel centres of a digital disc: just under 2r.
    assert 2 * radius - 1.5 <= r.long_length <= 2 * radius
    assert 2 * radius - 2.5 <= r.short_length <= r.long_length
    np.testing.assert_allclose(r.crossing, [50, 50], atol=1.5)


@pytest.mark.parametrize("rotation", [0.0, 0.4, 1.0, -0.7, 2.0])
def test_recist_from_mask_rotated_ellipse(rotation):
    from skimage.draw import ellipse

    m = np.zeros((200, 200), bool)
    # Semi-axes 60 (along (cos rot, sin rot) in (row, col)) and 25.
    m[ellipse(100, 100, 60, 25, shape=m.shape, rotation=rotation)] = True
    r = recist_from_mask(m)
    assert r.long_length == pytest.approx(120, abs=2.5)
    assert r.short_length == pytest.approx(50, abs=2.5)
    truth = math.atan2(math.cos(rotation), math.sin(rotation))
    diff = (r.angle - truth + math.pi / 2) % math.pi - math.pi / 2
    assert abs(math.degrees(diff)) < 5
    np.testing.assert_allclose(r.crossing, [100, 100], atol=6)


def test_recist_from_mask_picks_largest_or_all_components():
    m = np.zeros((60, 60), bool)
    m[5:15, 5:35] = True  # 300 px
    m[30:50, 30:40] = True  # 200 px
    m[55:57, 2:4] = True  # 4 px, a small blob
    m[58, 50] = True  # a stray pixel below min_area
    r = recist_from_mask(m)
    assert r.long_length == pytest.approx(math.hypot(9, 29))
    rs = recist_from_mask(m, per_component=True)
    assert [round(x.long_length, 3) for x in rs] == [
        round(math.hypot(9, 29), 3),
        round(math.hypot(19, 9), 3),
        round(math.hypot(1, 1), 3),
    ]
    assert len(recist_from_mask(m, per_component=True, min_area=5)) == 2


def test_recist_from_mask_short_axis_crosses_the_long_axis_of_a_crescent():
    # Upper half of a ring, 2 px thick at its tips and 16 px at the top: the longest
    # diameter is the chord between the tips, and the widest perpendicular chord (at
    # the top) lies beside it. RECIST's short axis must cross the long one.
    rr, cc = np.mgrid[:50, :80].astype(float)
    y, x = 40 - rr, cc - 40
    theta = np.arctan2(y, x)
    inner = 30 - (2 + 14 * np.sin(np.clip(theta, 0, np.pi)))
    m = (y >= 0) & (np.hypot(x, y) <= 30) & (np.hypot(x, y) >= inner)
    r = recist_from_mask(m)
    np.testing.assert_allclose(r.long_axis, [[40, 10], [40, 70]])
    r.validate(m.shape)
    t, u = r.crossing_parameters()
    assert 0 <= t <= 1 and 0 <= u <= 1
    assert 2 <= r.short_length < 16


def test_recist_from_mask_errors():
    with pytest.raises(RecistError, match="empty"):
        recist_from_mask(np.zeros((10, 10), bool))
    one = np.zeros((10, 10), bool)
    one[4, 4] = True
    with pytest.raises(RecistError, match="no component of at least 4 pixels"):
        recist_from_mask(one)
    with pytest.raises(RecistError, match="single pixel"):
        recist_from_mask(one, min_area=1)
    line = np.zeros((10, 10), bool)
    line[4, 1:9] = True
    with pytest.raises(RecistError, match="thin line"):
        recist_from_mask(line)
    # A two-pixel-wide diagonal streak is under a pixel wide across: a line too (a RECIST
    # from a mask must pass its own validation).
    streak = np.zeros((30, 30), bool)
    for i in range(20):
        streak[5 + i, 5 + i] = streak[5 + i, 6 + i] = True
    with pytest.raises(RecistError, match="thin line"):
        recist_from_mask(streak)
    # A line next to a real lesion is skipped, not fatal, per component.
    line[6:9, 1:9] = True
    assert len(recist_from_mask(line, per_component=True)) == 1
    with pytest.raises(RecistError, match="2D"):
        recist_from_mask(np.ones((3, 10, 10), bool))


def test_recist_from_mask_accepts_uint8_0_255():
    m = np.zeros((30, 30), np.uint8)
    m[10:20, 5:25] = 255
    r = recist_from_mask(m)
    assert r.long_length == pytest.approx(math.hypot(9, 19))


def _brute_force_max_diameter(comp: np.ndarray) -> float:
    """Largest distance between two pixel centres of ``comp``.

    Within one row the distance to any fixed point is convex along the row, so the
    farthest pair is always made of row-extreme pixels: checking all pairs of the first
    and last pixel of every row is exhaustive.
    """
    pts = []
    for row in np.flatnonzero(comp.any(axis=1)):
        cols = np.flatnonzero(comp[row])
        pts += [(row, cols[0]), (row, cols[-1])]
    p = np.asarray(pts, float)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.max()))


def test_long_axis_matches_independent_implementations_on_isic_masks():
    from skimage.io import imread
    from skimage.measure import label, regionprops

    files = sorted(ISIC_MASKS.glob("*.png"))
    if len(files) < 50:
        pytest.skip(f"ISIC masks not found at {ISIC_MASKS}")
    for f in files[:: len(files) // 50][:50]:
        m = imread(f) > 0
        lab = label(m, connectivity=2)
        largest = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        r = recist_from_mask(m)
        brute = _brute_force_max_diameter(largest)
        assert r.long_length == pytest.approx(brute, rel=0.02), f.name
        # skimage measures between pixel edges (about one pixel more than centres).
        feret = regionprops(largest.astype(np.uint8))[0].feret_diameter_max
        assert r.long_length == pytest.approx(feret - 1.0, rel=0.02), f.name
        # The short axis is perpendicular, no longer than the long one, and inside the
        # image; both lie on the lesion.
        assert r.short_length <= r.long_length + 1e-9
        d_long = r.long_axis[1] - r.long_axis[0]
        d_short = r.short_axis[1] - r.short_axis[0]
        assert abs(d_long @ d_short) / (r.long_length * r.short_length) < 1e-9
        r.validate(m.shape)


def test_per_component_on_ct_slice():
    nib = pytest.importorskip("nibabel")
    if not LITS_LABELS.is_file():
        pytest.skip(f"LiTS labels not found at {LITS_LABELS}")
    labels = np.asarray(nib.load(str(LITS_LABELS)).dataobj)
    assert labels.shape == (128, 128, 128)
    tumour = labels == 2
    # The volume's last axis is axial (the vertebral bodies are round in those slices).
    counts = [ndimage.label(tumour[:, :, k], np.ones((3, 3)))[1] for k in range(128)]
    k = int(np.argmax(counts))
    plane = tumour[:, :, k]
    comp, n = ndimage.label(plane, np.ones((3, 3)))
    areas = np.bincount(comp.ravel())[1:]
    big = {i + 1 for i in range(n) if areas[i] >= 4}
    assert n >= 10 and len(big) >= 5  # a real multi-lesion slice
    rs = recist_from_mask(plane, per_component=True, slice_index=k)
    assert len(rs) == len(big)
    owners = []
    for r in rs:
        assert r.slice_index == k
        r.validate(plane.shape)
        # Each endpoint is within half a pixel diagonal of a pixel of one component.
        owner = set()
        for p in r.endpoints:
            rows, cols = np.nonzero(comp > 0)
            d = np.hypot(rows - p[0], cols - p[1])
            near = d <= math.sqrt(0.5) + 1e-9
            assert near.any(), f"endpoint {p} is off the tumour"
            owner |= set(comp[rows[near], cols[near]].tolist())
        assert len(owner) == 1, f"{r} touches components {owner}"
        owners.append(owner.pop())
    assert set(owners) == big  # one RECIST per component, none twice


def test_every_recist_from_ct_slices_validates():
    nib = pytest.importorskip("nibabel")
    if not LITS_LABELS.is_file():
        pytest.skip(f"LiTS labels not found at {LITS_LABELS}")
    tumour = np.asarray(nib.load(str(LITS_LABELS)).dataobj) == 2
    n = 0
    for k in np.flatnonzero(tumour.any(axis=(0, 1))):
        try:
            rs = recist_from_mask(tumour[:, :, k], per_component=True, slice_index=int(k))
        except RecistError:
            continue  # only specks on this slice
        for r in rs:
            r.validate((128, 128, 128))
            assert r.short_length <= r.long_length + 1e-9
            n += 1
    assert n > 100


# -- clustering features ----------------------------------------------------------------------


def test_shape_features_hand_computed():
    f = dict(zip(FEATURE_NAMES, shape_features(Recist([[0, 0], [0, 40]], [[-10, 10], [10, 10]]))))
    assert f["log_long"] == pytest.approx(math.log(40))
    assert f["log_short"] == pytest.approx(math.log(20))
    assert f["aspect"] == pytest.approx(0.5)
    assert f["crossing_offset_long"] == pytest.approx(0.25)  # crosses at t = 0.25
    assert f["crossing_offset_short"] == pytest.approx(0.0)
    assert f["cos_2angle"] == pytest.approx(1.0)
    assert f["sin_2angle"] == pytest.approx(0.0, abs=1e-12)


def test_shape_features_invariances():
    r = snap(Recist([[3, 7], [30, 40]], [[25, 10], [8, 30]]))
    f = shape_features(r)
    assert f.shape == (len(FEATURE_NAMES),)
    # Translation changes nothing.
    np.testing.assert_allclose(shape_features(r.transformed((-100, 250), 1.0)), f, atol=1e-12)
    # Swapping the endpoints of an axis (an axis has no direction) changes nothing.
    flipped = Recist(r.long_axis[::-1], r.short_axis[::-1])
    np.testing.assert_allclose(shape_features(flipped), f, atol=1e-12)
    # Scaling only shifts the log lengths.
    g = shape_features(r.transformed((0, 0), 2.0))
    np.testing.assert_allclose(g[:2], f[:2] + math.log(2))
    np.testing.assert_allclose(g[2:], f[2:], atol=1e-12)


def test_shape_features_in_mm():
    r = Recist([[0, 0], [0, 40]], [[-10, 20], [10, 20]], spacing=(1.0, 0.5))
    f = shape_features(r, use_mm=True)
    assert f[0] == pytest.approx(math.log(20))
    assert f[1] == pytest.approx(math.log(20))
    assert f[2] == pytest.approx(1.0)
    assert shape_features(r)[2] == pytest.approx(0.5)
