"""The annotator's keyboard shortcuts, pressed as real Qt key events on the canvas."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)

from napari_recist_seg.annotation import ShapeSegmenter

from .test_annotator_hands import _isic, annotator, idle

LONG1, SHORT1 = np.array([[60.0, 40], [60, 100]]), np.array([[40.0, 70], [80, 70]])
LONG2, SHORT2 = np.array([[180.0, 140], [180, 220]]), np.array([[160.0, 180], [200, 180]])


def key(qtbot, viewer, letter, qt_key=None):
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    code = qt_key if qt_key is not None else getattr(Qt, f"Key_{letter}")
    qtbot.keyClick(canvas, code, Qt.ShiftModifier)
    qtbot.wait(10)


@pytest.fixture
def two(qtbot, make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    widget, b = annotator(viewer, _isic(), ShapeSegmenter("ellipse"))
    b.shapes.add_lines([LONG1, SHORT1])
    b.shapes.add_lines([LONG2, SHORT2])
    idle(qtbot, widget)
    assert len(b.session.lesions) == 2
    return viewer, widget, b


def test_shift_letters_switch_tools(qtbot, two):
    viewer, widget, b = two
    key(qtbot, viewer, "C")
    assert viewer.layers.selection.active is b.points and b.points.mode == "add"
    key(qtbot, viewer, "R")
    assert viewer.layers.selection.active is b.labels
    assert widget.corrector(b).active
    key(qtbot, viewer, "D")
    assert viewer.layers.selection.active is b.shapes and b.shapes.mode == "add_line"
    assert not widget.corrector(b).active


def test_next_previous_commit_delete_undo_by_key(qtbot, two):
    from qtpy.QtCore import Qt

    viewer, widget, b = two
    ids = sorted(b.session.lesions)
    key(qtbot, viewer, "N")
    assert widget.selected_lesions() == [ids[0]]
    key(qtbot, viewer, "N")
    assert widget.selected_lesions() == [ids[1]]
    key(qtbot, viewer, "N")  # wraps round
    assert widget.selected_lesions() == [ids[0]]
    key(qtbot, viewer, "B")
    assert widget.selected_lesions() == [ids[1]]
    key(qtbot, viewer, "Enter", Qt.Key_Return)
    assert b.session.lesions[ids[1]].committed and not b.session.lesions[ids[0]].committed
    key(qtbot, viewer, "B")
    key(qtbot, viewer, "X")
    assert sorted(b.session.lesions) == [ids[1]]
    said = []
    say = widget._say
    widget._say = lambda text, warn=False: (said.append(text), say(text, warn))
    key(qtbot, viewer, "Z")
    assert any(t.startswith("undone (2 lesion(s) now)") for t in said)  # Undo says so
    idle(qtbot, widget)
    assert sorted(b.session.lesions) == ids
    while b.session.can_undo:
        widget.undo()
    widget.undo()
    assert widget.last_message == "nothing to undo"


def test_keys_are_listed_in_the_dock_and_unbound_when_it_closes(qtbot, two):
    from napari_recist_seg._widgets.annotator_keys import KEYS

    viewer, widget, b = two
    text = widget.keys_label.text()
    for k, _ in KEYS.values():
        assert k.replace("-", "+") in text
    assert "[Shift+D]" in widget.draw_button.toolTip()
    assert "[Shift+Z]" in widget.undo_button.toolTip()
    widget.close()
    key(qtbot, viewer, "C")
    assert viewer.layers.selection.active is not b.points
