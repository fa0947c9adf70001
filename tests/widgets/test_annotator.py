"""The RECIST annotator dock in a real napari viewer.

Lines are added from code (``add_lines``, ``layer.data = ...``, ``remove_selected``),
which fires the same ``events.data`` as the mouse; the test then waits for the worker
with ``qtbot.waitUntil``. Most tests use the model-free ellipse segmenter (its masks
are known exactly, see ``targets.ellipse_mask``); the model test uses the default model
when it ships, else a tiny untrained checkpoint (the widget must reproduce the
predictor's own output either way).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

# torch (and through segmentation-models-pytorch, torchvision -> triton) must be imported
# before Qt/OpenGL start: importing triton afterwards crashes the process.
torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

from napari_recist_seg.annotation import ShapeResult, ShapeSegmenter
from napari_recist_seg.recist import Recist, recist_from_mask
from napari_recist_seg.targets import ellipse_mask

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / ".." / "shared" / "data"
ISIC = SHARED_DATA / "isic2017_train256"
SAMPLES = REPO / "napari_recist_seg" / "sample_data"
PLUGIN = "napari-recist-seg"


# -- helpers ---------------------------------------------------------------------------


class Counting:
    """Wraps a segmenter and records the RECIST of every call (from the worker thread)."""

    def __init__(self, inner=None, *, gate: threading.Event | None = None, fail: bool = False):
        self.inner = inner or ShapeSegmenter("ellipse")
        self.name = "counting ellipse"
        self.device = "cpu"
        self.calls: list[list[Recist]] = []
        self.gate = gate
        self.fail = fail

    def segment(self, image, recists):
        self.calls.append(list(recists))
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the model crashed")
        return self.inner.segment(image, recists)


def _isic(stem: str) -> tuple[np.ndarray, np.ndarray]:
    from napari_recist_seg.data import read_image, read_mask

    if not (ISIC / "images").is_dir():
        pytest.skip(f"real ISIC data not found at {ISIC}")
    return (
        read_image(ISIC / "images" / f"{stem}.jpg").array,
        read_mask(ISIC / "masks" / f"{stem}_segmentation.png"),
    )


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def annotator(viewer, image, segmenter=None, *, name="img", **layer_kwargs):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    layer = viewer.add_image(image, name=name, **layer_kwargs)
    widget = AnnotatorWidget(viewer, segmenter=segmenter or ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    assert widget.binding is not None and widget.binding.image is layer
    return widget, widget.binding


def idle(qtbot, widget, timeout=15000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def ellipse_of(binding, lesion_id) -> np.ndarray:
    r = binding.session.lesions[lesion_id].recist
    return ellipse_mask(r, binding.labels.data.shape)


LONG1, SHORT1 = np.array([[60.0, 30], [60, 110]]), np.array([[40.0, 65], [80, 75]])
LONG2, SHORT2 = np.array([[180.0, 140], [180, 220]]), np.array([[160.0, 180], [200, 180]])


@pytest.fixture
def grey():
    return np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)


def two_lesions(qtbot, viewer, image, segmenter=None):
    widget, b = annotator(viewer, image, segmenter)
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    b.shapes.add_lines([LONG2, SHORT2])
    idle(qtbot, widget)
    assert sorted(b.session.lesions) == [1, 2]
    return widget, b


# -- layers and the model --------------------------------------------------------------


def test_layers_follow_the_image_scale_and_translate(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey, scale=(0.5, 0.7), translate=(10, 20))
    assert b.shapes.name == "img RECIST" and b.labels.name == "img lesions"
    for layer in (b.shapes, b.labels):
        assert tuple(layer.scale) == (0.5, 0.7) and tuple(layer.translate) == (10, 20)
    assert b.shapes.ndim == 2 and b.labels.data.shape == grey.shape
    assert b.session.spacing == (0.5, 0.7)
    assert viewer.layers.selection.active is b.shapes and b.shapes.mode == "add_line"
    # Masks sit under the lines.
    assert viewer.layers.index(b.labels) < viewer.layers.index(b.shapes)


def _model_segmenter(tmp_path_factory):
    import torch

    from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor

    torch.set_num_threads(1)
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return Predictor.load(None, device="cpu"), True
    from napari_recist_seg.clusters import ClusterModel
    from napari_recist_seg.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(mode="a1l", n_clusters=3, input_size=64, decoder_channels=32)
    clusters = ClusterModel(np.random.default_rng(0).normal(size=(3, 7)), np.zeros(7), np.ones(7))
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", build_model(cfg, pretrained=False), cfg, clusters)
    return Predictor.load(path, device="cpu"), False


def test_pairs_from_code_on_real_images_match_the_predictor(qtbot, viewer, tmp_path_factory):
    from napari_recist_seg.predict import Predictor

    predictor, trained = _model_segmenter(tmp_path_factory)
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    widget = AnnotatorWidget(viewer, segmenter=predictor)
    viewer.window.add_dock_widget(widget)
    assert "cpu" in widget.device_label.text()
    dices = []
    for stem in ("ISIC_0000048", "ISIC_0000057", "ISIC_0000013"):
        image, expert = _isic(stem)
        layer = viewer.add_image(image, name=stem)
        b = widget.bind(layer)
        r = recist_from_mask(expert)
        b.shapes.add_lines([r.long_axis, r.short_axis])
        idle(qtbot, widget)
        les = b.session.lesions[1]
        assert les.status == "done", les.message
        np.testing.assert_allclose(les.recist.long_axis, r.long_axis, atol=1e-3)
        got = np.asarray(b.labels.data) == 1
        [ref] = Predictor.segment(predictor, image, [les.recist])
        ref_mask = ref.full_mask(image.shape)
        np.testing.assert_array_equal(got, ref_mask)
        assert _dice(got, expert) == pytest.approx(_dice(ref_mask, expert))
        row = b.session.table_rows()[0]
        assert row["cluster"] == ref.cluster and row["confidence"] == pytest.approx(ref.confidence)
        dices.append(_dice(got, expert))
    if trained:
        assert np.mean(dices) > 0.75, dices


# -- drawing rules ---------------------------------------------------------------------


def test_second_line_snaps_and_a_longer_one_swaps(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey)
    b.shapes.add_lines([np.array([[100.0, 80], [100, 120]])])
    idle(qtbot, widget)
    assert not (np.asarray(b.labels.data) > 0).any()  # one line: no lesion yet
    b.shapes.add_lines([np.array([[40.0, 100], [160, 104]])])
    idle(qtbot, widget)
    data = [np.asarray(d) for d in b.shapes.data]
    # The second line rotated perpendicular through the crossing (col 102), 120 px long:
    # longer than the first (40 px), so it is the long axis now.
    np.testing.assert_allclose(data[1], [[40, 102], [160, 102]], atol=1e-4)
    assert list(b.shapes.features["axis"]) == ["short", "long"]
    assert list(b.shapes.features["label"]) == ["", "#1 L 120.0 × W 40.0 px"]
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 1, ellipse_of(b, 1))
    assert widget.table.rowCount() == 1 and widget.table.item(0, 2).text() == "120.0"
    assert widget.last_message.startswith("lesion 1: L 120.0 × W 40.0 px; mask L ")


def test_line_colours_follow_the_axes_after_segmentation_or_a_slow_model(qtbot, viewer, grey):
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_recist_seg._widgets.annotator_binding import COLOURS

    long_c, short_c = (transform_color(COLOURS[k])[0] for k in ("long", "short"))
    gate = threading.Event()
    widget, b = annotator(viewer, grey, Counting(gate=gate))
    b.shapes.add_lines([LONG1, SHORT1])
    # The model is still running (gated): the colours come anyway, after a short delay.
    qtbot.waitUntil(lambda: np.allclose(np.asarray(b.shapes.edge_color), [long_c, short_c]), timeout=3000)
    assert widget.busy
    gate.set()
    idle(qtbot, widget)
    b.shapes.add_lines([LONG2, SHORT2])
    idle(qtbot, widget)  # a fast model: recoloured when the worker finishes
    np.testing.assert_allclose(np.asarray(b.shapes.edge_color), [long_c, short_c] * 2)


def test_the_canvas_waits_for_a_mask_but_never_long(qtbot, viewer, grey):
    gate = threading.Event()
    widget, b = annotator(viewer, grey, Counting(gate=gate))
    canvas = viewer.window._qt_viewer.canvas.native
    b.shapes.add_lines([LONG1, SHORT1])
    assert not canvas.updatesEnabled()  # one frame will show the lines and the mask
    # A slow model: the canvas repaints anyway after a short hold.
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)
    assert widget.busy
    gate.set()
    idle(qtbot, widget)
    b.shapes.add_lines([LONG2, SHORT2])
    idle(qtbot, widget)  # a fast model: released as soon as the mask is in
    assert canvas.updatesEnabled()
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 2, ellipse_of(b, 2))


def test_lengths_in_mm_from_the_image_scale(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey, scale=(0.5, 0.5))
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    assert list(b.shapes.features["label"])[0] == "#1 L 40.0 × W 20.0 mm"
    assert widget.table.horizontalHeaderItem(2).text() == "L (mm)"
    # The user sets the real pixel size afterwards: lengths follow.
    b.image.scale = (0.25, 0.25)
    idle(qtbot, widget)
    assert list(b.shapes.features["label"])[0] == "#1 L 20.0 × W 10.0 mm"
    assert tuple(b.labels.scale) == (0.25, 0.25) and widget.table.item(0, 2).text() == "20.0"


def test_a_non_crossing_second_line_gets_a_message(qtbot, viewer, grey, monkeypatch):
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(msg))
    widget, b = annotator(viewer, grey)
    first, second = np.array([[50.0, 50], [50, 100]]), np.array([[120.0, 150], [160, 150]])
    b.shapes.add_lines([first, second])
    idle(qtbot, widget)
    assert any("does not cross" in m for m in shown)
    assert "does not cross" in widget.last_message
    assert not (np.asarray(b.labels.data) > 0).any()
    np.testing.assert_allclose(b.shapes.data[1], second)  # kept as drawn
    assert "invalid" in widget.table.item(0, 10).text()


def test_quick_mode_proposes_the_short_axis(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey)
    widget.quick_check.setChecked(True)
    widget.quick_ratio.setValue(0.5)
    b.shapes.add_lines([np.array([[100.0, 50], [100, 150]])])
    idle(qtbot, widget)
    assert len(b.shapes.data) == 2
    np.testing.assert_allclose(sorted(np.asarray(b.shapes.data[1])[:, 0]), [75, 125], atol=1e-4)
    assert (np.asarray(b.labels.data) == 1).sum() == ellipse_of(b, 1).sum() > 0


# -- edits, deletion, undo, commit -----------------------------------------------------


def test_editing_a_line_resegments_only_that_lesion(qtbot, viewer, grey):
    seg = Counting()
    widget, b = two_lesions(qtbot, viewer, grey, seg)
    before_1 = np.asarray(b.labels.data) == 1
    n = len(seg.calls)
    data = [np.asarray(d).copy() for d in b.shapes.data]
    data[3] = np.array([[150.0, 200], [210, 200]])  # lesion 2's short axis, moved
    b.shapes.data = [(d, "line") for d in data]
    idle(qtbot, widget)
    new_calls = seg.calls[n:]
    assert len(new_calls) == 1 and len(new_calls[0]) == 1
    np.testing.assert_allclose(new_calls[0][0].short_axis[:, 1], [200, 200])
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 1, before_1)
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 2, ellipse_of(b, 2))


def test_deleting_a_lesion_removes_only_its_mask_and_undo_restores_it(qtbot, viewer, grey):
    widget, b = two_lesions(qtbot, viewer, grey)
    before = np.asarray(b.labels.data).copy()
    b.shapes.selected_data = {2, 3}
    b.shapes.remove_selected()
    idle(qtbot, widget)
    after = np.asarray(b.labels.data)
    assert not (after == 2).any()
    np.testing.assert_array_equal(after == 1, before == 1)
    assert sorted(b.session.lesions) == [1] and widget.table.rowCount() == 1
    widget.undo()  # the two removals came in one event: one undo brings both back
    idle(qtbot, widget)
    assert len(b.shapes.data) == 4 and sorted(b.session.lesions) == [1, 2]
    np.testing.assert_array_equal(np.asarray(b.labels.data), before)


def test_committed_lesions_are_locked(qtbot, viewer, grey):
    widget, b = two_lesions(qtbot, viewer, grey)
    widget.commit([1])
    idle(qtbot, widget)
    assert "committed" in widget.table.item(0, 10).text()
    before_lines = [np.asarray(d).copy() for d in b.shapes.data]
    before_mask = np.asarray(b.labels.data).copy()
    data = [d.copy() for d in before_lines]
    data[0] = np.array([[10.0, 10], [10, 120]])
    b.shapes.data = [(d, "line") for d in data]
    idle(qtbot, widget)
    for got, want in zip(b.shapes.data, before_lines):
        np.testing.assert_allclose(got, want)
    np.testing.assert_array_equal(np.asarray(b.labels.data), before_mask)
    assert "committed" in widget.last_message
    # Deleting a committed lesion's lines restores them too.
    b.shapes.selected_data = {0, 1}
    b.shapes.remove_selected()
    idle(qtbot, widget)
    assert len(b.shapes.data) == 4 and (np.asarray(b.labels.data) == 1).any()
    widget.uncommit([1])
    widget.delete_selected([1])
    idle(qtbot, widget)
    assert len(b.shapes.data) == 2 and not (np.asarray(b.labels.data) == 1).any()


def test_results_for_an_edited_lesion_are_discarded(qtbot, viewer, grey):
    gate = threading.Event()
    seg = Counting(gate=gate)
    widget, b = annotator(viewer, grey, seg)
    b.shapes.add_lines([LONG1, SHORT1])
    qtbot.waitUntil(lambda: len(seg.calls) == 1, timeout=5000)  # blocked in the worker
    # The viewer is not frozen: the user edits the lesion meanwhile.
    data = [np.asarray(d).copy() for d in b.shapes.data]
    data[1] = np.array([[20.0, 50], [100, 50]])
    b.shapes.data = [(d, "line") for d in data]
    qtbot.waitUntil(lambda: b.session.lesions[1].generation == 2, timeout=5000)
    gate.set()
    idle(qtbot, widget)
    assert len(seg.calls) == 2
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 1, ellipse_of(b, 1))
    np.testing.assert_allclose(b.session.lesions[1].recist.short_axis[:, 1], [50, 50])


def test_a_failed_run_keeps_the_lines_and_switching_model_resegments(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey, Counting(fail=True))
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    assert b.session.lesions[1].status == "failed"
    assert "the model crashed" in widget.last_message and len(b.shapes.data) == 2
    assert not (np.asarray(b.labels.data) > 0).any()
    widget.load_segmenter("ellipse")
    idle(qtbot, widget)
    assert b.session.lesions[1].status == "done" and len(b.shapes.data) == 2
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 1, ellipse_of(b, 1))


def test_a_model_that_cannot_load_keeps_the_previous_one(qtbot, viewer, grey, tmp_path):
    widget, b = two_lesions(qtbot, viewer, grey)
    before = widget.segmenter
    widget.load_segmenter("checkpoint", tmp_path / "missing")
    idle(qtbot, widget)
    assert widget.segmenter is before and "could not load" in widget.last_message
    assert len(b.shapes.data) == 4 and sorted(b.session.lesions) == [1, 2]


# -- click tool, table, colours -------------------------------------------------------------


class DiskClicker:
    """A stand-in model whose click result is a known disk of radius 12 around the click."""

    name, device = "disk", "cpu"

    def segment(self, image, recists):
        return ShapeSegmenter("ellipse").segment(image, recists)

    def segment_click(self, image, point, *, slice_index=None, spacing=None):
        r0, c0 = int(point[0]) - 12, int(point[1]) - 12
        yy, xx = np.mgrid[-12:13, -12:13]
        mask = yy**2 + xx**2 <= 144
        measured = recist_from_mask(mask, spacing=spacing, slice_index=slice_index).transformed((-r0, -c0), 1.0)
        return ShapeResult(measured, (r0, c0), mask, mask.astype(np.float32), cluster=1, confidence=0.8, measured=measured)


def test_click_tool_segments_and_draws_the_measured_recist(qtbot, viewer, grey):
    grey = grey // 4  # a dark disk on bright noise: a lesion the click checks accept
    rr, cc = np.mgrid[:256, :256]
    grey[(rr - 100) ** 2 + (cc - 120) ** 2 > 144] += 150
    widget, b = annotator(viewer, grey, DiskClicker())
    widget.activate_click_tool()
    assert viewer.layers.selection.active is b.points and b.points.mode == "add"
    b.click((100.0, 120.0))
    idle(qtbot, widget)
    assert len(b.points.data) == 0  # the click was consumed
    assert len(b.shapes.data) == 2 and sorted(b.session.lesions) == [1]
    mask = np.asarray(b.labels.data) == 1
    assert mask.sum() == (np.mgrid[-12:13, -12:13] ** 2).sum(axis=0).__le__(144).sum()
    les = b.session.lesions[1]
    assert les.recist.long_length == pytest.approx(24.0, abs=1.5)
    assert les.cluster == 1 and les.confidence == pytest.approx(0.8)


def test_a_click_on_a_segmented_lesion_adds_no_hidden_second_lesion(qtbot, viewer, grey):
    """A click inside a lesion's mask would make a second lesion whose mask hides under
    the first (a paste never takes a neighbour's pixels): refused with a message."""
    grey = grey // 4  # dark disks on bright noise: lesions the click checks accept
    rr, cc = np.mgrid[:256, :256]
    grey[((rr - 60) ** 2 + (cc - 70) ** 2 > 144) & ((rr - 180) ** 2 + (cc - 180) ** 2 > 144)] += 150
    widget, b = annotator(viewer, grey, DiskClicker())
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    before = np.asarray(b.labels.data).copy()
    widget.activate_click_tool()
    b.click((60.0, 70.0))  # inside lesion 1's ellipse
    idle(qtbot, widget)
    qtbot.waitUntil(lambda: len(b.points.data) == 0, timeout=5000)
    assert sorted(b.session.lesions) == [1] and len(b.shapes.data) == 2
    np.testing.assert_array_equal(np.asarray(b.labels.data), before)
    assert "lesion 1 is already segmented here" in widget.last_message
    b.click((180.0, 180.0))  # elsewhere: a lesion as before
    idle(qtbot, widget)
    assert sorted(b.session.lesions) == [1, 2]


def test_click_needs_a_model(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey)
    widget.activate_click_tool()
    assert "needs a model" in widget.last_message
    b.click((100.0, 120.0))
    idle(qtbot, widget)
    assert "needs a model" in widget.last_message and not b.session.lesions


class Clustered:
    name, device = "clustered", "cpu"

    def segment(self, image, recists):
        out = ShapeSegmenter("ellipse").segment(image, recists)
        for res in out:
            res.cluster = 1 if res.recist.centre[0] < 128 else 3
            res.confidence = 0.6
        return out


def test_table_features_colours_and_row_selection(qtbot, viewer, grey):
    from napari.utils.colormaps import DirectLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_recist_seg._widgets.annotator import CLUSTER_COLOURS

    widget, b = two_lesions(qtbot, viewer, grey, Clustered())
    feats = b.labels.features
    assert list(feats["index"]) == [1, 2] and list(feats["cluster"]) == [1, 3]
    assert list(feats["long_drawn"]) == pytest.approx([80.0, 80.0])
    assert widget.table.item(1, 8).text() == "3"
    widget.set_colour_by("cluster")
    cmap = b.labels.colormap
    assert isinstance(cmap, DirectLabelColormap)
    np.testing.assert_allclose(cmap.map(np.array([2]))[0], transform_color(CLUSTER_COLOURS[3])[0])
    widget.set_colour_by("lesion")
    assert not isinstance(b.labels.colormap, DirectLabelColormap)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (0.0, 0.0)
    widget.table.selectRow(1)
    centre = b.session.lesion_centre(2)
    assert tuple(camera.center)[-2:] == pytest.approx(centre)
    assert b.shapes.selected_data == {2, 3}


# -- export / import -------------------------------------------------------------------


def test_export_import_round_trip(qtbot, viewer, tmp_path):
    from napari_recist_seg.data import read_labels, read_recist_csv

    image, _ = _isic("ISIC_0000057")
    img_path = SAMPLES / "ISIC_0000057.jpg"
    widget, b = annotator(viewer, image, name="ISIC_0000057", metadata={"image_path": str(img_path)})
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    b.shapes.add_lines([LONG2, SHORT2])
    idle(qtbot, widget)
    csv_path = widget.export_recist_csv(tmp_path / "recist.csv", if_exists="error")
    masks = widget.export_masks(tmp_path / "masks.png", if_exists="error")
    meas = widget.export_measurements(tmp_path / "meas.csv", if_exists="error")
    assert csv_path and masks and meas
    records = read_recist_csv(csv_path)
    assert [r.lesion for r in records] == [1, 2] and records[0].image == img_path
    np.testing.assert_array_equal(read_labels(masks), np.asarray(b.labels.data))
    assert "measured_long_px" in meas.read_text().splitlines()[0]
    # Never silently overwritten: refused, or written under a new name.
    text = csv_path.read_text()
    assert widget.export_recist_csv(csv_path, if_exists="error") is None
    assert "already exists" in widget.last_message and csv_path.read_text() == text
    assert widget.export_recist_csv(csv_path, if_exists="rename").name == "recist-1.csv"
    exported = np.asarray(b.labels.data).copy()

    # Reopen: the reader puts the image and the lines back, the annotator the masks.
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    layers = viewer.open(str(csv_path), plugin=PLUGIN)
    assert [type(layer).__name__ for layer in layers] == ["Image", "Shapes"]
    viewer.layers.selection.active = layers[0]
    idle(qtbot, widget)
    b2 = widget.binding
    assert b2.image is layers[0] and b2.shapes is layers[1]
    assert sorted(b2.session.lesions) == [1, 2]
    np.testing.assert_array_equal(np.asarray(b2.labels.data), exported)

    # Importing into an annotated image adds the CSV's lesions (new ids if taken).
    assert widget.import_recist_csv(csv_path) == 2
    idle(qtbot, widget)
    assert sorted(b2.session.lesions) == [1, 2, 3, 4]


def test_all_images_go_in_one_csv_and_in_memory_ones_are_saved(qtbot, viewer, grey, tmp_path):
    from napari_recist_seg.data import read_image, read_recist_csv

    widget, b = annotator(viewer, grey, name="scan")
    b.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    other = viewer.add_image(grey[:, ::-1].copy(), name="flipped")
    b2 = widget.bind(other)
    b2.shapes.add_lines([LONG2, SHORT2])
    idle(qtbot, widget)
    out = widget.export_recist_csv(tmp_path / "r.csv", if_exists="error")
    recs = read_recist_csv(out)
    assert [(r.image.name, r.lesion) for r in recs] == [("scan.png", 1), ("flipped.png", 1)]
    np.testing.assert_array_equal(read_image(tmp_path / "scan.png").array, grey)
    np.testing.assert_array_equal(read_image(tmp_path / "flipped.png").array, grey[:, ::-1])
    np.testing.assert_allclose(recs[1].recist.long_axis, LONG2)
    only = widget.export_recist_csv(tmp_path / "one.csv", if_exists="error", all_images=False)
    assert [r.image.name for r in read_recist_csv(only)] == ["flipped.png"]


# -- volumes, selection, bad input --------------------------------------------------------


def test_volume_pairs_live_on_the_current_slice(qtbot, viewer):
    from napari_recist_seg.data import read_image

    slab = read_image(SAMPLES / "lits117_slab.nii.gz").array
    widget, b = annotator(viewer, slab, name="ct", contrast_limits=(-100, 250))
    assert b.shapes.ndim == 3 and b.labels.data.shape == slab.shape
    b.shapes.add_lines([np.array([[4.0, 40, 30], [4, 40, 70]]), np.array([[4.0, 25, 50], [4, 55, 50]])])
    idle(qtbot, widget)
    lab = np.asarray(b.labels.data)
    assert (lab[4] == 1).any() and not np.delete(lab, 4, axis=0).any()
    np.testing.assert_array_equal(lab[4] == 1, ellipse_mask(b.session.lesions[1].recist, slab.shape))
    assert widget.table.item(0, 1).text() == "4" and not widget.table.isColumnHidden(1)
    viewer.dims.set_point(0, 0)
    widget.table.selectRow(0)
    assert viewer.dims.point[0] == pytest.approx(4)
    # A pair split over two slices does not pair: two open lines, no mask.
    b.shapes.add_lines([np.array([[2.0, 100, 90], [2, 100, 120]])])
    b.shapes.add_lines([np.array([[6.0, 90, 105], [6, 110, 105]])])
    idle(qtbot, widget)
    assert sorted(les.status for les in b.session.lesions.values())[-2:] == ["open", "open"]
    assert not (np.asarray(b.labels.data) > 1).any()


def test_follows_the_layer_selection(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey, name="first")
    second = viewer.add_image(grey[::2, ::2].copy(), name="second")
    viewer.layers.selection.active = second
    idle(qtbot, widget)
    assert widget.binding.image is second and widget.image_combo.currentText() == "second"
    assert "second RECIST" in viewer.layers and "second lesions" in viewer.layers
    viewer.layers.selection.active = b.labels
    idle(qtbot, widget)
    assert widget.binding is b


def test_unsupported_images_are_refused_with_a_message(qtbot, viewer):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    viewer.add_image(np.zeros((2, 3, 20, 20), np.float32), name="4d")
    idle(qtbot, widget)
    assert widget.binding is None and "2D images" in widget.last_message


def test_the_manifest_docks_the_annotator(qtbot, viewer, grey):
    """Through the manifest napari hands the widget a proxied viewer: layers must still
    be recognised when selected again (one RECIST layer per image, one binding)."""
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    image = viewer.add_image(grey, name="img")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotator")
    assert isinstance(widget, AnnotatorWidget)
    idle(qtbot, widget, timeout=60000)  # the default model may be loading
    assert widget.segmenter is not None and widget.binding is not None
    first = widget.binding
    for layer in (first.labels, image, first.shapes, image):
        viewer.layers.selection.active = layer
        idle(qtbot, widget)
    assert widget.binding is first and len(widget.bindings) == 1
    assert [layer.name for layer in viewer.layers] == ["img", "img lesions", "img RECIST"]
    assert widget.binding_for(image) is first and widget.binding_for(first.labels) is first
    widget.load_segmenter("ellipse")
    first.shapes.add_lines([LONG1, SHORT1])
    idle(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(first.labels.data) == 1, ellipse_of(first, 1))


# -- the mouse ---------------------------------------------------------------------------


def _drag(layer, start, end):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    mid = (np.asarray(start, float) + np.asarray(end, float)) / 2
    for pos in (mid, end):
        mouse_move_callbacks(
            layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=list(pos))
        )
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=end))


