"""Autosave and restore in a real napari viewer: a crash or a close loses nothing.

The recovery folder is ``RECIST_SEG_RECOVERY_DIR`` -> ``tmp_path``. A session is
drawn (two lesions, one committed, one corrected with the brush), autosaved, the
viewer closed; a new viewer and dock on the same image offer the entry, and restoring
gives back the same lines, the same statuses and the same label array.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)
pytest.importorskip("segmentation_models_pytorch")

from napari_recist_seg import annotation as ann
from napari_recist_seg.annotation import ShapeSegmenter, recovery
from tests.widgets.test_train_widget import StallMeter  # noqa: E402 - one meter for the stall printouts

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "napari_recist_seg" / "sample_data"
ISIC_IMAGE = SAMPLES / "ISIC_0000021.jpg"
LONG1, SHORT1 = np.array([[60.0, 30], [60, 110]]), np.array([[40.0, 65], [80, 75]])
LONG2, SHORT2 = np.array([[180.0, 140], [180, 220]]), np.array([[160.0, 180], [200, 180]])
# Lesion 1 of sample_data/ct_recist.csv on slice 4 of a small volume.
LONG3D = np.array([[4.0, 34, 46], [4, 55, 64]])
SHORT3D = np.array([[4.0, 50.15, 47.13], [4, 35.82, 63.85]])


@pytest.fixture
def rec_dir(tmp_path, monkeypatch):
    folder = tmp_path / "recovery"
    monkeypatch.setenv(recovery.ENV_VAR, str(folder))
    return folder


def _dock(viewer, image, name="img"):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    viewer.add_image(image, name=name, rgb=image.ndim == 3 and image.shape[-1] == 3)
    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    return widget, widget.binding


def _idle(qtbot, widget, timeout=15000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _autosaved(qtbot, widget, count_before):
    qtbot.waitUntil(lambda: widget.autosaves > count_before and not widget.autosave_pending,
                    timeout=10000)


def _statuses(b):
    return {i: ann.lesion_status(b.session, i) for i in b.session.lesions}


def _same_lines(b, lines, recists):
    """The session's RECIST exactly; the layer's lines to 1e-3 px: a drawn line within
    the snap tolerance stays as drawn on the layer, an imported one is drawn snapped."""
    assert [(i, r.long_axis.tolist(), r.short_axis.tolist()) for i, r in b.session.recists()] == [
        (i, r.long_axis.tolist(), r.short_axis.tolist()) for i, r in recists]
    assert len(b.shapes.data) == len(lines)
    for got, want in zip(b.shapes.data, lines):
        np.testing.assert_allclose(got, want, atol=1e-3)


def _draw_commit_correct(qtbot, widget, b):
    """Two lesions, lesion 1 committed, lesion 2's mask corrected (pixels removed)."""
    b.shapes.add_lines([LONG1, SHORT1])
    _idle(qtbot, widget)
    b.shapes.add_lines([LONG2, SHORT2])
    _idle(qtbot, widget)
    widget.commit([1])
    _idle(qtbot, widget)
    lab = np.asarray(b.labels.data)
    rows, cols = np.nonzero(lab == 2)
    cut = np.nonzero((lab == 2) & (np.arange(lab.shape[1])[None, :] > 200))
    assert cut[0].size > 0 and rows.size > cut[0].size
    b.labels.data_setitem(cut, 0)  # a correction, as the eraser writes it
    b.record_edits([2])
    _idle(qtbot, widget)
    assert _statuses(b) == {1: "committed", 2: "draft+edited"}


