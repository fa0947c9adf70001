"""``recist-seg segment VOLUME --recist CSV --3d`` on the LiTS case: labels = CSV lesion
ids on every slice, the input's affine, volume columns; a RECIST outside the volume is
one failure line and the other lesions are still written."""

from __future__ import annotations

import csv
from dataclasses import replace

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from napari_recist_seg.cli import main
from napari_recist_seg.data import RecistRecord, write_recist_csv
from napari_recist_seg.data.images import read_image
from napari_recist_seg.recist import recist_from_mask


def test_segment_3d_on_lits(lits_dir, tmp_path):
    ct_path = lits_dir / "ct.nii.gz"
    labels = read_image(lits_dir / "labels.nii.gz").array
    lab3, _ = ndi.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    records = []
    for lesion_id, t in ((7, 1), (3, 3)):
        comp = lab3 == t
        z = int(np.argmax(comp.sum(axis=(1, 2))))
        records.append(RecistRecord(ct_path, lesion_id, recist_from_mask(comp[z], slice_index=z)))
    bad = replace(records[0].recist, slice_index=500)
    records.append(RecistRecord(ct_path, 9, bad))
    csv_path = tmp_path / "recist.csv"
    write_recist_csv(csv_path, records)
    out = tmp_path / "out"
    rc = main(["segment", str(ct_path), "--recist", str(csv_path), "--out", str(out), "--3d",
               "--device", "cpu", "--quiet"])
    assert rc == 3  # one lesion failed, the others written
    failures = (out / "failures.csv").read_text()
    assert "lesion 9" in failures and "outside the volume" in failures
    written = nib.load(str(out / "ct_labels.nii.gz"))
    np.testing.assert_allclose(written.affine, nib.load(str(ct_path)).affine)
    lab = read_image(out / "ct_labels.nii.gz").array
    assert set(np.unique(lab)) == {0, 3, 7}
    rows = {int(r["lesion"]): r for r in csv.DictReader(open(out / "measurements.csv"))}
    assert set(rows) == {3, 7}
    for lesion_id in (3, 7):
        zs = np.nonzero((lab == lesion_id).any(axis=(1, 2)))[0]
        row = rows[lesion_id]
        assert int(row["n_slices"]) == len(zs) >= 3  # one label on every slice it spans
        assert (int(row["z_first"]), int(row["z_last"])) == (zs[0], zs[-1])
        assert int(row["volume_voxels"]) == int((lab == lesion_id).sum())
        assert row["volume_mm3"] != ""  # LiTS carries (unit) spacing in its header
    # The big tumour (t = 1) against its reference in 3D.
    ref = lab3 == 1
    pred = lab == 7
    assert 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) > 0.65
