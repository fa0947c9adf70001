"""``segment --3d`` re-run into the same OUT with a changed RECIST CSV: the user's new
RECIST are neither ignored as "already done" nor written over the old labels."""

from __future__ import annotations

import csv
import shutil

import numpy as np
from scipy import ndimage as ndi

from napari_recist_seg.data import RecistRecord, write_recist_csv
from napari_recist_seg.data.images import read_image
from napari_recist_seg.recist import recist_from_mask


def _tumour_recists(lits_dir, image, count):
    """One RECIST per LiTS tumour (its largest slice), for the first ``count`` tumours
    spanning >= 3 slices, with lesion ids 1, 2, ..."""
    lab3, n = ndi.label(read_image(lits_dir / "labels.nii.gz").array == 2, structure=np.ones((3, 3, 3), bool))
    out = []
    for t in range(1, n + 1):
        comp = lab3 == t
        areas = comp.sum(axis=(1, 2))
        if np.count_nonzero(areas) < 3 or areas.max() < 28:
            continue
        z = int(np.argmax(areas))
        lab2, _ = ndi.label(comp[z])
        big = lab2 == (np.argmax(np.bincount(lab2.ravel())[1:]) + 1)
        out.append(RecistRecord(image, len(out) + 1, recist_from_mask(big, slice_index=z)))
        if len(out) == count:
            return out
    return out


def test_a_changed_csv_is_reported_not_skipped_and_overwrite_redoes_it(lits_dir, tmp_path):
    from napari_recist_seg.jobs.segment3d import run_segment3d
    from napari_recist_seg.predict import Predictor

    ct = tmp_path / "in" / "ct.nii.gz"
    ct.parent.mkdir()
    shutil.copy(lits_dir / "ct.nii.gz", ct)
    first, second = _tumour_recists(lits_dir, ct, 2)
    pred = Predictor.load(None, device="cpu")
    out = tmp_path / "out"
    write_recist_csv(tmp_path / "one.csv", [first])
    run_segment3d([ct], out, recist_csv=tmp_path / "one.csv", predictor=pred)
    labels_before = (out / "ct_labels.nii.gz").read_bytes()
    # The same CSV again: done, skipped (resume).
    report = run_segment3d([ct], out, recist_csv=tmp_path / "one.csv", predictor=pred)
    assert (report.skipped, report.processed, report.failures) == (1, 0, [])
    # A second lesion added: one line saying so, the old labels kept as they were.
    write_recist_csv(tmp_path / "two.csv", [first, second])
    report = run_segment3d([ct], out, recist_csv=tmp_path / "two.csv", predictor=pred)
    assert report.skipped == 0 and report.processed == 0
    [(_, reason)] = report.failures
    assert "other RECIST" in reason and "--overwrite" in reason
    assert (out / "ct_labels.nii.gz").read_bytes() == labels_before
    # --overwrite redoes the volume with both lesions.
    report = run_segment3d([ct], out, recist_csv=tmp_path / "two.csv", predictor=pred, overwrite=True)
    assert report.processed == 1
    rows = list(csv.DictReader(open(out / "measurements.csv")))
    assert sorted(r["lesion"] for r in rows) == ["1", "2"]
    assert set(np.unique(read_image(out / "ct_labels.nii.gz").array)) == {0, 1, 2}


def test_a_4d_file_is_one_line_naming_the_file_once(tmp_path, capsys):
    import nibabel as nib

    from napari_recist_seg.cli import main
    from napari_recist_seg.recist import Recist

    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 5, 2), np.int16), np.eye(4)), str(four))
    r = Recist(long_axis=[[5, 5], [5, 15]], short_axis=[[2, 10], [8, 10]], slice_index=2)
    write_recist_csv(tmp_path / "r.csv", [RecistRecord(four, 1, r)])
    code = main(["segment", str(four), "--recist", str(tmp_path / "r.csv"), "--3d",
                 "--out", str(tmp_path / "out"), "-q"])
    assert code == 3
    [row] = list(csv.DictReader(open(tmp_path / "out" / "failures.csv")))
    assert row["reason"].startswith("a 4D NIfTI") and "four.nii.gz" not in row["reason"]
    [line] = [x for x in capsys.readouterr().err.splitlines() if "failed:" in x]
    assert line.count("four.nii.gz") == 1
