"""``recist-seg segment VOLUME --recist CSV --3d`` on the LiTS case: labels = CSV lesion
ids on every slice, the input's affine, volume columns; a RECIST outside the volume is
one failure line and the other lesions are still written."""

from __future__ import annotations

import csv
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
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


def _lits_recists(lits_dir, image_path, which):
    labels = read_image(lits_dir / "labels.nii.gz").array
    lab3, _ = ndi.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    records = []
    for lesion_id, t in which:
        comp = lab3 == t
        z = int(np.argmax(comp.sum(axis=(1, 2))))
        records.append(RecistRecord(image_path, lesion_id, recist_from_mask(comp[z], slice_index=z)))
    return records, lab3


def test_crash_mid_volume_resumes_per_lesion(lits_dir, tmp_path, monkeypatch):
    from napari_recist_seg.jobs import segment3d
    from napari_recist_seg.jobs.segment3d import run_segment3d
    from napari_recist_seg.predict import Predictor

    ct_path = lits_dir / "ct.nii.gz"
    records, _ = _lits_recists(lits_dir, ct_path, ((7, 1), (3, 3)))
    csv_path = tmp_path / "recist.csv"
    write_recist_csv(csv_path, records)
    pred = Predictor.load(None, device="cpu")
    clean = tmp_path / "clean"
    run_segment3d([ct_path], clean, recist_csv=csv_path, predictor=pred)

    real, calls = segment3d._one_lesion, []

    def crash_on_second(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies while the second lesion propagates
        return real(*args, **kwargs)

    monkeypatch.setattr(segment3d, "_one_lesion", crash_on_second)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_segment3d([ct_path], out, recist_csv=csv_path, predictor=pred)
    assert not (out / "ct_labels.nii.gz").exists()  # nothing half-written
    first, crashed = calls
    calls.clear()
    monkeypatch.setattr(segment3d, "_one_lesion", lambda *a, **k: (calls.append(a[4]), real(*a, **k))[1])
    report = run_segment3d([ct_path], out, recist_csv=csv_path, predictor=pred)
    assert calls == [crashed] and report.processed == 1  # the first from its checkpoint
    assert {first, crashed} == {3, 7}
    np.testing.assert_array_equal(read_image(out / "ct_labels.nii.gz").array,
                                  read_image(clean / "ct_labels.nii.gz").array)
    assert (out / "measurements.csv").read_text() == (clean / "measurements.csv").read_text()
    assert not (out / ".recist-seg" / "lesions3d" / "ct").exists()  # checkpoints dropped
    # A third run has nothing left to do and keeps the table.
    calls.clear()
    report = run_segment3d([ct_path], out, recist_csv=csv_path, predictor=pred)
    assert calls == [] and report.skipped == 1
    assert (out / "measurements.csv").read_text() == (clean / "measurements.csv").read_text()


def test_rerun_keeps_rows_of_skipped_volumes_and_user_files(lits_dir, tmp_path):
    import shutil

    from napari_recist_seg.jobs.common import InputError
    from napari_recist_seg.jobs.segment3d import run_segment3d
    from napari_recist_seg.predict import Predictor

    a = tmp_path / "in" / "a.nii.gz"
    a.parent.mkdir()
    shutil.copy(lits_dir / "ct.nii.gz", a)
    b = a.with_name("b.nii.gz")
    shutil.copy(a, b)
    rec_a, _ = _lits_recists(lits_dir, a, ((7, 3),))
    rec_b, _ = _lits_recists(lits_dir, b, ((2, 3),))
    pred = Predictor.load(None, device="cpu")
    out = tmp_path / "out"
    write_recist_csv(tmp_path / "a.csv", rec_a)
    run_segment3d([a], out, recist_csv=tmp_path / "a.csv", predictor=pred)
    write_recist_csv(tmp_path / "ab.csv", rec_a + rec_b)
    report = run_segment3d([a, b], out, recist_csv=tmp_path / "ab.csv", predictor=pred)
    assert report.skipped == 1 and report.processed == 1
    rows = list(csv.DictReader(open(out / "measurements.csv")))
    assert sorted((r["image"], r["lesion"]) for r in rows) == [("a.nii.gz", "7"), ("b.nii.gz", "2")]
    # A labels file the tool did not write is never replaced without --overwrite.
    other = tmp_path / "other"
    other.mkdir()
    (other / "a_labels.nii.gz").write_bytes(b"mine")
    with pytest.raises(InputError, match="did not write"):
        run_segment3d([a], other, recist_csv=tmp_path / "a.csv", predictor=pred)
    assert (other / "a_labels.nii.gz").read_bytes() == b"mine"


def test_thick_slices(lits_dir, tmp_path):
    # LiTS resampled to 3 px slices (the mean of 3 slices, as a thick reconstruction):
    # the job reads the spacing, the lesion still spans several slices, and its volume
    # and extent follow the 3 mm slices.
    ct = read_image(lits_dir / "ct.nii.gz").array.astype(np.float32)
    labels = read_image(lits_dir / "labels.nii.gz").array
    n = ct.shape[0] // 3
    thick = ct[: 3 * n].reshape(n, 3, *ct.shape[1:]).mean(axis=1)
    tumour = (labels[: 3 * n] == 2).reshape(n, 3, *ct.shape[1:]).mean(axis=1) >= 0.5
    path = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(np.round(thick).astype(np.int16).transpose(2, 1, 0),
                             np.diag([1.0, 1.0, 3.0, 1.0])), str(path))
    assert read_image(path).spacing == (3.0, 1.0, 1.0)
    lab3, _ = ndi.label(tumour, structure=np.ones((3, 3, 3), bool))
    big = lab3 == np.argmax(np.bincount(lab3.ravel())[1:]) + 1
    z = int(np.argmax(big.sum(axis=(1, 2))))
    write_recist_csv(tmp_path / "r.csv", [RecistRecord(path, 1, recist_from_mask(big[z], slice_index=z))])
    out = tmp_path / "out"
    rc = main(["segment", str(path), "--recist", str(tmp_path / "r.csv"), "--out", str(out), "--3d",
               "--device", "cpu", "--quiet"])
    assert rc == 0
    pred = read_image(out / "thick_labels.nii.gz").array == 1
    row = next(csv.DictReader(open(out / "measurements.csv")))
    assert int(row["n_slices"]) >= 3
    assert float(row["extent_mm"]) == 3.0 * int(row["n_slices"])
    assert float(row["volume_mm3"]) == 3.0 * pred.sum()
    # Propagation pays off on thick slices too: well above the RECIST slice alone (this
    # tumour is the case's largest, 18 thick slices, of which 5 are found: 3D Dice 0.48
    # vs 0.16 for its RECIST slice alone).
    only = np.zeros_like(pred)
    only[z] = pred[z]
    dice = lambda a: 2 * (a & big).sum() / (a.sum() + big.sum())  # noqa: E731
    assert dice(pred) > dice(only) + 0.15


