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


# -- 2. hand corrections are first-class -------------------------------------------------


def _one_lesion(qtbot, viewer, segmenter=None):
    widget, b = annotator(viewer, _isic(), segmenter)
    b.shapes.add_lines([np.array([[128.0, 80], [128, 170]]), np.array([[100.0, 125], [156, 125]])])
    idle(qtbot, widget)
    assert b.session.lesions[1].status == "done"
    return widget, b


def _table_value(widget, header):
    headers = [widget.table.horizontalHeaderItem(j).text() for j in range(widget.table.columnCount())]
    j = next(j for j, h in enumerate(headers) if h.startswith(header))
    return widget.table.item(0, j).text()


def test_brush_and_eraser_update_area_and_mask_lengths_live_and_in_exports(qtbot, viewer, tmp_path):
    import pandas as pd

    widget, b = _one_lesion(qtbot, viewer)
    before = int((np.asarray(b.labels.data) == 1).sum())
    long_before = b.session.lesions[1].measured.long_length
    labels = b.labels
    viewer.layers.selection.active = labels
    labels.selected_label = 1
    labels.brush_size = 12
    labels.mode = "paint"
    drag(labels, [128, 170], [128, 200])  # extend the lesion to the right by hand
    qtbot.waitUntil(lambda: b.session.lesions[1].edited, timeout=5000)
    widget._refresh_table()
    painted = int((np.asarray(labels.data) == 1).sum())
    assert painted > before
    les = b.session.lesions[1]
    assert les.area_px == painted
    assert les.measured.long_length > long_before + 20  # measured on the painted mask
    assert _table_value(widget, "area") == f"{painted:.0f}"
    assert _table_value(widget, "edited") == "edited"
    labels.mode = "erase"
    drag(labels, [110, 125], [146, 125])  # erase a band
    qtbot.waitUntil(lambda: b.session.lesions[1].area_px < painted, timeout=5000)
    erased = int((np.asarray(labels.data) == 1).sum())
    assert b.session.lesions[1].area_px == erased < painted
    path = widget.export_measurements(tmp_path / "m.csv", if_exists="overwrite")
    row = pd.read_csv(path).iloc[0]
    assert int(row["area_px"]) == erased and bool(row["edited"])


def test_moving_a_line_of_an_edited_lesion_keeps_the_edit(qtbot, viewer):
    from tests.widgets.test_annotator import Counting  # noqa: F401 - same helper

    seg = Counting()
    widget, b = _one_lesion(qtbot, viewer, seg)
    labels = b.labels
    labels.selected_label = 1
    labels.brush_size = 10
    labels.mode = "paint"
    drag(labels, [128, 170], [128, 195])
    qtbot.waitUntil(lambda: b.session.lesions[1].edited, timeout=5000)
    edited = np.asarray(labels.data).copy()
    calls = len(seg.calls)
    data = [np.asarray(d) for d in b.shapes.data]
    data[0] = data[0] + np.array([4.0, 0.0])  # move the long axis down 4 rows
    b.shapes.data = [(d, "line") for d in data]
    idle(qtbot, widget)
    assert len(seg.calls) == calls  # not re-segmented
    np.testing.assert_array_equal(np.asarray(labels.data), edited)
    assert "edited by hand" in widget.last_message
    # Re-segment with the lesion selected: the user asked, the edit is replaced.
    widget.select_lesion(1)
    widget.resegment()
    idle(qtbot, widget)
    assert len(seg.calls) == calls + 1 and not b.session.lesions[1].edited


def test_fill_with_background_removes_the_mask_but_keeps_the_lesion(qtbot, viewer):
    widget, b = _one_lesion(qtbot, viewer)
    b.labels.fill((128, 125), 0)
    qtbot.waitUntil(lambda: b.session.lesions[1].edited, timeout=5000)
    assert b.session.lesions[1].area_px == 0 and not (np.asarray(b.labels.data) == 1).any()
    assert b.session.lesions[1].recist is not None  # the lines are kept


def test_import_masks_loads_an_expert_mask_for_editing(qtbot, viewer, tmp_path):
    import shutil

    mask_path = ISIC / "masks" / "ISIC_0000000_segmentation.png"
    if not mask_path.is_file():
        pytest.skip("real ISIC masks not found")
    from napari_recist_seg.data import read_mask

    expert = read_mask(mask_path).astype(bool)
    shutil.copy(mask_path, tmp_path / "m.png")
    widget, b = annotator(viewer, _isic())
    assert widget.import_masks(tmp_path / "m.png") == 1
    idle(qtbot, widget)
    les = b.session.lesions[1]
    assert les.edited and les.status == "done" and les.recist is not None
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 1, expert)
    assert les.area_px == int(expert.sum())
    # A mask of another size is refused with the reason; nothing changes.
    np.save(tmp_path / "small.npy", np.ones((10, 10), np.uint8))
    assert widget.import_masks(tmp_path / "small.npy") == 0
    assert "10x10" in widget.last_message and list(b.session.lesions) == [1]


# -- 3. click-to-segment says when it found no lesion ------------------------------------


def test_a_click_on_plain_skin_is_refused_and_a_click_on_the_lesion_is_added(qtbot, viewer):
    from napari_recist_seg.annotation import load_segmenter

    if not (REPO / "napari_recist_seg" / "models" / "default" / "config.json").is_file():
        pytest.skip("the default model is not shipped")
    widget, b = annotator(viewer, _isic("ISIC_0000019"), load_segmenter("default", device="cpu"))
    b.click((240.0, 240.0))  # skin corner, far from the lesion
    idle(qtbot, widget, timeout=60000)
    assert not b.session.lesions
    assert "no lesion found" in widget.last_message
    assert "segmenting" not in widget.status.text()
    from napari_recist_seg.data import read_mask

    expert = read_mask(ISIC / "masks" / "ISIC_0000019_segmentation.png").astype(bool)
    rr, cc = np.nonzero(expert)
    b.click((float(rr.mean()), float(cc.mean())))
    idle(qtbot, widget, timeout=60000)
    assert list(b.session.lesions) == [1]
    assert widget.last_message.startswith("click: lesion 1")
