"""Opening a RECIST CSV with ``viewer.open`` (the plugin's reader) in a real viewer (issue 13).

A CSV exported with committed lesions opens with them committed (locked, green), whether
the annotator dock was opened before or after the CSV.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)
pytest.importorskip("segmentation_models_pytorch")

from napari_recist_seg.annotation import ShapeSegmenter  # noqa: E402
from napari_recist_seg.data import RecistRecord, write_recist_csv  # noqa: E402
from napari_recist_seg.recist import Recist  # noqa: E402

from .test_annotator import LONG1, LONG2, PLUGIN, SHORT1, SHORT2, idle, viewer  # noqa: F401,E402


def _committed_csv(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "scan.png")
    records = [
        RecistRecord(tmp_path / "scan.png", 1, Recist(LONG1, SHORT1), status="committed"),
        RecistRecord(tmp_path / "scan.png", 2, Recist(LONG2, SHORT2), status="draft"),
    ]
    write_recist_csv(tmp_path / "scan_recist.csv", records)
    return tmp_path / "scan_recist.csv"


def _dock(viewer):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    return widget


def _check_committed(qtbot, widget):
    # The dock binds the active image on the next event-loop turn (annotator._on_active_layer
    # defers it): wait for it, or the check races the timer on a busy machine.
    qtbot.waitUntil(lambda: widget.binding is not None, timeout=5000)
    b = widget.binding
    assert b is not None and b.name == "scan"
    idle(qtbot, widget)
    lesions = b.session.lesions
    assert sorted(lesions) == [1, 2]
    assert lesions[1].committed and not lesions[2].committed
    feats = b.shapes.features
    assert set(feats["state"][feats["lesion"] == 1]) == {"committed"}  # drawn locked
    assert set(np.unique(np.asarray(b.labels.data))) == {0, 1, 2}  # both masks pasted


def test_viewer_open_keeps_committed_lesions_committed(qtbot, viewer, tmp_path):
    csv = _committed_csv(tmp_path)
    viewer.open(str(csv), plugin=PLUGIN)
    widget = _dock(viewer)
    viewer.layers.selection.active = viewer.layers["scan"]
    _check_committed(qtbot, widget)


def test_viewer_open_after_the_dock_keeps_committed_lesions(qtbot, viewer, tmp_path):
    widget = _dock(viewer)
    viewer.open(str(_committed_csv(tmp_path)), plugin=PLUGIN)
    viewer.layers.selection.active = viewer.layers["scan"]
    _check_committed(qtbot, widget)


# -- item 7's smaller points, in a real viewer ------------------------------------------


def _grey_annotator(viewer, name="img"):
    grey = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    viewer.add_image(grey, name=name)
    widget = _dock(viewer)
    return widget, widget.binding


def test_draw_recist_in_3d_display_says_why_and_goes_back_to_2d(qtbot, viewer):
    vol = np.random.default_rng(1).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    viewer.add_image(vol, name="vol")
    widget = _dock(viewer)
    viewer.dims.ndisplay = 3
    assert widget.last_message.startswith("3D display: lines cannot be drawn")
    widget.activate_drawing()
    assert viewer.dims.ndisplay == 2  # was: stayed in 3D, pan_zoom, no word
    assert "2D display only" in widget.last_message
    assert widget.binding.shapes.mode == "add_line"


def test_undo_after_a_removed_rectangle_keeps_the_short_axis_and_its_mask(qtbot, viewer):
    widget, b = _grey_annotator(viewer)
    b.shapes.add_lines([LONG1])
    idle(qtbot, widget)
    b.shapes.add_lines([SHORT1])
    idle(qtbot, widget)
    assert b.session.lesions[1].short_id is not None and np.asarray(b.labels.data).any()
    b.shapes.add_rectangles([np.array([[100.0, 100], [100.0, 100.0]])])  # degenerate
    idle(qtbot, widget)
    assert len(b.shapes.data) == 2  # taken away at once
    widget.undo()
    idle(qtbot, widget)
    les = b.session.lesions[1]
    assert les.short_id is not None and les.recist is not None  # was: short axis deleted
    assert set(np.unique(np.asarray(b.labels.data))) == {0, 1}  # and its mask kept
    assert "the removed shape(s) stay removed" in widget.last_message
    widget.undo()  # the next Undo is the short axis, as before
    idle(qtbot, widget)
    assert b.session.lesions[1].short_id is None


def test_each_image_first_lesion_gets_its_own_colour(qtbot, viewer):
    widget, a = _grey_annotator(viewer, "first")
    layer = viewer.add_image(np.zeros((256, 256), np.uint8), name="second")
    b = widget.bind(layer)
    for x in (a, b):
        x.shapes.add_lines([LONG1, SHORT1])
        idle(qtbot, widget)
    assert not np.allclose(a.labels.get_color(1), b.labels.get_color(1))
    assert np.allclose(a.labels.get_color(2), b.labels.get_color(1))  # next along the palette
