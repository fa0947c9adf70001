"""The annotator in real hands: stray clicks, wrong partners, hand edits, clicks, keys.

Real napari viewer, real ISIC images, lines drawn with real mouse events on the
Shapes layer (napari's own press / move / release callbacks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)
pytest.importorskip("segmentation_models_pytorch")

from napari_recist_seg.annotation import ShapeSegmenter
from napari_recist_seg.targets import ellipse_mask

REPO = Path(__file__).resolve().parents[2]
ISIC = REPO / ".." / "shared" / "data" / "isic2017_train256"


def _isic(stem: str = "ISIC_0000000") -> np.ndarray:
    from napari_recist_seg.data import read_image

    path = ISIC / "images" / f"{stem}.jpg"
    if not path.is_file():
        pytest.skip(f"real ISIC data not found at {path}")
    return read_image(path).array


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def annotator(viewer, image, segmenter=None):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    viewer.add_image(image, name="img", rgb=image.ndim == 3)
    widget = AnnotatorWidget(viewer, segmenter=segmenter or ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    return widget, widget.binding


def idle(qtbot, widget, timeout=15000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def drag(layer, start, end):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=list(start)))
    mid = (np.asarray(start, float) + np.asarray(end, float)) / 2
    for pos in (mid, end):
        mouse_move_callbacks(
            layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=list(pos))
        )
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=list(end)))


# -- 1. pairing that forgives hands ---------------------------------------------------


def test_a_stray_line_is_dropped_and_the_real_axes_give_the_mask_at_their_crossing(qtbot, viewer):
    image = _isic()
    widget, b = annotator(viewer, image)
    viewer.camera.zoom = 2.0  # 4 screen px = 2 data px
    b.shapes.scale_factor = 0.001  # vertices never overlap the clicks below
    drag(b.shapes, [40, 40], [40, 41])  # a 1 px stray click-drag
    idle(qtbot, widget)
    assert not b.session.lesions and len(b.shapes.data) == 0
    assert "stray" in widget.last_message
    drag(b.shapes, [128, 60], [128, 190])  # long axis
    idle(qtbot, widget)
    drag(b.shapes, [90, 125], [166, 125])  # short axis, crossing at (128, 125)
    idle(qtbot, widget)
    assert list(b.session.lesions) == [1]
    les = b.session.lesions[1]
    assert les.status == "done"
    labels = np.asarray(b.labels.data)
    assert labels[128, 125] == 1
    np.testing.assert_array_equal(labels == 1, ellipse_mask(les.recist, labels.shape))


def test_the_stray_threshold_follows_the_zoom(qtbot, viewer):
    widget, b = annotator(viewer, _isic())
    viewer.camera.zoom = 0.5  # zoomed out: 4 screen px = 8 data px
    b.shapes.add_lines([np.array([[100.0, 100], [100, 106]])])  # 6 data px = 3 screen px
    idle(qtbot, widget)
    assert not b.session.lesions
    viewer.camera.zoom = 4.0  # zoomed in: the same 6 px line is 24 screen px, an axis
    b.shapes.add_lines([np.array([[100.0, 100], [100, 106]])])
    idle(qtbot, widget)
    assert [les.status for les in b.session.lesions.values()] == ["open"]


def test_a_leftover_line_does_not_capture_the_next_pair(qtbot, viewer):
    widget, b = annotator(viewer, _isic())
    leftover = np.array([[30.0, 20], [30, 80]])
    b.shapes.add_lines([leftover])
    idle(qtbot, widget)
    b.shapes.add_lines([np.array([[128.0, 60], [128, 190]])])  # does not cross the leftover
    idle(qtbot, widget)
    assert b.session.lesions[1].status == "invalid" and "no partner" in b.session.lesions[1].message
    b.shapes.add_lines([np.array([[90.0, 125], [166, 125]])])  # crosses the new long axis
    idle(qtbot, widget)
    les = b.session.lesions[2]
    assert les.status == "done" and les.short_id is not None
    assert np.asarray(b.labels.data)[128, 125] == 2
    np.testing.assert_allclose(b.session.lines[b.session.lesions[1].long_id], leftover)  # kept


def test_an_endpoint_dragged_past_the_border_is_clipped_and_the_mask_stays(qtbot, viewer):
    widget, b = annotator(viewer, _isic())
    b.shapes.add_lines([np.array([[128.0, 60], [128, 250]]), np.array([[90.0, 150], [166, 150]])])
    idle(qtbot, widget)
    assert b.session.lesions[1].status == "done"
    data = [np.asarray(d) for d in b.shapes.data]
    data[0] = np.array([[128.0, 60], [128, 258.5]])  # 3 px past the 256 px border
    b.shapes.data = [(d, "line") for d in data]
    idle(qtbot, widget)
    les = b.session.lesions[1]
    assert les.status == "done"
    assert b.session.lines[les.long_id][:, 1].max() == pytest.approx(255.5)
    assert (np.asarray(b.labels.data) == 1).sum() > 1000