def test_autosave_after_a_change_and_restore_in_a_new_viewer_round_trips(
        make_napari_viewer, qtbot, rec_dir):
    from napari_recist_seg.data import read_image

    image = read_image(ISIC_IMAGE).array
    viewer = make_napari_viewer()
    widget, b = _dock(viewer, image)
    assert widget.recovery_root == rec_dir
    before = widget.autosaves
    _draw_commit_correct(qtbot, widget, b)
    _autosaved(qtbot, widget, before)
    [entry_dir] = [p for p in rec_dir.iterdir() if p.is_dir()]
    meta = json.loads((entry_dir / "entry.json").read_text())
    assert meta["n_lesions"] == 2 and meta["shape"] == list(b.labels.data.shape)
    lines = [np.asarray(d).copy() for d in b.shapes.data]
    statuses = _statuses(b)
    recists = b.session.recists()
    labels = np.asarray(b.labels.data).copy()
    widget.close()
    viewer.close()  # the session ends without an export

    viewer2 = make_napari_viewer()
    widget2, b2 = _dock(viewer2, image)
    assert widget2.restore_button.isVisibleTo(widget2)
    assert "2 lesions" in widget2.restore_button.text() and "saved" in widget2.restore_button.text()
    assert "autosaved" in widget2.last_message
    assert widget2.restore_recovery() == 2
    _idle(qtbot, widget2)
    assert not widget2.restore_button.isVisibleTo(widget2)
    _same_lines(b2, lines, recists)
    assert _statuses(b2) == statuses
    np.testing.assert_array_equal(np.asarray(b2.labels.data), labels)
    assert b2.session.lesions[2].area_px == int((labels == 2).sum())


def test_dismiss_keeps_the_entry_until_the_next_autosave_and_export_keeps_it(
        make_napari_viewer, qtbot, rec_dir, tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    viewer = make_napari_viewer()
    widget, b = _dock(viewer, grey)
    before = widget.autosaves
    b.shapes.add_lines([LONG1, SHORT1])
    _idle(qtbot, widget)
    _autosaved(qtbot, widget, before)
    widget.export_recist_csv(tmp_path / "out.csv", if_exists="overwrite")
    [entry_dir] = [p for p in rec_dir.iterdir() if p.is_dir()]
    assert (entry_dir / "recist.csv").exists()  # an export does not delete the entry
    widget.close()
    viewer.close()

    viewer2 = make_napari_viewer()
    widget2, b2 = _dock(viewer2, grey)
    assert widget2.restore_button.isVisibleTo(widget2)
    widget2._schedule_autosave(b2)  # a change before the user chose: the entry is not replaced
    assert not widget2.autosave_pending
    widget2.dismiss_recovery()
    assert not widget2.restore_button.isVisibleTo(widget2)
    assert (entry_dir / "recist.csv").exists()  # kept on disk
    before = widget2.autosaves
    b2.shapes.add_lines([LONG2, SHORT2])
    _idle(qtbot, widget2)
    _autosaved(qtbot, widget2, before)
    entry = recovery.read_entry(rec_dir, entry_dir.name, grey.shape)
    assert [r.recist.long_axis[0, 1] for r in entry.records] == [140.0]  # replaced


@pytest.mark.parametrize("closed", ["dock", "window"])
def test_closing_writes_the_last_change_at_once(make_napari_viewer, qtbot, rec_dir, closed):
    # "window": the user closes napari within the autosave delay; napari clears the
    # layers first and never calls the dock's closeEvent.
    grey = np.random.default_rng(2).integers(0, 255, (256, 256), dtype=np.uint8)
    viewer = make_napari_viewer()
    widget, b = _dock(viewer, grey)
    b.shapes.add_lines([LONG1, SHORT1])
    _idle(qtbot, widget)
    assert widget._autosave_timer.isActive() and widget.autosaves == 0  # within the 2 s
    key = widget._recovery_key(b)
    widget.close() if closed == "dock" else viewer.close()
    entry = recovery.read_entry(rec_dir, key, grey.shape)
    assert entry is not None and [r.lesion for r in entry.records] == [1]


def _unwritable(rec_dir, how):
    """Make ``rec_dir`` impossible to write: read-only, or a path under a plain file."""
    if how == "under a file":
        blocker = rec_dir.parent / "a-file"
        blocker.write_text("not a folder")
        return blocker / "recovery"
    rec_dir.mkdir(parents=True)
    os.chmod(rec_dir, 0o500)
    if os.access(rec_dir, os.W_OK):
        os.chmod(rec_dir, 0o700)
        pytest.skip("cannot make a folder read-only here (running as root?)")
    return rec_dir


@pytest.mark.parametrize("how", ["read-only", "under a file"])
def test_an_unwritable_recovery_folder_warns_once_and_never_raises(
        make_napari_viewer, qtbot, rec_dir, monkeypatch, how):
    folder = _unwritable(rec_dir, how)
    monkeypatch.setenv(recovery.ENV_VAR, str(folder))
    try:
        grey = np.random.default_rng(1).integers(0, 255, (128, 128), dtype=np.uint8)
        viewer = make_napari_viewer()
        widget, b = _dock(viewer, grey)
        b.shapes.add_lines([LONG1 / 2, SHORT1 / 2])
        _idle(qtbot, widget)
        qtbot.waitUntil(lambda: widget._autosave_warned and not widget.autosave_pending, timeout=10000)
        assert "autosave failed" in widget.last_message
        widget._say("next")
        b.shapes.add_lines([LONG2 / 2, SHORT2 / 2])
        _idle(qtbot, widget)
        widget.autosave_now(wait=True)
        qtbot.waitUntil(lambda: not widget.autosave_pending, timeout=5000)
        assert "autosave failed" not in widget.last_message  # warned once
        assert len(b.session.lesions) == 2 and widget.autosaves == 0
        widget.close()  # the last write on close fails quietly too
    finally:
        if rec_dir.exists():
            os.chmod(rec_dir, 0o700)


def _ct_dock(viewer, qtbot):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    [layer] = viewer.open(SAMPLES / "lits117_slab.nii.gz", plugin="napari-recist-seg")
    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.binding is not None and not widget.busy, timeout=15000)
    return widget, widget.binding


