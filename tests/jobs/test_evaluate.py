"""``evaluate_folders`` and ``recist-seg evaluate`` on real ISIC masks, checked with medpy."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_recist_seg.cli import main
from napari_recist_seg.data.masks import write_mask
from napari_recist_seg.jobs.common import CancelToken, InputError
from napari_recist_seg.jobs.evaluate import case_stem, evaluate_folders

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
ISIC_MASKS = SHARED_DATA / "isic2017_train256" / "masks"

N_CASES = 6


def _load(path: Path) -> np.ndarray:
    # Read independently of the package's reader.
    return np.asarray(Image.open(path)) > 0


@pytest.fixture(scope="module")
def gt_files() -> list[Path]:
    if not ISIC_MASKS.is_dir():
        pytest.skip(f"real ISIC masks not found at {ISIC_MASKS}")
    files = sorted(ISIC_MASKS.glob("*_segmentation.png"))[20:20 + N_CASES + 1]
    assert len(files) == N_CASES + 1
    return files


def _perturb(mask: np.ndarray, i: int) -> np.ndarray:
    """A plausible 'prediction': eroded, dilated or shifted ground truth."""
    if i % 3 == 0:
        return ndimage.binary_erosion(mask, iterations=2 + i)
    if i % 3 == 1:
        return ndimage.binary_dilation(mask, iterations=1 + i)
    return np.roll(mask, (i, -2), axis=(0, 1))


@pytest.fixture()
def folders(tmp_path, gt_files):
    """gt/ and pred/ with mixed file naming, non-mask files, and no problems."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    expected = {}
    for i, f in enumerate(gt_files[:N_CASES]):
        stem = f.name[: -len("_segmentation.png")]
        gt = _load(f)
        # Half the ground truths keep the ISIC name, half are plain <stem>.png.
        gt_name = f.name if i % 2 == 0 else f"{stem}.png"
        shutil.copy(f, gt_dir / gt_name)
        pred = _perturb(gt, i)
        pred_name = f"{stem}_segmentation.png" if i == 1 else f"{stem}.png"
        write_mask(pred_dir / pred_name, pred)
        expected[stem] = (pred, gt)
    # What `recist-seg segment` leaves next to its masks: must be ignored.
    first = next(iter(expected))
    write_mask(pred_dir / f"{first}_labels.png", np.ones((8, 8), bool))
    (pred_dir / "measurements.csv").write_text("image,lesion\n")
    (pred_dir / "failures.csv").write_text("file,reason\n")
    (gt_dir / "notes.txt").write_text("not a mask")
    return pred_dir, gt_dir, expected


def _check_against_medpy(cases: list[dict], expected: dict, scale: float = 1.0) -> None:
    mb = pytest.importorskip("medpy.metric.binary")
    assert sorted(c["case"] for c in cases) == sorted(expected)
    for c in cases:
        pred, gt = expected[c["case"]]
        assert c["dice"] == pytest.approx(mb.dc(pred, gt), abs=1e-3)
        assert c["iou"] == pytest.approx(mb.jc(pred, gt), abs=1e-3)
        assert c["hd"] == pytest.approx(scale * mb.hd(pred, gt), abs=0.5 * scale)
        avd = (mb.asd(pred, gt) + mb.asd(gt, pred)) / 2
        assert c["avd"] == pytest.approx(scale * avd, abs=0.05 * scale)


def test_case_stems():
    assert case_stem("a_segmentation.png") == case_stem("a.PNG") == "a"
    assert case_stem("vol_segmentation.nii.gz") == "vol"
    assert case_stem("a.tif") == case_stem("a.tiff") == "a"
    assert case_stem("a_labels.png") is None
    assert case_stem(".a.tmp.png") is None
    assert case_stem("measurements.csv") is None
    assert case_stem("a.jpg") is None  # lossy: never a mask


def test_evaluate_folders_matches_medpy(folders):
    pred_dir, gt_dir, expected = folders
    events = []
    report = evaluate_folders(pred_dir, gt_dir, progress=events.append)
    assert report.failures == []
    assert report.missing_pred == [] and report.missing_gt == []
    assert report.unit == "px"
    _check_against_medpy(report.cases, expected)
    dices = [c["dice"] for c in report.cases]
    assert report.mean["dice"] == pytest.approx(statistics.mean(dices))
    assert report.sd["dice"] == pytest.approx(statistics.stdev(dices))
    assert [e.done for e in events] == list(range(1, N_CASES + 1))
    assert events[-1].total == N_CASES

    table = report.format_table()
    for stem in expected:
        assert stem in table
    assert "mean" in table and "sd" in table and "±" in table
    assert f"{report.mean['dice']:.4f}" in table


def test_cli_json_and_exit_0(folders, tmp_path, capsys):
    pred_dir, gt_dir, expected = folders
    out = tmp_path / "res" / "eval.json"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out), "-q"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "mean" in stdout
    data = json.loads(out.read_text())
    for key in ("cases", "mean", "sd", "failures", "missing_pred", "missing_gt"):
        assert key in data
    for key in ("dice", "iou", "hd", "hd95", "avd"):
        assert key in data["mean"] and key in data["sd"]
    assert data["failures"] == []
    _check_against_medpy(data["cases"], expected)
    assert data["mean"]["hd"] == pytest.approx(statistics.mean(c["hd"] for c in data["cases"]))


