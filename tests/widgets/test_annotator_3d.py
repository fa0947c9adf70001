"""The annotator on CT: window presets (CT only) and the "3D lesion" option.

Real napari viewer, the LiTS CT sample (a 9-slice slab of case 117, HU) opened through
the plugin's reader, RECIST lines from the sample's CSV; segmentation by the model-free
ellipse so that the masks are known, propagated by the same core path as
``recist-seg segment --3d`` (``propagate.propagate_lesion``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)
pytest.importorskip("segmentation_models_pytorch")

from napari_recist_seg.annotation import ShapeSegmenter
from tests.widgets.test_train_widget import StallMeter  # noqa: E402 - one meter for the stall printouts

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "napari_recist_seg" / "sample_data"
ISIC_IMAGE = SAMPLES / "ISIC_0000021.jpg"
PLUGIN = "napari-recist-seg"
SCALE = (2.5, 0.8, 0.8)  # the slab's file says 1 mm: a CT-like spacing, for mm^3 / mL
# Lesion 1 of sample_data/ct_recist.csv (slice 4; x, y -> row, col).
LONG = np.array([[4.0, 34, 46], [4, 55, 64]])
SHORT = np.array([[4.0, 50.15, 47.13], [4, 35.82, 63.85]])


class Recording(ShapeSegmenter):
    """The ellipse, recording the CT window it reads through; optionally held at a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__("ellipse")
        self.windows: list[object] = []
        self.gate = gate

    def segment(self, image, recists):
        self.windows.append(self.window)
        if self.gate is not None and recists[0].slice_index != 4:  # off the RECIST slice
            self.gate.wait(10)
        return super().segment(image, recists)


def _ct_annotator(viewer, qtbot, segmenter):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    [layer] = viewer.open(SAMPLES / "lits117_slab.nii.gz", plugin=PLUGIN)
    assert layer.metadata["modality"] == "ct"
    layer.scale = SCALE
    widget = AnnotatorWidget(viewer, segmenter=segmenter)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.binding is not None and not widget.busy, timeout=15000)
    return widget, widget.binding


def _lesion(qtbot, widget, b):
    b.shapes.add_lines([LONG, SHORT])
    qtbot.waitUntil(lambda: not widget.busy and b.session.lesions
                    and all(les.status == "done" for les in b.session.lesions.values()), timeout=15000)


def test_ct_window_presets_set_contrast_and_model_input_and_are_hidden_for_rgb(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    seg = Recording()
    widget, b = _ct_annotator(viewer, qtbot, seg)
    assert widget.window_combo.isVisibleTo(widget) and b.modality == "ct"
    _lesion(qtbot, widget, b)
    assert seg.windows[-1] == "soft_tissue"  # the CLI's default window
    widget.window_combo.setCurrentIndex(widget.window_combo.findData("lung"))
    widget.window_combo.activated.emit(widget.window_combo.currentIndex())
    assert tuple(b.image.contrast_limits) == pytest.approx((-1350.0, 150.0))  # L -600, W 1500
    qtbot.waitUntil(lambda: not widget.busy, timeout=15000)
    assert seg.windows[-1] == "lung"  # the uncommitted lesion was segmented through it
    # An RGB photograph: no CT window, ever; the CT image keeps its own.
    [rgb] = viewer.open(ISIC_IMAGE)
    viewer.layers.selection.active = rgb
    qtbot.waitUntil(lambda: widget.binding is not None and widget.binding.image is rgb, timeout=5000)
    assert not widget.window_combo.isVisibleTo(widget) and not widget.volume_check.isEnabled()
    with pytest.raises(ValueError, match="not CT"):
        widget.binding.set_window("lung")
    # A grey MR volume (the reader says so): no CT window either.
    mr = viewer.add_image(np.linspace(-300, 900, 4 * 32 * 32).reshape(4, 32, 32), name="mr",
                          metadata={"modality": "mr"})
    viewer.layers.selection.active = mr
    qtbot.waitUntil(lambda: widget.binding is not None and widget.binding.image is mr, timeout=5000)
    assert widget.binding.modality == "mr" and not widget.window_combo.isVisibleTo(widget)
    assert widget.volume_check.isEnabled()


def test_a_committed_3d_lesion_spans_slices_with_its_volume_and_can_be_edited(
        make_napari_viewer, qtbot, tmp_path, capsys):
    import pandas as pd

    viewer = make_napari_viewer()
    widget, b = _ct_annotator(viewer, qtbot, Recording())
    _lesion(qtbot, widget, b)
    assert widget.volume_check.isEnabled()
    widget.volume_check.setChecked(True)
    meter = StallMeter()
    meter.timer.start()
    widget.commit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=15000)
    meter.timer.stop()
    lab = np.asarray(b.labels.data)
    zs = np.flatnonzero((lab == 1).any(axis=(1, 2)))
    assert len(zs) > 1 and 4 in zs  # one label, the same id, on every slice it spans
    voxels = int((lab == 1).sum())
    widget._refresh_table()
    row = next(r for r in b.session.table_rows() if r["lesion"] == 1)
    assert row["volume"] == pytest.approx(voxels * np.prod(SCALE))
    assert (row["z_first"], row["z_last"]) == (int(zs[0]), int(zs[-1]))
    cols = [widget.table.horizontalHeaderItem(j).text() for j in range(widget.table.columnCount())]
    assert widget.table.item(0, cols.index("volume")).text() == f"{voxels * np.prod(SCALE) / 1000:.2f} mL"
    assert not widget.table.isColumnHidden(cols.index("volume"))
    with capsys.disabled():
        print(f"\n[annotator 3D] lesion over {len(zs)} slices; longest Qt event-loop stall "
              f"{meter.max_gap * 1000:.0f} ms while it was propagated")
    assert meter.max_gap < 1.0  # the viewer never froze
    # Exported like segment --3d's measurements.csv.
    path = widget.export_measurements(tmp_path / "m.csv", if_exists="overwrite")
    out = pd.read_csv(path).iloc[0]
    assert int(out["volume_voxels"]) == voxels and int(out["n_slices"]) == len(zs)
    assert out["volume_mm3"] == pytest.approx(voxels * np.prod(SCALE), rel=1e-4)
    # napari's label tools edit the 3D label: its volume follows the painting.
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    z = int(zs[-1])
    viewer.dims.set_point(0, z * SCALE[0])
    viewer.layers.selection.active = b.labels
    b.labels.selected_label, b.labels.brush_size, b.labels.mode = 1, 6, "paint"
    where = [z, 100.0, 100.0]  # far from the lesion: new voxels
    mouse_press_callbacks(b.labels, read_only_mouse_event(type="mouse_press", position=where))
    mouse_release_callbacks(b.labels, read_only_mouse_event(type="mouse_release", position=where))
    qtbot.waitUntil(lambda: b.session.lesions[1].edited, timeout=5000)
    painted = int((np.asarray(b.labels.data) == 1).sum())
    assert painted > voxels
    assert b.session.lesions[1].volume["volume_voxels"] == painted


