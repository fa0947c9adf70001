"""Volumes are rounded in one place (measurements.volume_values): 0.1 mm^3, 4 decimals
of mL, 0.001 mm of extent, whatever float32 noise the spacing of a NIfTI header carries.

Hand-computed: 100000 voxels (10 slices of 100 x 100) at (2.5, 0.7, 0.7) mm are
100000 * 2.5 * 0.49 = 122500 mm^3 = 122.5 mL, over 10 slices = 25 mm. With the spacing
read as float32 (0.7 -> 0.699999988) the product was 122499.9958 mm^3.
"""

from __future__ import annotations

import numpy as np

from napari_recist_seg.annotation import measure_volume
from napari_recist_seg.jobs.segment3d import _counted
from napari_recist_seg.measurements import volume_mm3_ml, volume_values

SPACING_F32 = tuple(np.array([2.5, 0.7, 0.7], np.float32))


def _mask() -> np.ndarray:
    m = np.zeros((12, 120, 120), bool)
    m[1:11, 10:110, 10:110] = True
    assert m.sum() == 100000
    return m


def test_volume_values_round_float32_noise_to_the_hand_computed_volume():
    v = volume_values(_mask(), SPACING_F32)
    assert v["volume_mm3"] == 122500.0 and v["volume_ml"] == 122.5
    assert v["extent_mm"] == 25.0 and v["n_slices"] == 10 and v["volume_voxels"] == 100000
    assert volume_mm3_ml(3, (1.0, 0.3, 0.1)) == (0.1, 0.0001)  # 0.09 mm^3 rounds to 0.1
    assert volume_values(_mask(), None)["volume_mm3"] is None


def test_measurements_csv_and_annotator_volumes_print_the_rounded_volume():
    # segment --3d's measurements.csv cells (the CLI), then the annotator's 3D lesion.
    row = _counted({"lesion": "1"}, _mask(), SPACING_F32)
    assert (row["volume_mm3"], row["volume_ml"], row["extent_mm"]) == ("122500", "122.5", "25")
    labels = _mask().astype(np.uint16) * 3
    assert measure_volume(labels, 3, SPACING_F32)["volume_mm3"] == 122500.0