def test_touching_lesions_share_voxels_by_the_nearer_recist_slice():
    # Lesion 1 (RECIST slice 1) propagates over slices 0..5 and covers lesion 2, whose
    # RECIST is on slice 4: lesion 2 keeps slices 3..5 (nearer its own RECIST slice),
    # lesion 1 keeps 0..2, and the volume columns count what each label holds. Before,
    # the first lesion took every voxel and lesion 2 had a row but no label at all.
    from napari_recist_seg.jobs.segment3d import _counted, _paste_lesions

    a = np.zeros((6, 8, 8), bool)
    a[:, 2:6, 2:6] = True
    b = np.zeros_like(a)
    b[2:6, 3:5, 3:5] = True
    lab = _paste_lesions(a.shape, [(1, 1, a, {}), (2, 4, b, {})])
    assert set(np.nonzero((lab == 2).any(axis=(1, 2)))[0]) == {3, 4, 5}
    assert (lab[:3][a[:3]] == 1).all() and (lab[4][b[4]] == 2).all()
    row = _counted({"lesion": "2"}, lab == 2, (2.0, 1.0, 1.0))
    assert (row["volume_voxels"], row["z_first"], row["z_last"], row["n_slices"]) == ("12", "3", "5", "3")
    assert row["volume_mm3"] == "24" and row["extent_mm"] == "6"