@pytest.mark.parametrize("as_3d_lesion", [False, True])
def test_a_ct_volume_restores_lines_labels_and_3d_lesions(make_napari_viewer, qtbot, rec_dir, as_3d_lesion):
    viewer = make_napari_viewer()
    widget, b = _ct_dock(viewer, qtbot)
    before = widget.autosaves
    b.shapes.add_lines([LONG3D, SHORT3D])
    _idle(qtbot, widget)
    widget.volume_check.setChecked(as_3d_lesion)
    widget.commit([1])
    _idle(qtbot, widget)
    _autosaved(qtbot, widget, before)
    labels = np.asarray(b.labels.data).copy()
    slices = int((labels == 1).any(axis=(1, 2)).sum())
    assert labels.ndim == 3 and (labels[4] == 1).any() and (slices > 1) == as_3d_lesion
    lines = [np.asarray(d).copy() for d in b.shapes.data]
    recists = b.session.recists()
    volume = b.session.lesions[1].volume
    widget.close()
    viewer.close()

    viewer2 = make_napari_viewer()
    widget2, b2 = _ct_dock(viewer2, qtbot)
    assert widget2.restore_recovery() == 1
    _idle(qtbot, widget2)
    _same_lines(b2, lines, recists)
    assert _statuses(b2) == {1: "committed"}
    np.testing.assert_array_equal(np.asarray(b2.labels.data), labels)
    assert b2.session.lesions[1].volume == volume and (volume is not None) == as_3d_lesion


