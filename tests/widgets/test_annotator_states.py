"""The annotator's lesion states and messages in a real napari viewer (issue #13, item 7).

- a RECIST CSV exported with committed lesions gives them back committed on import;
- an invalid pair shows no lengths on the canvas;
- the status line speaks of the current image: a late answer of another image's
  worker does not stand there as the current image's, and a removed image's messages
  go with it; the Train dock's "Loading ... into the annotator" gives way to the outcome.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)
pytest.importorskip("segmentation_models_pytorch")

from .test_annotator import LONG1, LONG2, SHORT1, SHORT2, Counting, annotator, grey, idle, viewer  # noqa: F401,E501


def _state(b, lesion_id):
    feats = b.shapes.features
    return set(feats["state"][feats["lesion"] == lesion_id])


def test_committed_lesions_come_back_committed_from_a_recist_csv(qtbot, viewer, grey, tmp_path):
    from napari_recist_seg.data import read_recist_csv

    widget, b = annotator(viewer, grey, name="scan")
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    b.shapes.add_lines([LONG2, SHORT2])
    idle(qtbot, widget)
    widget.commit([1])
    out = widget.export_recist_csv(tmp_path / "r.csv", if_exists="error")
    assert [r.status for r in read_recist_csv(out)] == ["committed", "draft"]

    widget.uncommit([1])
    widget.delete_selected([1, 2])
    idle(qtbot, widget)
    assert not b.session.lesions and not np.asarray(b.labels.data).any()
    assert widget.import_recist_csv(out) == 2
    idle(qtbot, widget)
    lesions = b.session.lesions
    assert sorted(lesions) == [1, 2]
    assert lesions[1].committed and not lesions[2].committed
    assert _state(b, 1) == {"committed"} and _state(b, 2) == {"ok"}  # drawn locked (green)
    assert set(np.unique(np.asarray(b.labels.data))) == {0, 1, 2}  # both masks pasted
    assert widget.table.item(0, 10).text() == "committed"


def test_an_invalid_pair_shows_no_lengths_on_the_canvas(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey)
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    feats = b.shapes.features
    short = int(np.flatnonzero(feats["axis"] == "short")[0])
    data = [np.asarray(d).copy() for d in b.shapes.data]
    data[short] = np.array([[150.0, 200], [210, 200]])  # moved off the long axis
    b.shapes.data = [(d, "line") for d in data]
    idle(qtbot, widget)
    assert b.session.lesions[1].status == "invalid"
    labels = [s for s in b.shapes.features["label"] if s]
    assert labels == ["#1 invalid"]  # was "#1 L 80.0 × W 60.0 px": read as a measurement
    assert widget.table.item(0, 2).text() == ""  # no drawn L in the table either


def test_a_late_answer_of_another_image_does_not_take_the_status_line(qtbot, viewer, grey):
    gate = threading.Event()
    widget, a = annotator(viewer, grey, Counting(gate=gate), name="first")
    a.shapes.add_lines([LONG1, SHORT1])  # segmenting, held by the gate
    b = widget.bind(viewer.add_image(grey[::-1].copy(), name="second"))
    assert widget.binding is b and widget.last_message.startswith("second: draw")
    prompt = widget.last_message
    gate.set()
    idle(qtbot, widget)
    assert a.session.lesions[1].status == "done"  # the first image got its mask
    assert widget.last_message == prompt  # not "lesion 1: L 80.0 × ..." (the first image's)


def test_a_late_failure_of_another_image_names_it(qtbot, viewer, grey):
    gate = threading.Event()
    widget, a = annotator(viewer, grey, Counting(gate=gate, fail=True), name="first")
    a.shapes.add_lines([LONG1, SHORT1])
    widget.bind(viewer.add_image(grey[::-1].copy(), name="second"))
    gate.set()
    idle(qtbot, widget)
    assert widget.last_message.startswith("first: lesion 1: segmentation failed")


def test_a_removed_image_takes_its_messages_along(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey, Counting(fail=True), name="scan")
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    assert "segmentation failed" in widget.last_message
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    assert widget.binding is None
    assert widget.last_message == "scan was removed: select an image layer"


def test_the_train_docks_loading_line_gives_way_to_the_outcome(qtbot, viewer, grey,
                                                              tiny_a1_ckpt, tmp_path):
    from napari_recist_seg._widgets import train as train_module

    widget, _ = annotator(viewer, grey)
    train = train_module.TrainWidget(viewer)
    qtbot.waitUntil(train_module.warmed_up, timeout=120000)  # its background import
    train.checkpoint = tiny_a1_ckpt
    train.use_model()
    assert train.summary.text().endswith(f"Loading {tiny_a1_ckpt.name} into the annotator…")
    qtbot.waitUntil(lambda: not widget.loading, timeout=60000)
    assert "Loading" not in train.summary.text()
    assert f"The annotator now uses {tiny_a1_ckpt.name}." in train.summary.text()
    # A checkpoint that cannot load says so (and the annotator keeps its model).
    train.checkpoint = tmp_path / "missing"
    train.use_model()
    qtbot.waitUntil(lambda: not widget.loading, timeout=60000)
    assert "Loading" not in train.summary.text()
    assert "missing was not loaded into the annotator" in train.summary.text()
