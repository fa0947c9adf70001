"""Undo restores the lesion labels bit for bit, as they were before the undone action.

Real napari viewer. 3D: the LiTS slab sample, the lesion of ``ct_recist.csv`` segmented by
the ellipse and propagated by the "3D lesion" option (as in test_annotator_3d.py); 2D: the
ISIC sample photograph with two drawn lesions. Each test keeps a copy of the labels array
before an action, undoes it and compares the arrays element for element.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)
pytest.importorskip("segmentation_models_pytorch")

from tests.widgets.test_annotator_3d import Recording, _ct_annotator, _lesion  # noqa: E402


def _idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=15000)
    qtbot.wait(20)  # hand-edit flushes run on the next loop turn


def test_undoing_a_3d_commit_removes_the_propagated_label_from_every_other_slice(
        make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget, b = _ct_annotator(viewer, qtbot, Recording())
    _lesion(qtbot, widget, b)
    before = np.asarray(b.labels.data).copy()
    assert np.flatnonzero((before == 1).any(axis=(1, 2))).tolist() == [4]  # the RECIST slice only
    widget.volume_check.setChecked(True)
    widget.commit()
    _idle(qtbot, widget)
    assert len(np.flatnonzero((np.asarray(b.labels.data) == 1).any(axis=(1, 2)))) > 1
    widget.undo()
    _idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(b.labels.data), before)
    les = b.session.lesions[1]
    assert not les.committed and les.volume is None and les.status == "done"
    assert 1 not in b._volumes
    row = next(r for r in b.session.table_rows() if r["lesion"] == 1)
    assert row["volume"] is None and les.area_px == int((before[4] == 1).sum())
    # Committed again, it is 3D again (the undone propagation is not stuck in the way).
    widget.commit()
    _idle(qtbot, widget)
    assert len(np.flatnonzero((np.asarray(b.labels.data) == 1).any(axis=(1, 2)))) > 1


def _brush(viewer, labels, label, where, size=8):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    viewer.layers.selection.active = labels
    labels.selected_label, labels.brush_size, labels.mode = label, size, "paint"
    mouse_press_callbacks(labels, read_only_mouse_event(type="mouse_press", position=list(where)))
    mouse_release_callbacks(labels, read_only_mouse_event(type="mouse_release", position=list(where)))


def _two(qtbot, make_napari_viewer):
    from tests.widgets.test_annotator import two_lesions

    viewer = make_napari_viewer()
    grey = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    widget, b = two_lesions(qtbot, viewer, grey)
    return viewer, widget, b


def test_undo_of_commit_delete_and_paint_gives_the_labels_back_bit_for_bit_2d(
        make_napari_viewer, qtbot):
    viewer, widget, b = _two(qtbot, make_napari_viewer)
    drawn = np.asarray(b.labels.data).copy()
    # A brush stroke on lesion 2 (outside its ellipse), then Undo: the stroke goes.
    r, c = np.argwhere(drawn == 2).max(axis=0)
    _brush(viewer, b.labels, 2, (r + 3, c + 3))
    qtbot.waitUntil(lambda: b.session.lesions[2].edited, timeout=5000)
    painted = np.asarray(b.labels.data).copy()
    assert (painted == 2).sum() > (drawn == 2).sum()
    widget.undo()
    _idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(b.labels.data), drawn)
    assert not b.session.lesions[2].edited
    assert b.session.lesions[2].area_px == int((drawn == 2).sum())
    # Painted again; then delete the hand-edited lesion and undo: its painted mask is
    # back as it was (it used to be segmented again from its lines, the edit lost).
    _brush(viewer, b.labels, 2, (r + 3, c + 3))
    qtbot.waitUntil(lambda: b.session.lesions[2].edited, timeout=5000)
    np.testing.assert_array_equal(np.asarray(b.labels.data), painted)
    b.delete([2])
    _idle(qtbot, widget)
    assert not (np.asarray(b.labels.data) == 2).any()
    widget.undo()
    _idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(b.labels.data), painted)
    assert b.session.lesions[2].edited and b.session.lesions[2].status == "done"
    # Commit, undo: unchanged labels, lesions uncommitted.
    widget.commit()
    _idle(qtbot, widget)
    widget.undo()
    _idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(b.labels.data), painted)
    assert not any(les.committed for les in b.session.lesions.values())


def test_undo_of_a_corrective_click_gives_the_mask_back_as_before_it(make_napari_viewer, qtbot):
    from tests.widgets.test_annotator_correct import press

    viewer, widget, b = _two(qtbot, make_napari_viewer)
    before = np.asarray(b.labels.data).copy()
    area = b.session.lesions[1].area_px
    widget.activate_correct_tool()
    r, c = np.argwhere(before == 1).mean(axis=0)
    press(b.labels, (r, c), ("Shift",))  # remove around the lesion's centre
    _idle(qtbot, widget)
    assert (np.asarray(b.labels.data) == 1).sum() < (before == 1).sum()
    assert b.session.lesions[1].edited
    widget.undo()  # undoes the click (it used to undo lesion 2, the step before it)
    _idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(b.labels.data), before)
    assert sorted(b.session.lesions) == [1, 2]
    assert not b.session.lesions[1].edited and b.session.lesions[1].area_px == area


@pytest.mark.parametrize("how", ["setitem_refresh", "data_setitem", "paint_api", "data_set"])
def test_paint_from_code_counts_as_a_hand_edit_and_is_undone(make_napari_viewer, qtbot, how):
    viewer, widget, b = _two(qtbot, make_napari_viewer)
    drawn = np.asarray(b.labels.data).copy()
    r, c = np.argwhere(drawn == 1).max(axis=0)
    block = (slice(r + 1, r + 6), slice(c + 1, c + 6))  # 25 px next to lesion 1, background
    assert not drawn[block].any()
    if how == "setitem_refresh":  # as a script would: write the array, then refresh
        b.labels.data[block] = 1
        b.labels.refresh()
    elif how == "data_setitem":
        rr, cc = np.mgrid[block]
        b.labels.data_setitem((rr.ravel(), cc.ravel()), 1)
    elif how == "paint_api":  # napari's brush from code: a disc of brush_size 1 = 1 px
        b.labels.brush_size = 1
        b.labels.paint((r + 3, c + 3), 1)
    else:
        new = drawn.copy()
        new[block] = 1
        b.labels.data = new
    qtbot.waitUntil(lambda: b.session.lesions[1].edited, timeout=5000)
    qtbot.wait(20)
    now = np.asarray(b.labels.data)
    assert b.session.lesions[1].area_px == int((now == 1).sum()) > int((drawn == 1).sum())
    assert not b.session.lesions[2].edited  # only the lesion written to
    widget.undo()
    _idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(b.labels.data), drawn)
    assert not b.session.lesions[1].edited


def test_a_refresh_that_changes_nothing_is_no_edit(make_napari_viewer, qtbot):
    viewer, widget, b = _two(qtbot, make_napari_viewer)
    steps = len(b.session._undo)
    b.labels.refresh()
    qtbot.wait(50)
    assert len(b.session._undo) == steps and not any(les.edited for les in b.session.lesions.values())
