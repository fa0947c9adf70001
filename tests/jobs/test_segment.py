"""``run_segment`` / ``recist-seg segment`` on a small real ISIC dataset (+ a truncated
image), a file list with a RECIST CSV, and the LiTS CT volume."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.cli import main
from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
from napari_recist_seg.jobs.common import CancelToken, InputError
from napari_recist_seg.jobs.segment import MEASUREMENT_COLUMNS, run_segment
from napari_recist_seg.recist import Recist, recist_from_mask

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LITS = SHARED_DATA / "lits_case117"
STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]
COLUMNS = [
    "image", "lesion", "slice", "cluster", "confidence", "area_px", "area_mm2",
    "long_px", "short_px", "long_mm", "short_mm", "measured_long_px",
    "measured_short_px", "measured_long_mm", "measured_short_mm",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_seed() -> int:
    """This module's ``tiny_ckpt`` / ``tiny`` (see conftest.py) are built with seed 1."""
    return 1


@pytest.fixture()
def dataset(tmp_path, make_isic_dataset) -> Path:
    """4 real ISIC images with expert masks, plus a truncated JPEG that has a mask."""
    return make_isic_dataset(tmp_path / "ds", STEMS, broken="broken", broken_from="ISIC_0000004")


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "measurements.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def _failures(out: Path) -> dict[str, str]:
    with open(out / "failures.csv", newline="", encoding="utf-8") as fh:
        return {Path(r["file"]).name: r["reason"] for r in csv.DictReader(fh)}


def test_cli_on_a_dataset_with_derived_recist_and_a_truncated_image(dataset, trained_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(dataset), "--model", str(trained_ckpt), "--out", str(out), "--quiet"])
    assert code == 3
    assert "broken.jpg" in capsys.readouterr().err
    assert tuple(COLUMNS) == MEASUREMENT_COLUMNS
    fails = _failures(out)
    assert list(fails) == ["broken.jpg"]
    assert "truncat" in fails["broken.jpg"].lower() or "broken" in fails["broken.jpg"]
    rows = _rows(out)
    assert [Path(r["image"]).name for r in rows] == [f"{s}.jpg" for s in STEMS]
    for stem, row in zip(STEMS, rows):
        # the image column is the path relative to OUT
        assert (out / row["image"]).resolve() == (dataset / "images" / f"{stem}.jpg").resolve()
        mask_file = out / f"{stem}.png"
        written = np.asarray(Image.open(mask_file))
        assert written.shape == (256, 256) and written.dtype == np.uint8
        assert set(np.unique(written)) <= {0, 255}
        assert int(row["area_px"]) == int((written > 0).sum())
        assert row["lesion"] == "1" and row["slice"] == ""
        assert 0 <= int(row["cluster"]) < 3 and 0 < float(row["confidence"]) <= 1
        # drawn L/W are those derived from the expert mask
        gt = np.asarray(Image.open(dataset / "masks" / f"{stem}_segmentation.png")) > 0
        r = recist_from_mask(gt)
        assert float(row["long_px"]) == pytest.approx(r.long_length, abs=1e-3)
        assert float(row["short_px"]) == pytest.approx(r.short_length, abs=1e-3)
        assert row["long_mm"] == "" and row["area_mm2"] == ""  # no spacing in a jpg
        # the trained test model gives real masks: the measured axes are always there
        assert int(row["area_px"]) > 1000
        m = recist_from_mask(written > 0)
        assert float(row["measured_long_px"]) == pytest.approx(m.long_length, abs=1e-3)
        assert float(row["measured_short_px"]) == pytest.approx(m.short_length, abs=1e-3)
        assert not (out / f"{stem}_labels.png").exists()  # one lesion: no labels file
    assert not (out / "broken.png").exists()
    # no temporary files left behind (.recist-seg holds the run's records)
    assert [p.name for p in out.glob(".*")] == [".recist-seg"]
    assert not list((out / ".recist-seg").rglob(".*"))


def test_resume_skips_done_images_and_overwrite_redoes_them(dataset, tiny_ckpt, tiny, tmp_path):
    out = tmp_path / "out"
    first = run_segment(dataset, out, predictor=tiny)
    assert first.processed == 4 and len(first.failures) == 1
    rows_before = _rows(out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("ISIC_*.png")}
    os.remove(out / "ISIC_0000002.png")  # as if the run had stopped before this one

    second = run_segment(dataset, out, predictor=tiny)
    assert second.processed == 1 and second.skipped == 3
    assert [p for p, _ in second.failures] == [str(dataset / "images" / "broken.jpg")]
    for name, t in stamp.items():
        if name != "ISIC_0000002.png":
            assert (out / name).stat().st_mtime_ns == t
    assert _rows(out) == rows_before  # kept rows + the redone image's identical row

    third = run_segment(dataset, out, predictor=tiny, overwrite=True)
    assert third.processed == 4 and third.skipped == 0
    assert all((out / n).stat().st_mtime_ns > t for n, t in stamp.items() if n != "ISIC_0000002.png")
    assert len(_rows(out)) == 4


