"""What the 1366x768 walk-through found (issue 13, scripts/walkthrough_screens.py):
the lesion table fits the annotator's 480 px dock, lines on 5-7 px tumours are thin,
the Evaluate dock shows no label without its field and no squeezed checkpoint field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)

from napari_recist_seg.annotation import ShapeSegmenter  # noqa: E402

from .test_annotator import idle  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "napari_recist_seg" / "sample_data"
PLUGIN = "napari-recist-seg"
#: The table's viewport in the annotator dock at its minimum width (480 px), measured.
TABLE_VIEWPORT = 445


def _ct_annotator(viewer, qtbot):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    viewer.open(str(SAMPLES / "ct_recist.csv"), plugin=PLUGIN)
    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    viewer.layers.selection.active = viewer.layers["lits117_slab"]
    idle(qtbot, widget)
    return widget, widget.binding


def test_the_lesion_table_of_the_ct_sample_fits_a_480_px_dock(make_napari_viewer, qtbot):
    widget, b = _ct_annotator(make_napari_viewer(), qtbot)
    t = widget.table
    assert t.rowCount() == 8
    header = t.horizontalHeader()
    widths = [
        max(header.sectionSizeHint(j), t.sizeHintForColumn(j))
        for j in range(t.columnCount())
        if not t.isColumnHidden(j)
    ]
    assert sum(widths) <= TABLE_VIEWPORT, widths  # was ~590 px: status, conf. off-screen
    assert header.visualIndex(10) == 1  # status right after "#"


def test_lines_on_small_tumours_are_thinner_than_on_large_ones(make_napari_viewer, qtbot):
    widget, b = _ct_annotator(make_napari_viewer(), qtbot)
    widths = np.asarray(b.shapes.edge_width, float)
    lesions = np.asarray(b.shapes.features["lesion"])
    short = {les.id: les.recist.short_length for les in b.session.lesions.values()}
    small = [i for i in range(len(widths)) if short[lesions[i]] < 6]
    large = [i for i in range(len(widths)) if short[lesions[i]] > 15]
    assert small and large
    assert widths[small].max() <= 0.6  # lesion 6 (W 4.4 px): 0.44 px, was 1 px
    assert widths[large].min() == pytest.approx(b.shapes.current_edge_width)


def test_evaluate_hides_the_prediction_rows_with_their_labels(make_napari_viewer):
    from napari_recist_seg._widgets.evaluate import EvaluateWidget

    viewer = make_napari_viewer()
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    label = widget._form.labelForField(widget.pred_a)
    assert label.text() == "Predictions A" and label.isHidden()  # was shown, no field
    widget.use_predictions.setChecked(True)
    assert not label.isHidden() and not widget.pred_a.isHidden()
    assert widget._form.labelForField(widget.pred_b).isHidden()  # no model B to compare


def test_the_checkpoint_path_goes_under_the_model_choice(make_napari_viewer):
    from qtpy.QtWidgets import QVBoxLayout

    from napari_recist_seg._widgets.evaluate import EvaluateWidget

    widget = EvaluateWidget(make_napari_viewer())
    picker = widget.model_b
    assert picker.choice() == "checkpoint"
    assert isinstance(picker.layout(), QVBoxLayout)  # was side by side: field cut to "ch…"


def test_no_lesion_colour_hides_the_yellow_long_axis():
    from napari_recist_seg._widgets.annotator_layers import COLOURS
    from napari_recist_seg._widgets.annotator_ui import LESION_COLOURS

    def rgb(h):
        return np.array([int(h[i : i + 2], 16) for i in (1, 3, 5)], float)

    # The walk-through's CT lesion 9 got an amber mask (#ffc400) under its yellow long axis.
    far = [float(np.linalg.norm(rgb(c) - rgb(COLOURS["long"]))) for c in LESION_COLOURS]
    assert min(far) > 120, dict(zip(LESION_COLOURS, far))