def test_a_3d_result_for_a_lesion_deleted_meanwhile_is_dropped_and_cancel_stops(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    gate = threading.Event()
    widget, b = _ct_annotator(viewer, qtbot, Recording(gate))
    _lesion(qtbot, widget, b)
    widget.volume_check.setChecked(True)
    widget.commit()
    qtbot.waitUntil(lambda: b._volume_worker is not None, timeout=5000)
    assert widget.volume_cancel_button.isVisibleTo(widget)  # progress shown, cancellable
    b.uncommit([1])
    b.delete([1])
    gate.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=15000)
    assert not np.asarray(b.labels.data).any()  # nothing pasted for a lesion that is gone
    # Cancel: the slice mask stays, no 3D label.
    gate.clear()
    _lesion(qtbot, widget, b)
    [les_id] = list(b.session.lesions)
    widget.commit()
    qtbot.waitUntil(lambda: b._volume_worker is not None, timeout=5000)
    widget.cancel_volumes()
    gate.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=15000)
    lab = np.asarray(b.labels.data)
    assert np.flatnonzero((lab == les_id).any(axis=(1, 2))).tolist() == [4]
    assert b.session.lesions[les_id].volume is None and "cancelled" in widget.last_message


def test_make_3d_propagates_a_lesion_committed_before_3d_was_ticked(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget, b = _ct_annotator(viewer, qtbot, Recording())
    _lesion(qtbot, widget, b)
    assert not widget.volume_check.isChecked() and widget.volume_make_button.isEnabled()
    # Selected but not committed: nothing to propagate, and the dock says why.
    widget.select_lesion(1)
    widget.make_volumes()
    assert "commit the selected" in widget.last_message
    assert np.flatnonzero((np.asarray(b.labels.data) == 1).any(axis=(1, 2))).tolist() == [4]
    widget.commit()  # "3D lesion" unticked: a slice mask only
    qtbot.waitUntil(lambda: not widget.busy, timeout=15000)
    assert np.flatnonzero((np.asarray(b.labels.data) == 1).any(axis=(1, 2))).tolist() == [4]
    widget.table.clearSelection()
    widget.make_volumes()  # none selected: every committed 2D lesion
    qtbot.waitUntil(lambda: not widget.busy and b.session.lesions[1].volume is not None, timeout=15000)
    zs = np.flatnonzero((np.asarray(b.labels.data) == 1).any(axis=(1, 2)))
    assert len(zs) > 1 and 4 in zs
    assert b.session.lesions[1].volume["volume_voxels"] == int((np.asarray(b.labels.data) == 1).sum())
    # A 3D lesion is not propagated again (its label may hold edits on other slices).
    before = np.asarray(b.labels.data).copy()
    widget.select_lesion(1)
    widget.make_volumes()
    assert "3D already" in widget.last_message and b._volume_worker is None
    np.testing.assert_array_equal(np.asarray(b.labels.data), before)