def test_cli_spacing_reports_mm(folders, tmp_path):
    pred_dir, gt_dir, expected = folders
    out = tmp_path / "mm.json"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out),
                 "--spacing", "0.5", "0.5", "-q"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["unit"] == "mm" and data["spacing"] == [0.5, 0.5]
    _check_against_medpy(data["cases"], expected, scale=0.5)


def test_failures_missing_files_and_exit_3(folders, gt_files, tmp_path, capsys):
    pred_dir, gt_dir, expected = folders
    stems = sorted(expected)
    # A prediction of the wrong size.
    bad_size = stems[0]
    for p in pred_dir.glob(f"{bad_size}*.png"):
        if not p.name.endswith("_labels.png"):
            p.unlink()
    write_mask(pred_dir / f"{bad_size}.png", np.ones((128, 128), bool))
    # A truncated (unreadable) prediction.
    truncated = stems[1]
    (pred_path,) = [p for p in pred_dir.glob(f"{truncated}*.png") if "_labels" not in p.name]
    pred_path.write_bytes(pred_path.read_bytes()[:60])
    # A ground truth without prediction, and a prediction without ground truth.
    extra_gt = gt_files[N_CASES]
    shutil.copy(extra_gt, gt_dir / extra_gt.name)
    write_mask(pred_dir / "unlabelled_image.png", np.ones((256, 256), bool))

    report = evaluate_folders(pred_dir, gt_dir)
    failed = {Path(f).name: r for f, r in report.failures}
    assert f"{bad_size}.png" in failed
    assert "(128, 128)" in failed[f"{bad_size}.png"] and "(256, 256)" in failed[f"{bad_size}.png"]
    assert pred_path.name in failed
    extra_stem = extra_gt.name[: -len("_segmentation.png")]
    assert report.missing_pred == [extra_stem]
    assert extra_gt.name in failed
    assert report.missing_gt == ["unlabelled_image"]
    good = {s: expected[s] for s in stems[2:]}
    _check_against_medpy(report.cases, good)

    out = tmp_path / "eval.json"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out), "-q"])
    assert code == 3
    stdout = capsys.readouterr().out
    assert "unlabelled_image" in stdout and extra_stem in stdout and "failure" in stdout
    data = json.loads(out.read_text())
    assert {Path(f["file"]).name for f in data["failures"]} == set(failed)
    assert data["missing_pred"] == [extra_stem] and data["missing_gt"] == ["unlabelled_image"]
    assert len(data["cases"]) == N_CASES - 2


def test_two_files_for_one_case_are_a_failure(folders):
    pred_dir, gt_dir, expected = folders
    stem = sorted(expected)[2]
    (existing,) = [p for p in pred_dir.glob(f"{stem}*.png") if "_labels" not in p.name]
    other = pred_dir / (f"{stem}_segmentation.png" if existing.name == f"{stem}.png" else f"{stem}.png")
    write_mask(other, np.zeros((256, 256), bool))
    report = evaluate_folders(pred_dir, gt_dir)
    assert {Path(f).name for f, _ in report.failures} == {existing.name, other.name}
    assert stem not in [c["case"] for c in report.cases]
    assert report.missing_pred == [] and report.missing_gt == []


def test_dataset_folder_with_masks_subfolder(folders, tmp_path):
    pred_dir, gt_dir, expected = folders
    dataset = tmp_path / "dataset"
    shutil.copytree(gt_dir, dataset / "masks")
    (dataset / "images").mkdir()
    report = evaluate_folders(pred_dir, dataset)
    assert report.failures == []
    assert len(report.cases) == N_CASES


def test_empty_prediction_uses_documented_convention(folders):
    pred_dir, gt_dir, expected = folders
    stem = sorted(expected)[3]
    (existing,) = [p for p in pred_dir.glob(f"{stem}*.png") if "_labels" not in p.name]
    write_mask(existing, np.zeros((256, 256), bool))
    report = evaluate_folders(pred_dir, gt_dir)
    case = next(c for c in report.cases if c["case"] == stem)
    assert case["dice"] == 0.0
    assert case["hd"] == pytest.approx(np.hypot(256, 256))
    json.dumps(report.to_dict(), allow_nan=False)


def test_cancel_keeps_what_is_done(folders):
    pred_dir, gt_dir, _ = folders
    token = CancelToken()

    def stop_after_two(event):
        if event.done == 2:
            token.cancel()

    report = evaluate_folders(pred_dir, gt_dir, progress=stop_after_two, cancel=token)
    assert report.cancelled and len(report.cases) == 2
    assert report.mean["dice"] == pytest.approx(statistics.mean(c["dice"] for c in report.cases))


def test_bad_folders(tmp_path, capsys):
    with pytest.raises(InputError, match="not found"):
        evaluate_folders(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "measurements.csv").write_text("x\n")
    with pytest.raises(InputError, match="no mask files"):
        evaluate_folders(tmp_path / "empty", tmp_path / "empty")
    code = main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().startswith("recist-seg: error:") and "nope" in err
