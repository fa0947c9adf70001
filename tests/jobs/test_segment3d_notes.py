"""``segment --3d --window`` on a volume that is not CT: the user is told it did not apply."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.data import RecistRecord, write_recist_csv
from napari_recist_seg.data.masks import write_labels
from napari_recist_seg.recist import Recist


def _mr_like(path):
    """Positive MR-like signal (no air below -500: not HU), a dark disc on 3 slices."""
    rng = np.random.default_rng(0)
    vol = rng.normal(600.0, 20.0, (5, 64, 64)).astype(np.float32)
    rr, cc = np.mgrid[:64, :64]
    for z in (1, 2, 3):
        vol[z][(rr - 32) ** 2 + (cc - 32) ** 2 <= 100] = 200.0
    write_labels(path, np.zeros((5, 64, 64), np.uint8), (2.0, 1.0, 1.0))  # a header to copy
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), nib.load(str(path)).affine), str(path))


@pytest.mark.parametrize("window, noted", [("liver", True), (None, False)])
def test_a_window_on_a_volume_that_is_not_ct_is_noted(tmp_path, window, noted):
    from napari_recist_seg.jobs.segment3d import run_segment3d
    from napari_recist_seg.predict import Predictor

    vol = tmp_path / "mr.nii.gz"
    _mr_like(vol)
    r = Recist(long_axis=[[32, 22], [32, 42]], short_axis=[[22, 32], [42, 32]], slice_index=2)
    write_recist_csv(tmp_path / "r.csv", [RecistRecord(vol, 1, r)])
    report = run_segment3d([vol], tmp_path / "out", recist_csv=tmp_path / "r.csv",
                           predictor=Predictor.load(None, device="cpu"), window=window)
    assert report.processed == 1
    notes = [n for n in report.notes if "--window does not apply" in n]
    assert (notes == ["note: mr.nii.gz is not CT (grey): --window does not apply to it; it is read "
                      "by the percentile rule (see --modality)"]) if noted else notes == []