def test_drawing_and_moving_with_the_mouse(qtbot, viewer, grey):
    widget, b = annotator(viewer, grey)
    b.shapes.scale_factor = 0.001  # zoomed in: vertices never overlap the clicks below
    assert b.shapes.mode == "add_line"
    _drag(b.shapes, [100, 50], [100, 150])
    idle(qtbot, widget)
    assert [les.status for les in b.session.lesions.values()] == ["open"]
    _drag(b.shapes, [70, 95], [130, 105])  # crosses at col 100, not perpendicular
    idle(qtbot, widget)
    les = b.session.lesions[1]
    assert les.status == "done"
    # (mouse positions go through world -> data transforms: equal to ~1e-3 px)
    np.testing.assert_allclose(np.asarray(b.shapes.data[1]), [[70, 100], [130, 100]], atol=1e-2)
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 1, ellipse_of(b, 1))
    # Drag the whole long axis down by 10 rows: the short axis follows, one new mask.
    b.shapes.mode = "select"
    b.shapes.selected_data = set()
    _drag(b.shapes, [100, 70], [110, 70])
    idle(qtbot, widget)
    np.testing.assert_allclose(np.asarray(b.shapes.data[0])[:, 0], [110, 110], atol=1e-2)
    np.testing.assert_allclose(np.asarray(b.shapes.data[1]), [[80, 100], [140, 100]], atol=1e-2)
    np.testing.assert_array_equal(np.asarray(b.labels.data) == 1, ellipse_of(b, 1))
    assert les.generation == b.session.lesions[1].generation and les.generation >= 2


