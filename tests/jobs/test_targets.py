"""``recist-seg targets`` / ``run_targets`` on a small real ISIC dataset with bad files,
a dataset with its own recist.csv, resume / overwrite / cancel, and a CT volume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.cli import main
from napari_recist_seg.data.masks import read_mask
from napari_recist_seg.data.recist_csv import RecistRecord, read_recist_csv, write_recist_csv
from napari_recist_seg.jobs.common import CancelToken, ProgressEvent
from napari_recist_seg.jobs.targets import run_targets
from napari_recist_seg.recist import Recist, recist_from_mask
from napari_recist_seg.targets import ellipse_mask

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
ISIC = SHARED_DATA / "isic2017_train256"
LITS = SHARED_DATA / "lits_case117"
N_GOOD = 20


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _good_stems() -> list[str]:
    masks = sorted((ISIC / "masks").glob("*_segmentation.png"))
    if len(masks) < 400:
        pytest.skip(f"ISIC 2017 data not found at {ISIC}")
    return [m.name.replace("_segmentation.png", "") for m in masks[::97][:N_GOOD]]


def _copy(stem: str, ds: Path, new_stem: str | None = None) -> None:
    new_stem = new_stem or stem
    shutil.copy(ISIC / "images" / f"{stem}.jpg", ds / "images" / f"{new_stem}.jpg")
    shutil.copy(
        ISIC / "masks" / f"{stem}_segmentation.png", ds / "masks" / f"{new_stem}_segmentation.png"
    )


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """20 real ISIC images with expert masks, plus three bad pairs."""
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    stems = _good_stems()
    for stem in stems:
        _copy(stem, ds)
    # A JPEG cut in half (its header is fine, its pixels are not).
    _copy(stems[0], ds, "bad_truncated")
    data = (ds / "images" / "bad_truncated.jpg").read_bytes()
    (ds / "images" / "bad_truncated.jpg").write_bytes(data[: len(data) // 2])
    # A zero-byte image.
    _copy(stems[1], ds, "bad_empty")
    (ds / "images" / "bad_empty.jpg").write_bytes(b"")
    # A mask of another size than its image.
    _copy(stems[2], ds, "bad_size")
    m = Image.open(ds / "masks" / "bad_size_segmentation.png")
    m.resize((128, 100), Image.NEAREST).save(ds / "masks" / "bad_size_segmentation.png")
    return ds


def _failures(out: Path) -> list[dict[str, str]]:
    with open(out / "failures.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_cli_targets_on_real_images_with_bad_files(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["targets", str(dataset), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3
    assert "Traceback" not in captured.err + captured.out
    assert "3 failed" in captured.err

    # Good images: both targets, image-sized, 0/255, close to the expert mask.
    stems = _good_stems()
    ell_dice, gc_dice = [], []
    for stem in stems:
        gt = np.asarray(Image.open(dataset / "masks" / f"{stem}_segmentation.png")) > 0
        for kind, store in (("ellipse", ell_dice), ("grabcut", gc_dice)):
            arr = np.asarray(Image.open(out / kind / f"{stem}.png"))
            assert arr.shape == gt.shape and arr.dtype == np.uint8
            assert set(np.unique(arr).tolist()) <= {0, 255}
            store.append(_dice(arr > 0, gt))
    assert min(ell_dice) > 0.6 and min(gc_dice) > 0.6
    assert np.mean(ell_dice) > 0.84 and np.mean(gc_dice) > 0.84
    # Nothing for the bad files.
    for bad in ("bad_truncated", "bad_empty", "bad_size"):
        assert not (out / "ellipse" / f"{bad}.png").exists()
        assert not (out / "grabcut" / f"{bad}.png").exists()

    # failures.csv: exactly the three bad pairs, with readable reasons.
    rows = _failures(out)
    assert len(rows) == 3
    by_stem = {}
    for row in rows:
        stem = Path(row["file"]).name.split(".")[0].replace("_segmentation", "")
        by_stem[stem] = row["reason"]
    assert set(by_stem) == {"bad_truncated", "bad_empty", "bad_size"}
    assert "truncated" in by_stem["bad_truncated"]
    assert "empty" in by_stem["bad_empty"] and "0 bytes" in by_stem["bad_empty"]
    assert "128" in by_stem["bad_size"] and "256" in by_stem["bad_size"]
    for reason in by_stem.values():
        assert "Traceback" not in reason and "\n" not in reason

    # recist.csv round-trips and matches RECIST derived from the expert masks.
    records = read_recist_csv(out / "recist.csv")
    assert sorted(r.image.name for r in records) == sorted(f"{s}.jpg" for s in stems)
    for rec in records:
        assert rec.image.is_file() and rec.image.parent == dataset / "images"
        assert rec.lesion == 1 and rec.recist.slice_index is None
        gt = read_mask(dataset / "masks" / f"{rec.image.stem}_segmentation.png")
        ref = recist_from_mask(gt)
        np.testing.assert_allclose(rec.recist.long_axis, ref.long_axis, atol=1e-9)
        np.testing.assert_allclose(rec.recist.short_axis, ref.short_axis, atol=1e-9)
    # The ellipse written is the ellipse of that RECIST.
    rec = records[0]
    ell = np.asarray(Image.open(out / "ellipse" / f"{rec.image.stem}.png")) > 0
    np.testing.assert_array_equal(ell, ellipse_mask(rec.recist, ell.shape))


def test_rerun_skips_finished_outputs_and_overwrite_redoes_them(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    first = run_targets(dataset, out)
    assert first.processed == N_GOOD and first.skipped == 0 and len(first.failures) == 3
    stem = _good_stems()[3]
    target = out / "grabcut" / f"{stem}.png"
    before = target.stat().st_mtime_ns
    csv_before = read_recist_csv(out / "recist.csv")

    # Remove one image's grabcut target: only that image is redone.
    (out / "grabcut" / f"{_good_stems()[5]}.png").unlink()
    events: list[ProgressEvent] = []
    second = run_targets(dataset, out, progress=events.append)
    assert second.processed == 1 and second.skipped == N_GOOD - 1
    assert len(second.failures) == 3  # bad files are reported again
    assert target.stat().st_mtime_ns == before
    assert (out / "grabcut" / f"{_good_stems()[5]}.png").is_file()
    # recist.csv still lists every finished image, skipped ones included.
    csv_after = read_recist_csv(out / "recist.csv")
    assert sorted(r.image.name for r in csv_after) == sorted(r.image.name for r in csv_before)
    # One progress event per image in the targets pass, with an ETA while running.
    # (The truncated JPEG is among them: its header, and so its mask's RECIST, is fine.)
    per_image = [e for e in events if not e.message.startswith("RECIST from masks")]
    n = N_GOOD + 1
    assert [e.done for e in per_image[:n]] == list(range(1, n + 1))
    assert {e.total for e in per_image} == {n}
    assert any(e.eta is not None for e in per_image)
    assert "bad_truncated failed" in [e.message for e in per_image]

    third = main(["targets", str(dataset), "--out", str(out), "--overwrite", "-q"])
    assert third == 3
    assert "20 processed, 0 skipped" in capsys.readouterr().err
    assert target.stat().st_mtime_ns > before

    # Ellipse only: the grabcut folder is not needed to count as done.
    only = tmp_path / "only"
    report = run_targets(dataset, only, grabcut=False)
    assert report.processed == N_GOOD and not (only / "grabcut").exists()
    assert run_targets(dataset, only, grabcut=False).skipped == N_GOOD


def test_cancel_keeps_finished_images(dataset, tmp_path):
    out = tmp_path / "out"
    token = CancelToken()

    def progress(event: ProgressEvent) -> None:
        if not event.message.startswith("RECIST from masks") and event.done == 3:
            token.cancel()

    report = run_targets(dataset, out, progress=progress, cancel=token)
    assert report.cancelled and report.exit_code == 130
    assert report.processed == 3
    done = sorted(p.stem for p in (out / "ellipse").glob("*.png"))
    assert done == _good_stems()[:3]
    assert sorted(r.image.stem for r in read_recist_csv(out / "recist.csv")) == done
    # Resuming finishes the rest.
    rest = run_targets(dataset, out)
    assert rest.skipped == 3 and rest.processed == N_GOOD - 3
    # A cancelled --overwrite run still lists every image with targets in recist.csv.
    token = CancelToken()
    again = run_targets(dataset, out, overwrite=True, progress=progress, cancel=token)
    assert again.cancelled and again.processed == 3
    assert len(read_recist_csv(out / "recist.csv")) == N_GOOD


def test_the_datasets_own_recist_csv_is_used(tmp_path):
    stems = _good_stems()[:4]
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    for stem in stems:
        _copy(stem, ds)
    # Hand-placed RECIST, unrelated to the masks; two lesions on the first image;
    # the fourth image's RECIST reaches past the image's edge.
    r1 = Recist([[60, 40], [60, 120]], [[40, 80], [80, 80]])
    r2 = Recist([[180, 150], [200, 220]], [[175, 190], [205, 180]])
    r3 = Recist([[128, 60], [128, 200]], [[90, 130], [170, 130]])
    bad = Recist([[128, 200], [128, 300]], [[100, 250], [150, 250]])
    records = [
        RecistRecord(ds / "images" / f"{stems[0]}.jpg", 1, r1),
        RecistRecord(ds / "images" / f"{stems[0]}.jpg", 2, r2),
        RecistRecord(ds / "images" / f"{stems[1]}.jpg", 1, r3),
        RecistRecord(ds / "images" / f"{stems[3]}.jpg", 1, bad),
    ]
    write_recist_csv(ds / "recist.csv", records)
    out = tmp_path / "out"
    report = run_targets(ds, out)
    # Only images listed in the CSV get targets; the masks are not read.
    assert report.processed == 2
    assert sorted(p.stem for p in (out / "ellipse").glob("*.png")) == sorted(stems[:2])
    ell = read_mask(out / "ellipse" / f"{stems[0]}.png")
    expected = ellipse_mask(r1, (256, 256)) | ellipse_mask(r2, (256, 256))
    np.testing.assert_array_equal(ell, expected)
    np.testing.assert_array_equal(
        read_mask(out / "ellipse" / f"{stems[1]}.png"), ellipse_mask(r3, (256, 256))
    )
    gc = read_mask(out / "grabcut" / f"{stems[0]}.png")
    assert gc.shape == (256, 256) and gc[60, 80] and gc[190, 185]
    # The out-of-image RECIST fails its image, with the lesion and the reason.
    assert report.failures == [
        (str(ds / "images" / f"{stems[3]}.jpg"), "lesion 1: an endpoint lies outside the 256x256 image")
    ]
    back = read_recist_csv(out / "recist.csv")
    assert [(r.image.name, r.lesion) for r in back] == [
        (f"{stems[0]}.jpg", 1), (f"{stems[0]}.jpg", 2), (f"{stems[1]}.jpg", 1)
    ]
    np.testing.assert_allclose(back[1].recist.long_axis, r2.long_axis)


def test_missing_dataset_is_an_input_error(tmp_path, capsys):
    code = main(["targets", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "Traceback" not in err


def test_ct_volume_gets_per_slice_targets(tmp_path):
    nib = pytest.importorskip("nibabel")
    if not (LITS / "ct.nii.gz").is_file():
        pytest.skip(f"LiTS case not found at {LITS}")
    ct = nib.load(str(LITS / "ct.nii.gz"))
    lab = nib.load(str(LITS / "labels.nii.gz"))
    ds = tmp_path / "ct"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    # Six axial slices (the last NIfTI axis) of the real case, tumour only.
    vol = np.asarray(ct.dataobj)[:, :, 64:70]
    tumour = (np.asarray(lab.dataobj)[:, :, 64:70] == 2).astype(np.uint8)
    nib.save(nib.Nifti1Image(vol, ct.affine), str(ds / "images" / "case117.nii.gz"))
    nib.save(nib.Nifti1Image(tumour, lab.affine), str(ds / "masks" / "case117.nii.gz"))
    out = tmp_path / "out"
    report = run_targets(ds, out)
    assert report.failures == [] and report.processed == 1
    gt = read_mask(ds / "masks" / "case117.nii.gz")
    records = read_recist_csv(out / "recist.csv")
    assert len(records) >= 6  # several tumours on every slice
    assert {r.recist.slice_index for r in records} == set(range(6))
    for kind in ("ellipse", "grabcut"):
        m = read_mask(out / kind / "case117.nii.gz")
        assert m.shape == gt.shape
        assert _dice(m, gt) > 0.75
        # Per slice: a slice's targets come from that slice's RECIST only.
        for z in range(6):
            assert m[z].any() == gt[z].any()
