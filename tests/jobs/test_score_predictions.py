"""Scoring an existing predictions folder (``recist-seg segment``'s output) without segmenting."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg.data import read_mask, write_mask
from napari_recist_seg.jobs.common import InputError
from napari_recist_seg.jobs.compare import score_predictions

STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]


def _predictions(dataset: Path, out: Path) -> Path:
    """Predictions named as the segment job names them: ``<stem>.png`` and ``<stem>_labels.png``.

    Case 0 is the ground truth itself, case 1 the ground truth without its top half,
    case 2 has no prediction at all.
    """
    out.mkdir()
    gt0 = dataset / "masks" / f"{STEMS[0]}_segmentation.png"
    shutil.copy(gt0, out / f"{STEMS[0]}.png")
    shutil.copy(gt0, out / f"{STEMS[0]}_labels.png")  # ignored, as by `recist-seg evaluate`
    gt1 = read_mask(dataset / "masks" / f"{STEMS[1]}_segmentation.png")
    half = gt1.copy()
    half[: int(np.nonzero(gt1)[0].mean())] = False
    write_mask(out / f"{STEMS[1]}.png", half)
    (out / "measurements.csv").write_text("image,lesion\n")
    return out


def test_scores_existing_predictions_and_counts_the_missing_ones(tmp_path, make_isic_dataset):
    dataset = make_isic_dataset(tmp_path / "val", STEMS)
    pred = _predictions(dataset, tmp_path / "pred")
    before = sorted(p.name for p in pred.iterdir())
    result = score_predictions(dataset, [("A pred", pred)])
    (run,) = result.runs
    ev = run.evaluation
    dice = {c["case"]: c["dice"] for c in ev.cases}
    assert set(dice) == set(STEMS[:2])
    assert dice[STEMS[0]] == pytest.approx(1.0) and 0.3 < dice[STEMS[1]] < 0.9
    assert "long_error" in ev.cases[0]  # the dock's L / W errors are added too
    assert ev.missing_pred == [STEMS[2]]
    assert "1 image(s) without a prediction" in result.summary()
    assert any("no predicted mask" in r for _, r in result.failures)
    assert sorted(p.name for p in pred.iterdir()) == before  # nothing written or segmented


def test_missing_predictions_folder_is_a_one_line_error(tmp_path, make_isic_dataset):
    dataset = make_isic_dataset(tmp_path / "val", STEMS[:1])
    with pytest.raises(InputError, match="prediction folder not found"):
        score_predictions(dataset, [("A", tmp_path / "nope")])


def test_cli_scores_a_segment_folder_and_says_how_many_are_missing(tmp_path, make_isic_dataset, capsys):
    from napari_recist_seg.cli import main

    dataset = make_isic_dataset(tmp_path / "val", STEMS)
    pred = _predictions(dataset, tmp_path / "pred")
    assert main(["evaluate", "--predictions", str(pred), "--gt", str(dataset), "-q"]) == 3
    out = capsys.readouterr().out
    assert "2 case(s) evaluated" in out and f"no prediction for 1 case(s): {STEMS[2]}" in out