@pytest.mark.xfail(strict=False, reason="segfaults (rc -11) after the wave-2 merges of 2026-12-02, "
                   "not yet bisected: see the issue #15 note")
def test_loading_the_model_after_the_viewer_started_does_not_crash():
    """torch imports triton; after a software-OpenGL canvas exists that used to segfault.

    Run in a fresh process (a crash would take pytest down) that opens a viewer first,
    then creates the annotator and imports triton as building a network does.
    """
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed: nothing can clash")
    script = (
        "import napari\n"
        "v = napari.Viewer(show=False)\n"
        "from napari_recist_seg._widgets.annotator import AnnotatorWidget\n"
        "from napari_recist_seg.annotation import ShapeSegmenter\n"
        "w = AnnotatorWidget(v, segmenter=ShapeSegmenter('ellipse'))\n"
        "import triton\n"  # torchvision -> torch._dynamo imports it when a model is built
        "print('built')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "built" in out.stdout


def test_the_last_model_choice_wins(qtbot, viewer, grey, tmp_path_factory, monkeypatch):
    """A slow default-model load must not override a checkpoint chosen after it."""
    import time as _time

    from napari_recist_seg import annotation

    real = annotation.load_segmenter

    def slow_first(choice, path=None, device="auto"):
        if choice == "default":
            _time.sleep(1.0)
            return ShapeSegmenter("grabcut")  # stands in for the slow default model
        return real(choice, path, device)

    monkeypatch.setattr(annotation, "load_segmenter", slow_first)
    widget, b = annotator(viewer, grey)
    widget.load_segmenter("default")
    assert widget.loading
    widget.load_segmenter("ellipse")
    idle(qtbot, widget)
    qtbot.wait(1500)  # the default load finishes meanwhile, and must be ignored
    assert isinstance(widget.segmenter, ShapeSegmenter) and widget.segmenter.method == "ellipse"
    assert not widget.loading
