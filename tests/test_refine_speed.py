"""The fast ``"recist"`` refinement and mask measurement choose exactly what the plain
definitions choose, on the default model's probabilities of real ISIC images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from napari_recist_seg import recist_geometry
from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor
from napari_recist_seg.recist import recist_from_mask
from napari_recist_seg.refine import _MEASURE_SIDE, THRESHOLDS, _keep_at, recist_error, refine_mask


def _reference_recist_choice(prob, r, threshold=0.5):
    """The ``"recist"`` rule as first written: every threshold's kept component
    measured by ``recist_from_mask`` (through ``recist_error``) on the shrunk map."""
    f = min(1.0, _MEASURE_SIDE / max(prob.shape))
    small, r_small = prob, r
    if f < 1.0:
        size = (max(2, int(round(prob.shape[1] * f))), max(2, int(round(prob.shape[0] * f))))
        small = cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)
        r_small = r.transformed((0.0, 0.0), (size[1] / prob.shape[0], size[0] / prob.shape[1]))
    best, best_err = prob > threshold, recist_error(_keep_at(small > threshold, r_small), r_small)
    for t in THRESHOLDS:
        if (small > t).any():
            err = recist_error(_keep_at(small > t, r_small), r_small)
            if err < best_err - 1e-9:
                best, best_err = prob > t, err
    return best


def _reference_feret_pair(points):
    """``_max_feret_pair`` as first written: all pairs as one (N, N, 2) array."""
    diff = points[:, None, :] - points[None, :, :]
    d2 = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    a, b = points[i], points[j]
    if (b[0], b[1]) < (a[0], a[1]):
        a, b = b, a
    return a, b


def _all_pixel_axes(comp, offset):
    """``_component_axes`` measuring the slabs on every pixel (the definition)."""
    a, b = _reference_feret_pair(recist_geometry._hull_points(comp))
    length = float(np.linalg.norm(b - a))
    if length < recist_geometry.MIN_AXIS_LENGTH_PX:
        raise recist_geometry.RecistError("single pixel")
    d = (b - a) / length
    normal = np.array([-d[1], d[0]])
    rows, cols = np.nonzero(comp)
    s = (rows - a[0]) * d[0] + (cols - a[1]) * d[1]
    p = (rows - a[0]) * normal[0] + (cols - a[1]) * normal[1]
    bins = np.round(s).astype(np.int64)
    bin0 = int(bins.min())
    bins -= bin0
    pmin = np.full(bins.max() + 1, np.inf)
    pmax = np.full(bins.max() + 1, -np.inf)
    np.minimum.at(pmin, bins, p)
    np.maximum.at(pmax, bins, p)
    width = pmax - pmin
    width[~np.isfinite(width) | ~((pmin <= 0.5) & (pmax >= -0.5))] = -1
    k = int(np.argmax(width))
    if width[k] < recist_geometry.MIN_AXIS_LENGTH_PX:
        raise recist_geometry.RecistError("thin line")
    base = a + float(np.clip(k + bin0, 0.0, length)) * d
    lo, hi = min(float(pmin[k]), 0.0), max(float(pmax[k]), 0.0)
    short = np.vstack([base + lo * normal, base + hi * normal])
    shift = np.asarray(offset, dtype=float)
    return np.vstack([a, b]) + shift, short + shift


@pytest.fixture(scope="module")
def val_probabilities(isic_dir):
    """(probability, RECIST in crop coordinates) of 40 validation ids of the default
    model, unrefined (the model's own held-out images, never its test ids)."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    from PIL import Image

    predictor = Predictor.load(None, device="cpu")
    predictor.refine = "none"
    stems = json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())["val"][:40]
    pairs = []
    for stem in stems:
        image = np.asarray(Image.open(isic_dir / "images" / f"{stem}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0
        pairs.append((image, [recist_from_mask(gt)]))
    out = []
    for [res] in predictor.segment_many(pairs):
        out.append((res.probability, res.recist.transformed(res.offset, 1.0)))
    return out


def test_fast_recist_refinement_chooses_the_reference_mask(val_probabilities):
    chosen_other = 0
    for prob, r in val_probabilities:
        # The model's map, and a sharper and a flatter one (other choices win there).
        for p in (prob, prob**2, np.sqrt(prob)):
            ref = _reference_recist_choice(p, r)
            assert np.array_equal(refine_mask("recist", p, r), ref)
            chosen_other += not np.array_equal(ref, p > 0.5)
    assert chosen_other >= 20  # the test exercises thresholds other than 0.5


def test_thresholds_whose_long_axis_alone_loses_skip_the_short_axis(val_probabilities, monkeypatch):
    # The error is |L_m - L| / L + |W_m - W| / W: once the long-axis part reaches the best
    # error so far, the short axis cannot make the threshold win and is not measured.
    from napari_recist_seg import refine

    calls = [0]
    real = refine._component_axes

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(refine, "_component_axes", counted)
    distinct = 0
    for prob, r in val_probabilities:
        f = min(1.0, _MEASURE_SIDE / max(prob.shape))
        size = (max(2, int(round(prob.shape[1] * f))), max(2, int(round(prob.shape[0] * f))))
        small = cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR) if f < 1.0 else prob
        distinct += len({int(np.count_nonzero(small > t)) for t in (0.5, *THRESHOLDS)} - {0})
        # (the reference measures through recist_geometry, not refine's name)
        assert np.array_equal(refine_mask("recist", prob, r), _reference_recist_choice(prob, r))
    assert calls[0] <= distinct - len(val_probabilities) // 4  # short axes were skipped


def test_border_pixel_slabs_equal_all_pixel_slabs(val_probabilities):
    rng = np.random.default_rng(0)
    masks = [prob > t for prob, _ in val_probabilities for t in (0.3, 0.6)]
    masks += [rng.random((int(h), int(w))) < 0.6 for h, w in rng.integers(3, 60, (100, 2))]
    compared = 0
    for mask in masks:
        u8 = mask.view(np.uint8)
        if not u8.any():
            continue
        try:
            expected = _all_pixel_axes(u8, (3, 5))
        except recist_geometry.RecistError:
            with pytest.raises(recist_geometry.RecistError):
                recist_geometry._component_axes(u8, (3, 5))
            continue
        got = recist_geometry._component_axes(u8, (3, 5))
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
        compared += 1
    assert compared >= 150


def test_feret_pair_equals_the_all_pairs_definition(val_probabilities):
    rng = np.random.default_rng(2)
    masks = [(prob > t).view(np.uint8) for prob, _ in val_probabilities for t in (0.3, 0.5, 0.8)]
    masks += [(rng.random((int(h), int(w))) < 0.5).view(np.uint8) for h, w in rng.integers(2, 40, (200, 2))]
    compared = 0
    for mask in masks:
        if not mask.any():
            continue
        points = recist_geometry._hull_points(mask)
        got, expected = recist_geometry._max_feret_pair(points), _reference_feret_pair(points)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
        compared += len(points) > 2
    assert compared >= 150


def test_fast_recist_refinement_on_maps_with_holes_and_several_blobs():
    # Smoothed noise: many components, diagonal contacts, holes, crossings outside.
    from napari_recist_seg.recist import Recist

    rng = np.random.default_rng(1)
    chosen_other = 0
    for _ in range(60):
        side = int(rng.integers(40, 220))
        noise = cv2.GaussianBlur(rng.random((side, side)).astype(np.float32), (0, 0), 3)
        prob = np.clip((noise - noise.min()) / np.ptp(noise), 0, 1).astype(np.float32)
        c, half = rng.uniform(0.3, 0.7, 2) * side, rng.uniform(0.1, 0.3) * side
        r = Recist([[c[0], c[1] - half], [c[0], c[1] + half]], [[c[0] - half / 2, c[1]], [c[0] + half / 2, c[1]]])
        ref = _reference_recist_choice(prob, r)
        assert np.array_equal(refine_mask("recist", prob, r), ref)
        chosen_other += not np.array_equal(ref, prob > 0.5)
    assert chosen_other >= 10


def _reference_axis_gap(mask, r):
    """``axis_gap`` as first written: the kept component measured by ``recist_from_mask``."""
    from napari_recist_seg.refine import _MAX_GAP

    f = min(1.0, _MEASURE_SIDE / max(mask.shape))
    small, r_small = mask, r
    if f < 1.0:
        size = (max(2, int(round(mask.shape[1] * f))), max(2, int(round(mask.shape[0] * f))))
        small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
        r_small = r.transformed((0.0, 0.0), (size[1] / mask.shape[0], size[0] / mask.shape[1]))
        f = size[0] / mask.shape[1]
    try:
        m = recist_from_mask(_keep_at(small, r_small))
    except Exception:
        return 0.0
    gap = (r_small.long_length - m.long_length) + (r_small.short_length - m.short_length)
    bound = _MAX_GAP * r.long_length
    return float(np.clip(gap / (4.0 * f), -bound, bound))


def test_fast_axis_gap_equals_the_reference(val_probabilities):
    # The shipped default's recist_fit measures every mask once more: the fast path must
    # give the same gap (hence the same outline) as the plain definition.
    from napari_recist_seg.refine import axis_gap

    gaps = []
    for prob, r in val_probabilities:
        for p in (prob, prob**2, np.sqrt(prob)):
            mask = refine_mask("recist", p, r)
            gaps.append(axis_gap(mask, r))
            assert gaps[-1] == pytest.approx(_reference_axis_gap(mask, r), abs=1e-9)
    assert sum(abs(g) > 0.5 for g in gaps) >= 20  # gaps that move outlines were compared


def test_thresholds_bounded_by_nested_long_axes_are_not_measured(val_probabilities, monkeypatch):
    # Higher thresholds keep nested components, whose long axis can only shrink: a
    # threshold beyond one measured shorter than the drawn L (or below one measured
    # longer) has a long-axis error at least that one's, and is skipped once that
    # reaches the best error. Same choice; fewer components flood-filled.
    from napari_recist_seg import refine

    filled = [0]
    real = refine._kept_component

    def counted(*args, **kwargs):
        filled[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(refine, "_kept_component", counted)
    distinct = maps = 0
    for prob, r in val_probabilities:
        for p in (prob, prob**2, np.sqrt(prob)):
            f = min(1.0, _MEASURE_SIDE / max(p.shape))
            size = (max(2, int(round(p.shape[1] * f))), max(2, int(round(p.shape[0] * f))))
            small = cv2.resize(p, size, interpolation=cv2.INTER_LINEAR) if f < 1.0 else p
            distinct += len({int(np.count_nonzero(small > t)) for t in (0.5, *THRESHOLDS)} - {0})
            maps += 1
            assert np.array_equal(refine_mask("recist", p, r), _reference_recist_choice(p, r))
    # Without the bound every distinct non-empty threshold is flood-filled once.
    assert filled[0] <= distinct - maps // 10


def test_unshrunk_crops_reuse_the_choice_measurement_for_the_gap(val_probabilities, monkeypatch):
    # axis_gap of the chosen mask measures what the choice measured on a crop that was
    # not shrunk: refine_result takes it from there (same outline, one measurement less).
    from napari_recist_seg import refine
    from napari_recist_seg.postprocess import LesionResult

    real_gap = refine.axis_gap
    gap_calls = [0]

    def counted(*args, **kwargs):
        gap_calls[0] += 1
        return real_gap(*args, **kwargs)

    compared = 0
    for prob, r in val_probabilities:
        # A crop of at most _MEASURE_SIDE px: the choice measures it unshrunk.
        p = np.ascontiguousarray(prob[:_MEASURE_SIDE, :_MEASURE_SIDE])
        if not (p > 0.5).any():
            continue
        mask = refine_mask("recist", p, r)
        expected = refine.offset_mask(mask, 0.75 * real_gap(mask, r))
        res = LesionResult(r, (0, 0), p > 0.5, p, None, None, None)
        monkeypatch.setattr(refine, "axis_gap", counted)
        got = refine.refine_result(res, np.zeros(p.shape + (3,), np.uint8), "recist", recist_fit=0.75)
        monkeypatch.setattr(refine, "axis_gap", real_gap)
        assert np.array_equal(got.mask, expected)
        compared += 1
    assert compared >= 30 and gap_calls[0] == 0


def _reference_offset_mask(mask, pixels):
    """``offset_mask`` as first written: distances over the whole crop."""
    if pixels == 0 or not mask.any():
        return mask
    if pixels > 0:
        return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5) <= pixels
    inside = cv2.distanceTransform(np.pad(mask, 1, mode="edge").astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    return inside > -pixels


def test_offset_mask_measures_the_grown_box_only_with_the_whole_crop_result(val_probabilities, monkeypatch):
    from napari_recist_seg.refine import offset_mask

    sizes = []
    real = cv2.distanceTransform

    def recorded(src, *args, **kwargs):
        sizes.append(src.size)
        return real(src, *args, **kwargs)

    rng = np.random.default_rng(3)
    masks = [prob > t for prob, _ in val_probabilities for t in (0.3, 0.8)]
    for _ in range(150):  # blobs touching the crop's edges, holes, several components
        h, w = rng.integers(3, 90, 2)
        noise = cv2.GaussianBlur(rng.random((int(h), int(w))).astype(np.float32), (0, 0), float(rng.uniform(0.5, 4)))
        masks.append(noise > np.quantile(noise, rng.uniform(0.3, 0.97)))
    smaller = 0
    for mask in masks:
        for px in (-7.5, -2.0, -0.4, 0.4, 2.6, 9.0):
            expected = _reference_offset_mask(mask, px)
            sizes.clear()
            monkeypatch.setattr(cv2, "distanceTransform", recorded)
            got = offset_mask(mask, px)
            monkeypatch.setattr(cv2, "distanceTransform", real)
            assert np.array_equal(got, expected)
            smaller += bool(sizes) and sizes[0] < mask.size
    assert smaller >= len(masks)  # most distance maps cover less than the crop
