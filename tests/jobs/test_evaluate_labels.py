"""``recist-seg evaluate`` on a ``segment --3d`` output folder (label volumes only)."""

from __future__ import annotations

import numpy as np

from napari_recist_seg.cli import main
from napari_recist_seg.data.masks import write_labels, write_mask
from napari_recist_seg.jobs.evaluate import evaluate_folders


def _folders(tmp_path):
    """``pred/``: ct_labels.nii.gz (lesions 3 and 7, 8 + 4 voxels) and the tables that
    `segment --3d` writes; ``gt/``: ct.nii.gz, 8 voxels of lesion 3 and 4 elsewhere."""
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 3  # 8 voxels
    labels[0, 4:6, 4:6] = 7  # 4 voxels
    gt = np.zeros((4, 6, 6), bool)
    gt[1:3, 1:3, 1:3] = True
    gt[3, 0:2, 4:6] = True  # 4 voxels the prediction misses
    pred, truth = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    truth.mkdir()
    write_labels(pred / "ct_labels.nii.gz", labels, (2.0, 1.0, 1.0))
    (pred / "measurements.csv").write_text("image,lesion\nct.nii.gz,3\nct.nii.gz,7\n")
    write_mask(truth / "ct.nii.gz", gt, (2.0, 1.0, 1.0))
    return pred, truth


def test_a_3d_output_folder_is_scored_with_every_lesion_as_lesion(tmp_path):
    pred, truth = _folders(tmp_path)
    report = evaluate_folders(pred, truth)
    [case] = report.cases
    # 12 predicted voxels, 12 true, 8 shared: Dice 2 * 8 / 24.
    assert case["case"] == "ct"
    assert abs(case["dice"] - 16 / 24) < 1e-9
    assert not report.failures


def test_the_cli_scores_a_3d_output_folder_instead_of_refusing_it(tmp_path, capsys):
    pred, truth = _folders(tmp_path)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(truth)]) == 0
    assert "0.6667" in capsys.readouterr().out