def test_cli_resume_and_overwrite_flags(dataset, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", str(dataset), "--model", str(tiny_ckpt), "--out", str(out), "--quiet"]
    assert main(args) == 3
    capsys.readouterr()
    assert main(args) == 3  # the broken image still fails
    assert "4 skipped" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 3
    assert "4 processed" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["images", "masks"])
def test_refuses_to_write_into_the_dataset_inputs(dataset, tiny_ckpt, sub, capsys):
    before = {p.name: p.read_bytes() for p in (dataset / sub).iterdir()}
    code = main(["segment", str(dataset), "--model", str(tiny_ckpt), "--out", str(dataset / sub), "--quiet"])
    assert code == 2
    assert "refusing to write" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (dataset / sub).iterdir()} == before
    with pytest.raises(InputError, match="refusing"):
        run_segment(dataset, dataset / sub / ".", model=tiny_ckpt)


def test_file_list_with_recist_csv_several_lesions_and_a_bad_recist(dataset, trained, tmp_path):
    tiny = trained  # real masks: the label checks below are not over empty sets
    img = dataset / "images" / "ISIC_0000001.jpg"
    img2 = dataset / "images" / "ISIC_0000003.jpg"
    gt = np.asarray(Image.open(dataset / "masks" / "ISIC_0000001_segmentation.png")) > 0
    r1 = recist_from_mask(gt).with_spacing((0.1, 0.2))
    r2 = Recist([[20, 200], [20, 240]], [[10, 220], [30, 220]], spacing=(0.1, 0.2))
    bad = Recist([[50, 30], [50, 70]], [[40, 100], [60, 100]])  # axes do not cross
    csv_path = tmp_path / "meas" / "recist.csv"
    write_recist_csv(
        csv_path,
        [
            RecistRecord(img, 1, r1),
            RecistRecord(img, 7, r2),
            RecistRecord(img2, 1, bad),
        ],
    )
    out = tmp_path / "out"
    report = run_segment([img, img2], out, recist_csv=csv_path, predictor=tiny)
    assert report.processed == 1 and report.exit_code == 3
    assert len(report.failures) == 2  # the bad lesion, then the image with nothing left
    assert all(f == str(img2) for f, _ in report.failures)
    assert "do not cross" in report.failures[0][1]

    labels = np.asarray(Image.open(out / "ISIC_0000001_labels.png"))
    union = np.asarray(Image.open(out / "ISIC_0000001.png")) > 0
    assert {0, 1} <= set(np.unique(labels)) <= {0, 1, 7}
    assert (labels == 1).sum() > 1000
    np.testing.assert_array_equal(labels > 0, union)
    rows = _rows(out)
    assert [(r["lesion"]) for r in rows] == ["1", "7"]
    for row, r in zip(rows, (r1, r2)):
        assert float(row["long_mm"]) == pytest.approx(r.long_length_mm, abs=1e-3)
        assert float(row["area_mm2"]) == pytest.approx(int(row["area_px"]) * 0.02, abs=1e-3)
    # pixels of lesion 7 that no other lesion covers carry its label
    res = tiny.segment(np.asarray(Image.open(img)), [r1, r2])
    only7 = res[1].full_mask((256, 256)) & ~res[0].full_mask((256, 256))
    assert np.all(labels[only7] == 7)
    only1 = res[0].full_mask((256, 256)) & ~res[1].full_mask((256, 256))
    assert only1.sum() > 1000 and np.all(labels[only1] == 1)
    np.testing.assert_array_equal(union, res[0].full_mask((256, 256)) | res[1].full_mask((256, 256)))


def test_zero_based_lesion_ids_still_get_visible_labels(dataset, make_dark_predictor, tmp_path):
    dark = make_dark_predictor(0.45)  # lesion = dark pixels of the crop
    img = dataset / "images" / "ISIC_0000002.jpg"
    gt = np.asarray(Image.open(dataset / "masks" / "ISIC_0000002_segmentation.png")) > 0
    whole = recist_from_mask(gt)
    inner = whole.transformed(whole.centre, 0.3).transformed(-whole.centre, 1.0)
    csv_path = tmp_path / "recist.csv"
    write_recist_csv(csv_path, [RecistRecord(img, 0, whole), RecistRecord(img, 1, inner)])
    report = run_segment([img], tmp_path / "out", recist_csv=csv_path, predictor=dark)
    assert report.exit_code == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000002_labels.png"))
    union = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000002.png")) > 0
    np.testing.assert_array_equal(labels > 0, union)
    rows = _rows(tmp_path / "out")
    assert [r["lesion"] for r in rows] == ["0", "1"]
    assert all(int(r["area_px"]) > 0 for r in rows)
    assert set(np.unique(labels)) == {0, 1, 2}  # id 0 -> label 1, id 1 -> label 2


def test_file_list_needs_a_recist_csv(dataset, tiny, tmp_path):
    with pytest.raises(InputError, match="RECIST CSV"):
        run_segment([dataset / "images" / "ISIC_0000001.jpg"], tmp_path / "o", predictor=tiny)


