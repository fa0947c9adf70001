"""One RECIST -> a 3D lesion: a synthetic anisotropic sphere with a hand-computed extent
and volume, and a real LiTS tumour segmented by the shipped model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_recist_seg.propagate import predictor_segmenter, propagate_lesion
from napari_recist_seg.recist import recist_from_mask

SPACING = (2.5, 0.5, 0.5)  # z, row, col in mm


def _sphere_volume():
    # Sphere of radius 10 mm centred on slice 8; a second one at the same depth, off to
    # the side, that propagation must not pick up.
    z, y, x = np.mgrid[:17, :80, :120]
    zz, yy = (z - 8) * SPACING[0], (y - 40) * SPACING[1]
    main = zz ** 2 + yy ** 2 + ((x - 35) * SPACING[2]) ** 2 <= 100.0
    other = zz ** 2 + yy ** 2 + ((x - 95) * SPACING[2]) ** 2 <= 64.0
    return main, main | other


def test_sphere_extent_and_volume():
    main, both = _sphere_volume()
    seen = []

    def segment(z, recist):  # a perfect slice segmenter that sees both spheres
        seen.append((z, recist.long_length))
        return both[z]

    seed = main[8]
    les = propagate_lesion(both.shape, 8, seed, segment, spacing=SPACING)
    # Cross-section radius sqrt(100 - (2.5 k)^2) mm: 13 px at k = 3, a single pixel at
    # k = 4 (below min_area): slices 5..11, 7 slices, 17.5 mm.
    assert les.z_range == (5, 11) and les.n_slices == 7
    assert les.extent_mm == pytest.approx(17.5)
    assert not les.mask[:, :, 70:].any()  # the neighbouring sphere is left out
    assert (les.mask == (main & (np.arange(17) >= 5)[:, None, None]
                         & (np.arange(17) <= 11)[:, None, None])).all()
    # Slice sum 2.5 * pi * sum_k (100 - 6.25 k^2), k = -3..3 = 4123 mm^3 (sphere 4189).
    assert les.volume_mm3 == pytest.approx(2.5 * np.pi * 525, rel=0.03)
    assert les.volume_ml == pytest.approx(les.volume_mm3 / 1000)
    # Each slice was prompted from the previous slice's mask: RECIST shrink outward.
    up = [length for z, length in seen if z > 8][:3]
    assert up == sorted(up, reverse=True)


def test_outside_slice_is_one_clear_error():
    with pytest.raises(ValueError, match="outside the volume"):
        propagate_lesion((4, 5, 5), 7, np.zeros((5, 5), bool), lambda z, r: None)


def test_lits_tumour_in_3d(lits_dir):
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.predict import Predictor

    vol = read_image(lits_dir / "ct.nii.gz").array
    labels = read_image(lits_dir / "labels.nii.gz").array
    lab3, _ = ndi.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    tumour = lab3 == 1  # 21 slices
    areas = tumour.sum(axis=(1, 2))
    z = int(np.argmax(areas))
    r = recist_from_mask(tumour[z], slice_index=z)
    seg = predictor_segmenter(Predictor.load(None, device="cpu"), vol, modality="ct")
    seed = seg(z, r)
    les = propagate_lesion(vol.shape, z, seed, seg, image=vol)  # default StopRules

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    only = np.zeros(vol.shape, bool)
    only[z] = seed
    assert dice(only, tumour) < 0.25
    # Off the RECIST slice the model, prompted with the previous (larger) slice's
    # RECIST, over-segments; the intensity blend brings its outline back to this
    # slice's lesion: 0.76 -> 0.85 on this tumour.
    model_only = propagate_lesion(vol.shape, z, seed, seg, image=vol, blend=None)
    assert dice(model_only.mask, tumour) < 0.80
    assert dice(les.mask, tumour) > 0.82
    assert les.voxels < model_only.voxels
    gt = np.nonzero(areas)[0]
    span = gt[-1] - gt[0] + 1
    # The tumour's thin ends may be dropped, it is never overshot far.
    assert span // 2 < les.n_slices <= span + 3


# -- the physics stop rules on a synthetic liver ----------------------------------------
#
# A hypodense ellipsoid lesion (40 HU) in a liver (110 HU) next to a tube-shaped organ of
# lesion-like intensity (50 HU) that runs through every slice, 2 px of liver away from
# the lesion's equator. The "model" thresholds a crop around its prompt (1.5 long axes
# each way) and keeps the dark blob at the prompt; with no blob there it returns the
# prompt's ellipse (a model always finds something). The same volume is also given in
# MR-like units (an inverting, non-linear remap with another noise level): the rules
# must stop at the lesion's true end in both, for thin and thick slices.

LESION_HU, LIVER_HU, ORGAN_HU = 40.0, 110.0, 50.0


def _mr_like(hu):
    return 2000.0 / (1.0 + np.exp((hu - 80.0) / 25.0))


def _synthetic_liver(dz: float, units: str):
    rng = np.random.default_rng(0)
    n_z = int(round(40 / dz))
    z, y, x = np.mgrid[:n_z, :96, :110].astype(np.float64)
    zc = (n_z - 1) // 2
    lesion = ((z - zc) * dz / 9.0) ** 2 + ((y - 48) / 14.0) ** 2 + ((x - 40) / 14.0) ** 2 <= 1.0
    organ = (y - 48) ** 2 + (x - 66) ** 2 <= 10.0 ** 2  # x from 56: 2 px from the lesion
    hu = np.full(lesion.shape, LIVER_HU)
    hu[organ] = ORGAN_HU
    hu[lesion] = LESION_HU
    if units == "ct":
        vol, thr, dark = hu + rng.normal(0, 8.0, hu.shape), (LESION_HU + LIVER_HU) / 2, True
    else:
        vol = _mr_like(hu) + rng.normal(0, 60.0, hu.shape)
        thr, dark = (_mr_like(LESION_HU) + _mr_like(LIVER_HU)) / 2, False
    return vol, lesion, organ, zc, _blob_model(vol, thr, dark)


def _blob_model(vol, thr, dark):
    from napari_recist_seg.ellipse import ellipse_mask

    def segment(z, r):
        plane = vol[z]
        fg = plane < thr if dark else plane > thr
        fg = ndi.binary_opening(fg)
        cy, cx = (int(round(v)) for v in r.crossing)
        half = int(np.ceil(1.5 * r.long_length)) + 2
        box = np.zeros(fg.shape, bool)
        box[max(cy - half, 0):cy + half + 1, max(cx - half, 0):cx + half + 1] = True
        lab, _ = ndi.label(fg & box)
        if lab[cy, cx]:
            return lab == lab[cy, cx]
        return ellipse_mask(r, plane.shape)

    return segment


@pytest.mark.parametrize("dz", [1.0, 3.0])
@pytest.mark.parametrize("units", ["ct", "mr"])
def test_physics_rules_stop_at_the_true_extent(dz, units):
    from napari_recist_seg.propagate import StopRules

    vol, lesion, organ, zc, segment = _synthetic_liver(dz, units)
    seed = segment(zc, recist_from_mask(lesion[zc], slice_index=zc))
    les = propagate_lesion(vol.shape, zc, seed, segment, spacing=(dz, 1.0, 1.0), image=vol,
                           rules=StopRules())
    zs = np.nonzero(lesion.any(axis=(1, 2)))[0]
    assert abs(les.z_range[0] - zs[0]) <= 1 and abs(les.z_range[1] - zs[-1]) <= 1
    assert not (les.mask & organ).any()  # the look-alike organ next door is left out
    dice = 2 * (les.mask & lesion).sum() / (les.mask.sum() + lesion.sum())
    assert dice > 0.85


def test_without_the_intensity_rule_the_walk_runs_on():
    # The same MR-like thick-slice volume without the intensity band: the model's
    # ellipses past the lesion's end keep their area and overlap, so only the intensity
    # rule, measured in the volume's own units, ends the lesion.
    from napari_recist_seg.propagate import StopRules

    vol, lesion, _, zc, segment = _synthetic_liver(3.0, "mr")
    seed = segment(zc, recist_from_mask(lesion[zc], slice_index=zc))
    no_band = StopRules(contrast=None, spread=0.0)
    les = propagate_lesion(vol.shape, zc, seed, segment, spacing=(3.0, 1.0, 1.0), image=vol,
                           rules=no_band, blend=None)
    zs = np.nonzero(lesion.any(axis=(1, 2)))[0]
    assert les.z_range[1] - zs[-1] > 1 or zs[0] - les.z_range[0] > 1
    with_band = propagate_lesion(vol.shape, zc, seed, segment, spacing=(3.0, 1.0, 1.0),
                                 image=vol, blend=None, rules=StopRules(contrast=0.75, spread=0.5))
    assert "intensity" in with_band.stops
    # The intensity blend (on by default) ends the walk by itself: past the lesion's
    # end no lesion-like pixel is left next to the previous mask.
    blended = propagate_lesion(vol.shape, zc, seed, segment, spacing=(3.0, 1.0, 1.0),
                               image=vol, rules=no_band)
    assert abs(blended.z_range[0] - zs[0]) <= 1 and abs(blended.z_range[1] - zs[-1]) <= 1


def test_overlap_rule_follows_the_slice_spacing():
    # A lesion whose cross-sections drift 5 px per slice (a tilted tube, 4 px radius):
    # plausible for 5 mm slices at 1 mm pixels, not for 1 mm slices.
    from napari_recist_seg.propagate import SliceStep, StopRules, seed_context

    seed = np.zeros((40, 40), bool)
    yy, xx = np.mgrid[:40, :40]
    seed[(yy - 20) ** 2 + (xx - 20) ** 2 <= 16] = True
    moved = np.roll(seed, 5, axis=1)
    step = SliceStep(1, moved, int(moved.sum()), int(seed.sum()), int((moved & seed).sum()), None)
    rules = StopRules(min_overlap=0.3)  # the rule's scaling, not the default's level
    assert rules.reason(step, seed_context(seed, spacing=(1.0, 1.0, 1.0))) == "overlap"
    assert rules.reason(step, seed_context(seed, spacing=(5.0, 1.0, 1.0))) is None


def test_lits_tumour_that_ran_on_stops_at_its_end(lits_dir):
    # Tumour 16 of the LiTS case (65 slices): above its RECIST slice the walk shrank to
    # the tumour's tip, then followed tumour-like liver tissue beside it for ~13 slices
    # more (70 slices kept, 3D Dice 0.766). The regrowth / seed-overlap rules end it
    # where the mask leaves the RECIST slice's projection.
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.propagate import StopRules

    vol = read_image(lits_dir / "ct.nii.gz").array
    labels = read_image(lits_dir / "labels.nii.gz").array
    lab3, _ = ndi.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    tumour = lab3 == 16
    areas = tumour.sum(axis=(1, 2))
    z = int(np.argmax(areas))
    lab2, _ = ndi.label(tumour[z])
    big = lab2 == (np.argmax(np.bincount(lab2.ravel())[1:]) + 1)
    r = recist_from_mask(big, slice_index=z)
    seg = predictor_segmenter(Predictor.load(None, device="cpu"), vol, modality="ct")
    seed = seg(z, r)
    kw = dict(spacing=(1.0, 1.0, 1.0), image=vol, recist=r)
    old = propagate_lesion(vol.shape, z, seed, seg, rules=StopRules(
        max_regrowth=None, min_seed_overlap=None), **kw)
    les = propagate_lesion(vol.shape, z, seed, seg, **kw)  # default StopRules

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    gt = np.nonzero(areas)[0]
    span = gt[-1] - gt[0] + 1
    assert span == 65 and old.n_slices > span  # ran on past the tumour's end
    assert les.n_slices <= span and les.z_range[1] < old.z_range[1]
    assert les.stops[1] in ("regrowth", "seed_overlap")
    assert dice(old.mask, tumour) < 0.775 < 0.785 < dice(les.mask, tumour)


def _discs(radii, shifts, size=60):
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    return np.stack([(yy - c) ** 2 + (xx - c - dx) ** 2 <= r ** 2 if r > 0 else np.zeros_like(yy, bool)
                     for r, dx in zip(radii, shifts)])


@pytest.mark.parametrize("radii, shifts, why, last", [
    # shrinks to r 5, then grows again slowly (< 1.1x a slice, > 1.15x the smallest)
    ([0, 8, 7, 6, 5, 5.2, 5.6, 6.0, 6.4], [0] * 9, "regrowth", 5),
    # same size, drifting 2 px a slice out of the RECIST slice's projection
    ([0, 8, 8, 8, 8, 8], [0, 0, 2, 4, 6, 8], "seed_overlap", 2),
])
def test_run_on_rules_end_a_walk_that_left_the_lesion(radii, shifts, why, last):
    from napari_recist_seg.propagate import StopRules

    vol = _discs(radii, shifts)

    def seg(z, r):  # a perfect segmenter that follows whatever is there
        return vol[z]

    les = propagate_lesion(vol.shape, 1, vol[1], seg, spacing=(1.0, 1.0, 1.0))
    assert les.stops[1] == why and les.z_range == (1, last)
    off = StopRules(max_regrowth=None, min_seed_overlap=None)
    ran_on = propagate_lesion(vol.shape, 1, vol[1], seg, spacing=(1.0, 1.0, 1.0), rules=off)
    assert ran_on.z_range[1] > last
