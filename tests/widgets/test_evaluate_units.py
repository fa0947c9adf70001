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
