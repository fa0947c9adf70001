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
