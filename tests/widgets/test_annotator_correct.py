"""The annotator's Correct mode: corrective clicks with real mouse events on the lesions layer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)

from napari_recist_seg.annotation import ShapeSegmenter
from napari_recist_seg.corrective import error_click
from napari_recist_seg.recist import recist_from_mask

from .test_annotator_hands import ISIC, _isic, annotator, idle


def _gt(stem="ISIC_0000000"):
    from PIL import Image

    return np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0


def press(layer, position, modifiers=()):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    ev = dict(position=list(position), modifiers=list(modifiers))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", **ev))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", **ev))


def _dice(a, b):
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture
def lesion(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    image, gt = _isic(), _gt()
    widget, b = annotator(viewer, image, ShapeSegmenter("ellipse"))
    r = recist_from_mask(gt)
    b.shapes.add_lines([r.long_axis, r.short_axis])
    idle(qtbot, widget)
    [les] = b.session.lesions.values()
    assert (np.asarray(b.labels.data) == les.id).any()
    return widget, b, les, gt


def test_clicks_in_correct_mode_move_the_mask_towards_the_expert_mask(qtbot, lesion):
    widget, b, les, gt = lesion
    widget.activate_correct_tool()
    assert widget.viewer.layers.selection.active is b.labels
    start = np.asarray(b.labels.data) == les.id
    current = start
    for _ in range(3):
        c = error_click(current, gt)
        press(b.labels, (c.row, c.col), () if c.positive else ("Shift",))
        current = np.asarray(b.labels.data) == les.id
        assert current[int(c.row), int(c.col)] == c.positive
    assert _dice(current, gt) > _dice(start, gt) + 0.01
    # A hand edit: marked edited, the table's area is the mask's.
    assert les.edited and les.area_px == int(current.sum())
    assert "corrected (3 click(s)" in widget.last_message


def test_shift_click_removes_alt_click_removes_plain_click_adds(qtbot, lesion):
    widget, b, les, gt = lesion
    widget.activate_correct_tool()
    rows, cols = np.nonzero(np.asarray(b.labels.data) == les.id)
    r, c = int(rows.mean()), int(cols.mean())
    press(b.labels, (r, c), ("Shift",))
    assert not np.asarray(b.labels.data)[r, c]
    press(b.labels, (r, c))  # adds it back
    assert np.asarray(b.labels.data)[r, c] == les.id
    press(b.labels, (r, c), ("Alt",))
    assert not np.asarray(b.labels.data)[r, c]


def test_clicks_do_nothing_outside_correct_mode_or_when_committed(qtbot, lesion):
    widget, b, les, gt = lesion
    before = np.asarray(b.labels.data).copy()
    rows, cols = np.nonzero(before == les.id)
    r, c = int(rows.mean()), int(cols.mean())
    press(b.labels, (r, c), ("Shift",))  # not in Correct mode
    assert np.array_equal(np.asarray(b.labels.data), before)
    widget.activate_correct_tool()
    widget.activate_drawing()  # leaving it ends it
    press(b.labels, (r, c), ("Shift",))
    assert np.array_equal(np.asarray(b.labels.data), before)
    widget.commit()
    widget.activate_correct_tool()
    press(b.labels, (r, c), ("Shift",))
    assert np.array_equal(np.asarray(b.labels.data), before)
    assert "committed" in widget.last_message
