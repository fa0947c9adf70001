"""Evaluate dock: distance columns say their unit (px, or mm with a spacing)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)


def test_distance_headers_follow_the_spacing_field(make_napari_viewer):
    from napari_recist_seg._widgets.evaluate import EvaluateWidget

    widget = EvaluateWidget(make_napari_viewer())
    heads = lambda t: [t.horizontalHeaderItem(i).text() for i in range(t.columnCount())]  # noqa: E731
    assert "HD95 (px)" in heads(widget.table) and "AVD (px)" in heads(widget.summary_table)
    assert "Dice" in heads(widget.table)  # no unit for overlaps
    widget.spacing.setText("0.5 0.5")
    assert "HD95 (mm)" in heads(widget.table) and "HD (mm)" in heads(widget.summary_table)
    widget.spacing.setText("nonsense")
    assert "HD95 (px)" in heads(widget.table)


def test_scores_an_existing_predictions_folder_without_segmenting(make_napari_viewer, qtbot, tmp_path,
                                                                  make_isic_dataset):
    import shutil

    from napari_recist_seg._widgets.evaluate import EvaluateWidget

    stems = ["ISIC_0000000", "ISIC_0000001"]
    dataset = make_isic_dataset(tmp_path / "val", stems)
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(dataset / "masks" / f"{stems[0]}_segmentation.png", pred / f"{stems[0]}.png")
    widget = EvaluateWidget(make_napari_viewer())
    widget.use_predictions.setChecked(True)
    assert not widget.model_a.isEnabled() and widget.run_button.text() == "Score predictions"
    widget.folder.set_path(dataset)
    assert widget.start() is None and "predictions folder of A" in widget.jobs.error.text()
    widget.pred_a.set_path(pred)
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=60000)
    outcome = widget.jobs.last_outcome.result
    assert outcome.runs[0].evaluation.missing_pred == [stems[1]]
    assert widget.table_values("dice") == {stems[0]: 1.0}  # the rest is scored
    shown = widget.jobs.status.toolTip() or widget.jobs.status.text()
    assert "1 image(s) without a prediction" in shown, shown
    assert sorted(p.name for p in pred.iterdir()) == [f"{stems[0]}.png"]  # nothing segmented


def test_two_prediction_folders_b_minus_a_sd_row_has_no_sign(make_napari_viewer, qtbot, tmp_path,
                                                             make_isic_dataset):
    import numpy as np

    from napari_recist_seg._widgets.evaluate import COLUMNS, EvaluateWidget
    from napari_recist_seg.data import read_mask, write_mask

    stems = ["ISIC_0000000", "ISIC_0000001"]
    dataset = make_isic_dataset(tmp_path / "val", stems)
    folders = {"a": tmp_path / "a", "b": tmp_path / "b"}
    for name, folder in folders.items():
        folder.mkdir()
        for stem in stems:
            mask = read_mask(dataset / "masks" / f"{stem}_segmentation.png")
            if name == "b":  # B misses the top half of every lesion: worse on all metrics
                mask[: int(np.nonzero(mask)[0].mean())] = False
            write_mask(folder / f"{stem}.png", mask)
    widget = EvaluateWidget(make_napari_viewer())
    widget.use_predictions.setChecked(True)
    widget.compare.setChecked(True)
    widget.folder.set_path(dataset)
    widget.pred_a.set_path(folders["a"])
    widget.pred_b.set_path(folders["b"])
    widget.spacing.setText("0.5 0.5")
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=60000)
    t = widget.summary_table
    names = [t.item(r, 0).text() for r in range(t.rowCount())]
    assert names[-2:] == ["B − A mean", "B − A sd"]
    col = {k: i for i, (k, _, _) in enumerate(COLUMNS, start=1)}
    mean_row, sd_row = len(names) - 2, len(names) - 1
    assert t.item(mean_row, col["dice"]).text().startswith("-")
    assert t.item(mean_row, col["hd95"]).text().startswith("+")  # a difference keeps its sign
    assert not any(t.item(sd_row, c).text().startswith("+") for c in col.values())  # a spread: none
    heads = [t.horizontalHeaderItem(i).text() for i in range(t.columnCount())]
    assert {"HD (mm)", "HD95 (mm)", "AVD (mm)"} <= set(heads)
