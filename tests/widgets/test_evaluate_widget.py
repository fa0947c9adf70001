"""The "Evaluate" dock on real ISIC images: the table equals ``recist-seg evaluate``.

One model on a validation folder (numbers, mean ± sd and exports checked against the
CLI's JSON on the same predictions; clicking a row opens prediction + ground truth);
two models side by side with the per-case difference; the viewer's curated layers as
the validation set.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_recist_seg._widgets.evaluate import COLUMNS
from napari_recist_seg.cli import main as cli_main
from napari_recist_seg.curation import CURATED_KEY
from napari_recist_seg.data import read_image, read_mask

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
ISIC = SHARED_DATA / "isic2017_train256"
STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
# Metrics shared with the CLI table, and how the dock prints them.
SHARED = {"dice": ".4f", "iou": ".4f", "hd": ".2f", "hd95": ".2f", "avd": ".3f"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory, make_tiny_checkpoint) -> tuple[Path, Path]:
    """Two untrained tiny A1 models (seeds 0 and 1) whose masks depend on the image
    and on the seed: a steeper segmentation head (``head_gain``) makes their masks
    follow the features, so the two seeds give two different models to compare."""
    root = tmp_path_factory.mktemp("models")
    return tuple(
        make_tiny_checkpoint(root / f"a1_seed{seed}", mode="a1", seed=seed, input_size=32,
                             decoder_channels=16, head_gain=30.0)
        for seed in (0, 1)
    )


@pytest.fixture()
def dataset(tmp_path, make_isic_dataset) -> Path:
    return make_isic_dataset(tmp_path / "val", STEMS)


@pytest.fixture()
def widget(open_dock):
    from napari_recist_seg._widgets.evaluate import EvaluateWidget

    return open_dock(EvaluateWidget, "Evaluate")


def _run(w, qtbot):
    assert w.start(replace_predictions=True) is not None, w.jobs.error.text()
    qtbot.waitUntil(lambda: not w.jobs.busy, timeout=120000)
    assert w.jobs.last_outcome.status == "ok", w.jobs.error.text()
    return w.jobs.last_outcome.result


def test_table_equals_the_command_line(widget, qtbot, dataset, models, tmp_path):
    widget.model_a.set_choice("checkpoint", models[0])
    widget.folder.set_path(dataset)
    widget.output.set_path(tmp_path / "out")
    outcome = _run(widget, qtbot)
    (run,) = outcome.runs
    assert run.pred_dir.parent == tmp_path / "out"

    # recist-seg evaluate on the very same prediction folder.
    cli_json = tmp_path / "cli.json"
    assert cli_main(["evaluate", "--pred", str(run.pred_dir), "--gt", str(dataset),
                     "--json", str(cli_json), "-q"]) == 0
    cli = json.loads(cli_json.read_text())
    assert [c["case"] for c in cli["cases"]] == STEMS
    for key, spec in SHARED.items():
        shown = widget.table_values(key)
        assert set(shown) == set(STEMS)
        for case in cli["cases"]:
            assert shown[case["case"]] == case[key]  # the same float
        # ... and printed with the CLI table's precision.
        row = {widget.table.item(r, 0).text(): r for r in range(widget.table.rowCount())}
        col = 1 + [k for k, _, _ in COLUMNS].index(key)
        for case in cli["cases"]:
            assert widget.table.item(row[case["case"]], col).text() == format(case[key], spec)
        # mean ± sd row equals the CLI's
        assert run.evaluation.mean[key] == pytest.approx(cli["mean"][key], abs=0, rel=1e-12)
        assert run.evaluation.sd[key] == pytest.approx(cli["sd"][key], abs=0, rel=1e-12)
    summary = {widget.summary_table.item(r, 0).text(): r for r in range(widget.summary_table.rowCount())}
    mean_row = summary[f"{run.label} mean"]
    assert widget.summary_table.item(mean_row, 1).text() == format(cli["mean"]["dice"], ".4f")

    # L/W errors: the masks measured like a reader would (by hand for one case).
    from napari_recist_seg.recist import recist_from_mask

    case = run.by_case()[STEMS[0]]
    p, g = read_mask(case["pred"]), read_mask(case["gt"])
    assert p.sum() >= 4 and not p.all()
    expected = abs(recist_from_mask(p).long_length - recist_from_mask(g).long_length)
    assert widget.table_values("long_error")[STEMS[0]] == pytest.approx(expected)

    # The plot shows the chosen metric for the model.
    widget.metric.setCurrentIndex(widget.metric.findData("hd95"))
    assert list(widget.plot.values) == [run.label]
    assert widget.plot.values[run.label] == [c["hd95"] for c in cli["cases"]]

    # Exports: JSON is the CLI's document (plus the L/W columns), CSV one row per case.
    exported = json.loads(widget.export(tmp_path / "e.json").read_text())
    for mine, theirs in zip(exported["cases"], cli["cases"]):
        assert {k: mine[k] for k in theirs} == theirs
    with open(widget.export(tmp_path / "e.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == STEMS
    assert [float(r["dice"]) for r in rows] == [c["dice"] for c in cli["cases"]]

    # Clicking a row opens the image, the prediction and the ground truth (contour).
    r = [widget.table.item(i, 0).text() for i in range(widget.table.rowCount())].index(STEMS[2])
    widget._row_clicked(r, 0)
    viewer = widget.viewer
    pred_name = f"{STEMS[2]} prediction {run.label}"
    assert {STEMS[2], pred_name, f"{STEMS[2]} ground truth"} <= {layer.name for layer in viewer.layers}
    assert np.array_equal(np.asarray(viewer.layers[pred_name].data) > 0,
                          read_mask(run.by_case()[STEMS[2]]["pred"]))
    gt_layer = viewer.layers[f"{STEMS[2]} ground truth"]
    assert gt_layer.contour > 0
    assert np.array_equal(np.asarray(gt_layer.data) > 0,
                          read_mask(dataset / "masks" / f"{STEMS[2]}_segmentation.png"))


def test_two_models_side_by_side(widget, qtbot, dataset, models, tmp_path):
    widget.model_a.set_choice("checkpoint", models[0])
    widget.compare.setChecked(True)
    widget.model_b.set_choice("checkpoint", models[1])
    widget.folder.set_path(dataset)
    widget.recist.setCurrentIndex(widget.recist.findData("masks"))
    widget.spacing.setText("0.5 0.5")
    widget.output.set_path(tmp_path / "out")
    outcome = _run(widget, qtbot)
    a, b = outcome.runs
    assert a.label != b.label and a.pred_dir != b.pred_dir
    assert a.evaluation.unit == "mm" and b.evaluation.unit == "mm"
    ca, cb = a.by_case(), b.by_case()
    assert set(ca) == set(cb) == set(STEMS)

    # The difference view: B - A per case, for every metric.
    labels = [widget.view.itemText(i) for i in range(widget.view.count())]
    assert len(labels) == 3 and "−" in labels[2]
    widget.view.setCurrentIndex(2)
    assert any(abs(cb[c]["dice"] - ca[c]["dice"]) > 0.01 for c in STEMS)  # really two models
    for key in ("dice", "hd95", "avd"):
        shown = widget.table_values(key)
        for case in STEMS:
            assert shown[case] == pytest.approx(cb[case][key] - ca[case][key], abs=1e-12)
    assert set(widget.plot.values) == {a.label, b.label}
    summary = [widget.summary_table.item(r, 0).text() for r in range(widget.summary_table.rowCount())]
    assert summary[-2:] == ["B − A mean", "B − A sd"]
    mean_diff = widget.summary_table.item(len(summary) - 2, 1).data(Qt.UserRole)
    assert mean_diff == pytest.approx(np.mean([cb[c]["dice"] - ca[c]["dice"] for c in STEMS]))

    # Distances are in mm: the CLI with the same spacing agrees.
    cli_json = tmp_path / "cli_b.json"
    cli_main(["evaluate", "--pred", str(b.pred_dir), "--gt", str(dataset), "--spacing", "0.5",
              "0.5", "--json", str(cli_json), "-q"])
    cli = {c["case"]: c for c in json.loads(cli_json.read_text())["cases"]}
    for case in STEMS:
        assert cb[case]["hd"] == cli[case]["hd"]

    doc = json.loads(widget.export(tmp_path / "both.json").read_text())
    assert set(doc["models"]) == {a.label, b.label}
    assert len(doc["difference"]["cases"]) == len(STEMS)

    # Opening a case in the difference view shows both predictions.
    widget._row_clicked(0, 0)
    case = widget.table.item(0, 0).text()
    names = {layer.name for layer in widget.viewer.layers}
    assert {f"{case} prediction {a.label}", f"{case} prediction {b.label}"} <= names


def test_curated_layers_as_the_validation_set(widget, qtbot, models, tmp_path):
    if not (ISIC / "images").is_dir():
        pytest.skip(f"real data not found at {ISIC}")
    from napari_recist_seg._reader import recist_shapes_layer
    from napari_recist_seg.recist import recist_from_mask

    viewer = widget.viewer
    for i, stem in enumerate(STEMS[:3]):
        gt = read_mask(ISIC / "masks" / f"{stem}_segmentation.png")
        viewer.add_image(read_image(ISIC / "images" / f"{stem}.jpg").array, name=stem, rgb=True)
        data, kwargs, _ = recist_shapes_layer([(1, recist_from_mask(gt))], name=f"{stem} RECIST", ndim=2)
        viewer.add_shapes(data, **kwargs)
        labels = viewer.add_labels(gt.astype(np.int32), name=f"{stem} lesions")
        labels.metadata[CURATED_KEY] = i < 2  # the third is not curated: left out
    widget.model_a.set_choice("checkpoint", models[0])
    widget.source.setCurrentIndex(widget.source.findData("layers"))
    widget.output.set_path(tmp_path / "out")
    outcome = _run(widget, qtbot)
    (run,) = outcome.runs
    assert outcome.dataset == tmp_path / "out" / "curated_validation"
    assert sorted(run.by_case()) == STEMS[:2]
    for stem in STEMS[:2]:
        c = run.by_case()[stem]
        assert 0.0 <= c["dice"] <= 1.0 and math.isfinite(c["hd"])
        assert np.array_equal(read_mask(c["gt"]), read_mask(ISIC / "masks" / f"{stem}_segmentation.png"))