def test_the_autosave_keeps_the_viewer_responsive(make_napari_viewer, qtbot, rec_dir, capsys):
    from napari_recist_seg.data import read_image

    image = read_image(ISIC_IMAGE).array
    viewer = make_napari_viewer()
    widget, b = _dock(viewer, image)
    b.shapes.add_lines([LONG1, SHORT1])
    b.shapes.add_lines([LONG2, SHORT2])
    _idle(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.autosave_pending, timeout=10000)
    meter = StallMeter()
    meter.timer.start()
    qtbot.wait(50)
    before = widget.autosaves
    start = time.perf_counter()
    widget._autosave_dirty.add(id(b))
    widget.autosave_now()  # the GUI thread's share: the snapshot
    gui_ms = (time.perf_counter() - start) * 1000
    qtbot.waitUntil(lambda: widget.autosaves > before and not widget.autosave_pending, timeout=5000)
    total_ms = (time.perf_counter() - start) * 1000
    qtbot.wait(50)
    meter.timer.stop()
    with capsys.disabled():
        print(f"\n[autosave] {image.shape}: snapshot in the GUI thread {gui_ms:.1f} ms, entry on disk "
              f"after {total_ms:.0f} ms; longest Qt event-loop stall {meter.max_gap * 1000:.0f} ms")
    assert meter.max_gap < 1.0  # the viewer never froze (the figures are in the printout)


def _reopened(make_napari_viewer, segmenter, *, image=None, csv=None):
    """A new viewer (the image, or the CSV opened by the plugin) and its annotator dock."""
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    viewer = make_napari_viewer()
    if csv is not None:
        viewer.open(csv, plugin="napari-recist-seg")
    else:
        viewer.add_image(image, name="img")
    widget = AnnotatorWidget(viewer, segmenter=segmenter)
    viewer.window.add_dock_widget(widget)
    return widget


def _draw_two_lesions(qtbot, widget, b) -> None:
    for long, short in ((LONG1, SHORT1), (LONG2, SHORT2)):
        b.shapes.add_lines([long, short])
        _idle(qtbot, widget)


def _hand_edit_lesion_2(qtbot, widget, b) -> np.ndarray:
    """Erase the right part of lesion 2 with the 'brush', record it, wait for the autosave."""
    before = widget.autosaves
    lab = np.asarray(b.labels.data)
    cut = np.nonzero((lab == 2) & (np.arange(lab.shape[1])[None, :] > 200))
    b.labels.data_setitem(cut, 0)
    b.record_edits([2])
    _idle(qtbot, widget)
    _autosaved(qtbot, widget, before)
    return np.asarray(b.labels.data).copy()


def test_reopening_from_the_exported_csv_offers_the_hand_edits_made_after_it(
        make_napari_viewer, qtbot, rec_dir, tmp_path):
    # Export, then paint a correction (not exported), then a crash; the image reopened
    # through its CSV holds the same lines, so only the entry has the painted mask: it
    # must be offered, and no autosave may replace it before the user chooses.
    import shutil

    from napari_recist_seg._widgets.annotator import AnnotatorWidget
    from napari_recist_seg.data import read_image, read_labels

    img_path = tmp_path / "case.jpg"
    shutil.copy(ISIC_IMAGE, img_path)
    viewer = make_napari_viewer()
    viewer.add_image(read_image(img_path).array, name="case", rgb=True, metadata={"image_path": str(img_path)})
    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    b = widget.binding
    _draw_two_lesions(qtbot, widget, b)
    csv = widget.export_recist_csv(tmp_path / "case_recist.csv", if_exists="error")
    edited = _hand_edit_lesion_2(qtbot, widget, b)
    key = widget._recovery_key(b)
    assert np.array_equal(read_labels(rec_dir / key / recovery.LABELS_FILE), edited)
    widget.close()
    viewer.close()

    widget2 = _reopened(make_napari_viewer, ShapeSegmenter("ellipse"), csv=csv)
    qtbot.waitUntil(lambda: widget2.binding is not None and not widget2.busy, timeout=15000)
    assert widget2._recovery_key(widget2.binding) == key
    assert widget2.restore_button.isVisibleTo(widget2)  # offered
    qtbot.wait(3000)  # longer than the autosave delay
    assert widget2.autosaves == 0
    assert np.array_equal(read_labels(rec_dir / key / recovery.LABELS_FILE), edited)
    assert widget2.restore_recovery() == 1  # lesion 2's painted mask
    qtbot.waitUntil(lambda: not widget2._restoring and not widget2.busy, timeout=15000)
    assert np.array_equal(np.asarray(widget2.binding.labels.data), edited)
    assert widget2.binding.session.lesions[2].edited


