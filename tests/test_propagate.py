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
    les = propagate_lesion(vol.shape, z, seed, seg, image=vol, intensity_tol=30.0)

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    only = np.zeros(vol.shape, bool)
    only[z] = seed
    assert dice(only, tumour) < 0.25
    assert dice(les.mask, tumour) > 0.65
    gt = np.nonzero(areas)[0]
    span = gt[-1] - gt[0] + 1
    # The tumour's thin ends are dropped (14 of its 21 slices now), never overshot far.
    assert span // 2 < les.n_slices <= span + 3