def test_cancel_keeps_finished_outputs(dataset, tiny, tmp_path):
    out = tmp_path / "out"
    token = CancelToken()
    events = []

    def progress(event):
        events.append(event)
        if event.done >= 2:
            token.cancel()

    # batch_size=2: images are read and segmented two lesions at a time, so the
    # cancel lands between chunks
    report = run_segment(dataset, out, predictor=tiny, progress=progress, cancel=token,
                         batch_size=2)
    assert report.cancelled and report.exit_code == 130
    assert 1 <= report.processed < 4
    done = sorted(p.name for p in out.glob("ISIC_*.png"))
    assert len(done) == report.processed
    assert sorted(Path(r["image"]).stem + ".png" for r in _rows(out)) == done
    assert events[-1].total == 5 and events[0].eta is not None
    # resuming finishes the rest
    again = run_segment(dataset, out, predictor=tiny)
    assert again.skipped == report.processed and again.processed == 4 - report.processed
    assert len(_rows(out)) == 4


def test_chunked_bulk_run_equals_image_by_image(dataset, tiny, tmp_path):
    a = run_segment(dataset, tmp_path / "a", predictor=tiny, batch_size=32)
    b = run_segment(dataset, tmp_path / "b", predictor=tiny, batch_size=1)
    assert a.processed == b.processed == 4
    for stem in STEMS:
        ma = np.asarray(Image.open(tmp_path / "a" / f"{stem}.png"))
        mb = np.asarray(Image.open(tmp_path / "b" / f"{stem}.png"))
        assert np.mean(ma != mb) < 1e-3
    ra, rb = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["image"] for r in ra] == [r["image"] for r in rb]
    assert [r["cluster"] for r in ra] == [r["cluster"] for r in rb]


def test_volume_outputs_nifti_on_the_right_slices(make_dark_predictor, tmp_path):
    """An anisotropic volume (zooms 0.7 x 0.8 x 2.5 mm): the output NIfTI keeps them,
    lesions land on exactly their RECIST slices, each with its own label."""
    if not (LITS / "ct.nii.gz").is_file():
        pytest.skip(f"real LiTS data not found at {LITS}")
    import nibabel as nib

    src = nib.load(str(LITS / "ct.nii.gz"))
    labels = np.asarray(nib.load(str(LITS / "labels.nii.gz")).dataobj).transpose(2, 1, 0)
    zooms = (0.7, 0.8, 2.5)
    ct = tmp_path / "ct.nii.gz"
    # Oblique and shifted: the outputs must overlay the CT in any viewer (same affine).
    c, s = np.cos(0.2), np.sin(0.2)
    affine = np.array([[zooms[0] * c, -zooms[1] * s, 0, -91.5],
                       [zooms[0] * s, zooms[1] * c, 0, 40.25],
                       [0, 0, zooms[2], -310.0],
                       [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj).astype(np.int16), affine), str(ct))
    per_slice = (labels == 2).sum(axis=(1, 2))
    z1, z2 = (int(z) for z in np.argsort(-per_slice)[:2])
    r1 = recist_from_mask(labels[z1] == 2, slice_index=z1)
    r2 = recist_from_mask(labels[z2] == 2, slice_index=z2)
    csv_path = tmp_path / "recist.csv"
    write_recist_csv(csv_path, [RecistRecord(ct, 1, r1), RecistRecord(ct, 2, r2)])
    out = tmp_path / "out"
    # The dark-pixel stand-in gives a non-empty mask in every CT crop (fat, bowel gas),
    # so the slice and label checks below are not over empty sets.
    report = run_segment([ct], out, recist_csv=csv_path, predictor=make_dark_predictor(0.45))
    assert report.exit_code == 0, report.failures
    mask_img = nib.load(str(out / "ct.nii.gz"))
    mask = np.asarray(mask_img.dataobj).transpose(2, 1, 0)
    lab_img = nib.load(str(out / "ct_labels.nii.gz"))
    lab = np.asarray(lab_img.dataobj).transpose(2, 1, 0)
    assert mask.shape == labels.shape
    on = set(np.flatnonzero(mask.any(axis=(1, 2))).tolist())
    assert on == {z1, z2}
    assert set(np.unique(lab[z1])) == {0, 1} and set(np.unique(lab[z2])) == {0, 2}
    np.testing.assert_array_equal(lab > 0, mask > 0)
    for img in (mask_img, lab_img):
        np.testing.assert_allclose(img.header.get_zooms()[:3], zooms, rtol=1e-6)
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    rows = _rows(out)
    assert sorted(int(r["slice"]) for r in rows) == sorted([z1, z2])
    for row in rows:
        r = r1 if int(row["slice"]) == z1 else r2
        # mm from the header: rows 0.8 mm, columns 0.7 mm apart
        assert float(row["long_mm"]) == pytest.approx(r.with_spacing((0.8, 0.7)).long_length_mm, abs=1e-3)
        assert float(row["area_mm2"]) == pytest.approx(int(row["area_px"]) * 0.56, abs=1e-3)
