"""Docks fit a 1366 x 768 laptop screen (issue 13: Evaluate forced a 1166 px window)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)

from napari_recist_seg.annotation import ShapeSegmenter

# 768 px screen minus the title bar, menus and napari's own chrome.
MAX_HEIGHT = 700


pytestmark = pytest.mark.usefixtures("one_thread")


def _warm(qtbot):
    from napari_recist_seg._widgets import train as train_module

    # The Train dock imports the training stack in the background: let it finish.
    qtbot.waitUntil(train_module.warmed_up, timeout=120000)


def _docks(viewer):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget
    from napari_recist_seg._widgets.bulk import BulkSegmentWidget
    from napari_recist_seg._widgets.evaluate import EvaluateWidget
    from napari_recist_seg._widgets.train import TrainWidget

    return {
        "annotator": AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse")),
        "train": TrainWidget(viewer),
        "evaluate": EvaluateWidget(viewer),
        "bulk": BulkSegmentWidget(viewer),
    }


def test_each_dock_asks_for_at_most_700_px_of_height(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    heights = {}
    for name, dock in _docks(viewer).items():
        viewer.window.add_dock_widget(dock, name=name)
        heights[name] = dock.minimumSizeHint().height()
    _warm(qtbot)
    assert all(h <= MAX_HEIGHT for h in heights.values()), heights


def test_annotator_and_train_docked_together_fit_a_768_px_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    docks = _docks(viewer)
    total = sum(docks[k].minimumSizeHint().height() for k in ("annotator", "train"))
    _warm(qtbot)
    assert total <= MAX_HEIGHT, total


def test_the_spacing_field_turns_px_into_mm_for_an_image_without_spacing(qtbot, make_napari_viewer):
    import numpy as np

    from .test_annotator_hands import _isic, annotator, idle

    viewer = make_napari_viewer()
    widget, b = annotator(viewer, _isic(), ShapeSegmenter("ellipse"))
    assert widget.spacing_box.value() == 0.0 and b.session.unit == "px"
    b.shapes.add_lines([np.array([[60.0, 40], [60, 100]]), np.array([[40.0, 70], [80, 70]])])
    idle(qtbot, widget)
    widget.spacing_box.setValue(0.05)
    widget.spacing_box.editingFinished.emit()
    assert b.session.spacing == (0.05, 0.05) and b.session.unit == "mm"
    assert tuple(b.image.scale) == (0.05, 0.05)
    [row] = b.session.table_rows()
    assert abs(row["long_drawn"] - 60 * 0.05) < 1e-6
    assert widget.table.horizontalHeaderItem(2).text() == "L (mm)"
    widget.set_pixel_spacing(None)  # back to unknown
    assert b.session.spacing is None and widget.spacing_box.value() == 0.0