class _SlowSegmenter(ShapeSegmenter):
    """A segmenter that takes seconds (a model loading on a busy CPU)."""

    def segment(self, image, recists):
        time.sleep(4)
        return super().segment(image, recists)


def test_a_restore_is_not_replaced_by_an_autosave_while_the_segmenter_works(
        make_napari_viewer, qtbot, rec_dir):
    grey = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    viewer = make_napari_viewer()
    widget, b = _dock(viewer, grey)
    _draw_two_lesions(qtbot, widget, b)
    edited = _hand_edit_lesion_2(qtbot, widget, b)
    key = widget._recovery_key(b)
    widget.close()
    viewer.close()

    from napari_recist_seg.data import read_labels

    widget2 = _reopened(make_napari_viewer, _SlowSegmenter("ellipse"), image=grey)
    assert widget2.restore_recovery() == 2
    qtbot.wait(3000)  # the autosave delay passes while the segmenter still works
    assert widget2._restoring and widget2.autosaves == 0
    assert np.array_equal(read_labels(rec_dir / key / recovery.LABELS_FILE), edited)
    qtbot.waitUntil(lambda: not widget2._restoring and not widget2.busy, timeout=30000)
    assert np.array_equal(np.asarray(widget2.binding.labels.data), edited)


def test_saving_all_images_onto_the_opened_csv_keeps_every_image(make_napari_viewer, qtbot, tmp_path):
    # The dock is open first, then a 4-image RECIST CSV: only the active image was bound,
    # and "Save RECIST CSV" (all images) onto that CSV kept 1 image's rows of 4.
    import shutil

    from napari_recist_seg._widgets.annotator import AnnotatorWidget
    from napari_recist_seg.data import read_recist_csv

    folder = Path(shutil.copytree(SAMPLES, tmp_path / "case"))
    csv = folder / "dermoscopy_recist.csv"
    before = read_recist_csv(csv)
    viewer = make_napari_viewer()
    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    viewer.open(csv, plugin="napari-recist-seg")
    _idle(qtbot, widget, 20000)
    out = widget.export_recist_csv(csv, if_exists="overwrite")
    after = read_recist_csv(out)
    assert len({Path(r.image).name for r in before}) == 4
    assert sorted((Path(r.image).name, r.lesion) for r in after) == sorted(
        (Path(r.image).name, r.lesion) for r in before)


def test_an_entry_written_half_way_never_erases_a_restored_lesions_mask(make_napari_viewer, qtbot, rec_dir):
    # Rows for lesions 1 and 2 over labels that lack lesion 2 (a write stopped between the
    # two files): lesion 2 comes back with the segmenter's mask, not an erased one.
    from napari_recist_seg.data import write_labels

    grey = np.random.default_rng(4).integers(0, 255, (256, 256), dtype=np.uint8)
    viewer = make_napari_viewer()
    widget, b = _dock(viewer, grey)
    before = widget.autosaves
    _draw_two_lesions(qtbot, widget, b)
    _autosaved(qtbot, widget, before)
    key = widget._recovery_key(b)
    labels = np.asarray(b.labels.data).copy()
    widget.close()
    viewer.close()
    write_labels(rec_dir / key / recovery.LABELS_FILE, np.where(labels == 2, 0, labels).astype(labels.dtype))

    widget2 = _reopened(make_napari_viewer, ShapeSegmenter("ellipse"), image=grey)
    assert widget2.restore_recovery() == 2
    qtbot.waitUntil(lambda: not widget2._restoring and not widget2.busy, timeout=15000)
    got = np.asarray(widget2.binding.labels.data)
    assert (got == 2).sum() == (labels == 2).sum() > 0  # the ellipse segmenter's, as before
    assert not widget2.binding.session.lesions[2].edited
