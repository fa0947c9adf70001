"""The "Train / fine-tune" dock on real ISIC images held as viewer layers.

A short training run (8 images, 32 px, 3 epochs) fills the live plot and writes a
loadable checkpoint while the Qt event loop keeps running (its longest stall is
measured); Cancel stops a long run and leaves the last good checkpoint intact; a
fine-tune on two curated images saves them first and reports Dice before and after.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt, QTimer

from napari_recist_seg._reader import recist_shapes_layer
from napari_recist_seg.curation import CURATED_KEY, FineTuneResult
from napari_recist_seg.data import read_image, read_mask
from napari_recist_seg.model import load_checkpoint
from napari_recist_seg.recist import recist_from_mask

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
ISIC = SHARED_DATA / "isic2017_train256"
STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003",
         "ISIC_0000004", "ISIC_0000006", "ISIC_0000007", "ISIC_0000008"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _add_case(viewer, stem: str, *, lesions: bool = False) -> None:
    """An ISIC image with its RECIST (derived from the expert mask) as napari layers,
    the way opening a RECIST CSV gives them; with ``lesions`` also a "lesions" layer
    holding the expert mask (standing in for a mask corrected by hand)."""
    image = read_image(ISIC / "images" / f"{stem}.jpg").array
    gt = read_mask(ISIC / "masks" / f"{stem}_segmentation.png")
    viewer.add_image(image, name=stem, rgb=True)
    data, kwargs, _ = recist_shapes_layer([(1, recist_from_mask(gt))], name=f"{stem} RECIST", ndim=2)
    viewer.add_shapes(data, **kwargs)
    if lesions:
        viewer.add_labels(gt.astype(np.int32), name=f"{stem} lesions")


@pytest.fixture()
def widget(open_dock, tmp_path):
    if not (ISIC / "images").is_dir():
        pytest.skip(f"real data not found at {ISIC}")
    from napari_recist_seg._widgets.train import TrainWidget

    w = open_dock(TrainWidget, "Train / fine-tune")
    w.from_layers.setChecked(True)
    w.input_size.setValue(32)
    w.batch_size.setValue(4)
    w.encoder.setCurrentText("resnet18")
    w.val_fraction.setValue(0.25)
    w.output.set_path(tmp_path / "model")
    return w


class StallMeter:
    """Longest gap between ticks of a 10 ms QTimer: how long the GUI thread was blocked."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.max_gap = 0.0
        self.ticks = 0

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now
        self.ticks += 1

    def start(self) -> None:
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def settle(self, qtbot, quiet_s: float = 0.3, timeout_s: float = 10.0) -> None:
        """Let the viewer finish its own first paints (shader builds, thumbnails): wait
        for ``quiet_s`` without a tick gap over 50 ms, then start counting afresh."""
        t_end = time.perf_counter() + timeout_s
        while time.perf_counter() < t_end:
            self.max_gap = 0.0
            qtbot.wait(int(quiet_s * 1000))
            if self.max_gap < 0.05:
                break
        self.max_gap = 0.0
        self.ticks = 0


def test_training_shows_epochs_keeps_viewer_responsive_and_feeds_the_annotator(widget, qtbot, capsys):
    from napari_recist_seg._widgets import train as train_module

    viewer = widget.viewer
    # The dock imports the training stack in the background when it opens; the event
    # loop keeps running meanwhile (first-time imports hold the GIL in short bursts).
    warm = StallMeter()
    warm.start()
    qtbot.waitUntil(train_module.warmed_up, timeout=120000)
    warm.stop()
    for stem in STEMS:
        _add_case(viewer, stem)
    widget.refresh_layers()
    assert widget.layer_table.rowCount() == len(STEMS)
    assert [widget.layer_table.item(r, 2).text() for r in range(len(STEMS))] == ["1"] * len(STEMS)
    widget.mode.setCurrentIndex(widget.mode.findData("a1l"))
    widget.clusters.setCurrentIndex(widget.clusters.findData(2))
    widget.epochs.setValue(3)

    meter = StallMeter()
    meter.start()
    meter.settle(qtbot)
    worker = widget.start_training()
    assert worker is not None, widget.jobs.error.text()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120000)
    meter.stop()

    outcome = widget.jobs.last_outcome
    assert outcome.status == "ok", widget.jobs.error.text()
    result = outcome.result
    assert result.epochs_run == 3 and result.n_train + result.n_val == len(STEMS)
    assert widget.plot.epochs == [1, 2, 3]
    assert [round(log["train_loss"], 9) for log in widget.plot.logs] == [
        round(e.train_loss, 9) for e in result.history]
    assert widget.plot.best_epoch == result.best_epoch
    ckpt = Path(result.checkpoint)
    model, cfg, clusters = load_checkpoint(ckpt)
    assert cfg.mode == "a1l" and cfg.input_size == 32 and clusters.k == 2
    log = json.loads((ckpt / "train_log.json").read_text())
    assert log["status"] == "finished" and len(log["epochs"]) == 3
    assert "validation Dice" in widget.summary.text() and str(ckpt) in widget.summary.text()

    # The event loop kept running during training (10 ms timer; generous bound).
    with capsys.disabled():
        print(f"\n[train widget] longest Qt event-loop stall: {meter.max_gap * 1000:.0f} ms during "
              f"training ({meter.ticks} ticks of a 10 ms timer, {outcome.elapsed:.1f} s run); "
              f"{warm.max_gap * 1000:.0f} ms while the dock imported the training stack")
    assert meter.ticks > 10
    assert meter.max_gap < 1.0
    # First-time imports of C extensions hold the GIL in bursts; they happen once per
    # session, when the dock opens (a looser bound: they scale with machine load).
    assert warm.max_gap < 2.0

    # "Use this model": the annotator opens (if needed) and loads the checkpoint.
    assert widget.use_button.isEnabled()
    widget.use_model()
    from napari_recist_seg._widgets._common import find_annotator

    annotator = find_annotator(viewer)
    assert annotator is not None
    qtbot.waitUntil(lambda: getattr(annotator.segmenter, "path", None) is not None
                    and Path(annotator.segmenter.path) == ckpt, timeout=30000)
    assert widget.active_model() == ckpt


def test_cancel_keeps_the_last_good_checkpoint(widget, qtbot, tmp_path, make_isic_dataset):
    """Training from a dataset folder (RECIST derived from its masks), cancelled."""
    root = make_isic_dataset(tmp_path / "isic", STEMS[:6])
    widget.from_folder.setChecked(True)
    widget.folder.set_path(root)
    widget.mode.setCurrentIndex(widget.mode.findData("a1"))
    widget.epochs.setValue(200)
    assert widget.start_training() is not None, widget.jobs.error.text()
    qtbot.waitUntil(lambda: len(widget.plot.epochs) >= 1, timeout=120000)
    widget.jobs.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120000)

    outcome = widget.jobs.last_outcome
    assert outcome.status == "cancelled"
    result = outcome.result
    assert result.cancelled and 1 <= result.epochs_run < 200
    assert "Cancelled" in widget.jobs.status.text()
    assert "cancelled" in widget.summary.text()
    ckpt = Path(result.checkpoint)
    log = json.loads((ckpt / "train_log.json").read_text())
    assert log["status"] == "cancelled"
    assert log["best_epoch"] == result.best_epoch
    assert log["n_train"] + log["n_val"] == 6
    assert log["epochs"][0]["val_gt_dice"] is not None  # the folder's masks: report only
    # The checkpoint on disk is the best epoch's, and it loads.
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["training"]["epoch"] == result.best_epoch
    model, cfg, _ = load_checkpoint(ckpt)
    assert cfg.mode == "a1"
    assert widget.use_button.isEnabled()


def test_fine_tune_on_two_curated_images(widget, qtbot, tiny_a1_ckpt, tmp_path, monkeypatch):
    viewer = widget.viewer
    curated = STEMS[:2]
    for stem in STEMS[:6]:
        _add_case(viewer, stem, lesions=stem in curated)
    widget.refresh_layers()
    # Tick "curated" in the table: the flag lands in the lesions layer's metadata.
    for row in range(widget.layer_table.rowCount()):
        if widget.layer_table.item(row, 1).text() in curated:
            widget.layer_table.item(row, 3).setCheckState(Qt.CheckState.Checked)
    for stem in curated:
        assert viewer.layers[f"{stem} lesions"].metadata[CURATED_KEY] is True

    widget.init_model.set_choice("checkpoint", tiny_a1_ckpt)
    widget.mode.setCurrentIndex(widget.mode.findData("a1"))
    widget.epochs.setValue(2)
    assert widget.start_fine_tune() is not None, widget.jobs.error.text()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120000)

    outcome = widget.jobs.last_outcome
    assert outcome.status == "ok", widget.jobs.error.text()
    result = outcome.result
    assert isinstance(result, FineTuneResult)
    # One curated image held out, scored before and after; the other trained on.
    assert len(result.holdout) == 1 and result.holdout[0] in curated
    assert [r["case"] for r in result.before] == result.holdout
    assert [r["case"] for r in result.after] == result.holdout
    before, after = result.dice_before_after()
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    assert "before" in widget.summary.text() and "after" in widget.summary.text()
    # The recipe of `recist-seg train --init --curated` (finetune.fine_tune): no epochs,
    # a calibration to the curated masks (here 1 image: nothing to cross-validate).
    assert widget.plot.epochs == []
    assert "calibration on 1 curated image(s): none" in widget.summary.text()
    assert "epoch" not in widget.summary.text()  # no "0 epoch(s) ... best epoch None"
    log = json.loads((Path(result.checkpoint) / "train_log.json").read_text())
    assert log["n_curated"] == 1  # the non-held-out curated image, full supervision
    assert log["init_checkpoint"] == str(tiny_a1_ckpt)

    # The curated masks were saved (as a dataset folder) and equal the layers.
    folder = tmp_path / "model" / "curated"
    assert result.saved.folder == folder
    for stem in curated:
        mask = read_mask(folder / "masks" / f"{stem}_segmentation.png")
        assert np.array_equal(mask, np.asarray(viewer.layers[f"{stem} lesions"].data) > 0)
    report = json.loads((tmp_path / "model" / "fine_tune_report.json").read_text())
    assert report["holdout"] == result.holdout
    assert math.isclose(report["dice_before"], before, abs_tol=1e-12)

    # Painting more and fine-tuning again never overwrites the saved masks silently:
    # declining "replace" saves into a new folder. (Replacing the model in the output
    # folder is confirmed in a dialog: answer yes.)
    from napari_recist_seg._widgets import train as train_module

    asked = []
    monkeypatch.setattr(train_module.QMessageBox, "question",
                        lambda *a, **k: asked.append(a[2]) or train_module.QMessageBox.Yes)
    viewer.layers[f"{curated[0]} lesions"].data[:4, :4] = 1
    assert widget.start_fine_tune(overwrite=False) is not None
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120000)
    assert widget.jobs.last_outcome.status == "ok", widget.jobs.error.text()
    assert widget.jobs.last_outcome.result.saved.folder == tmp_path / "model" / "curated-1"
    assert len(asked) == 1 and "already holds a model" in asked[0]
    assert not read_mask(folder / "masks" / f"{curated[0]}_segmentation.png")[:4, :4].any()
