"""Screenshots of the Bulk segment, Train / fine-tune and Evaluate docks (run under xvfb).

    xvfb-run -a python docs/make_widget_screenshots.py [--data ../shared/data/isic2017_train256]
                                                       [--work /tmp/recist_widget_shots]

A walk-through on real ISIC 2017 images, each dock opened through the plugin manifest
in a real napari window:

1. Train / fine-tune: train A1+L (and A1, for the comparison) on a dataset folder of
   RECIST derived from the masks, 64 px input, a few epochs; the live plot fills
   -> ``train.png``. Then fine-tune A1+L on viewer layers, four of them curated (the
   expert masks stand in for hand-corrected ones) -> ``finetune.png``.
2. Bulk segment: segment a folder (with one truncated file) with the shipped default
   model (else the A1+L just trained), then double-click a result -> ``bulk.png``.
3. Evaluate: A1+L vs A1 on held-out images, the B - A view, one case opened with its
   prediction and ground truth -> ``evaluate.png``.

Writes ``docs/screenshots/{train,finetune,bulk,evaluate}.png``. Takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
PLUGIN = "napari-recist-seg"


def _pump(app, seconds: float = 0.3) -> None:
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        app.processEvents()
        time.sleep(0.01)


def _wait(app, condition, timeout: float = 900.0) -> None:
    t0 = time.monotonic()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the job did not finish in time")
    _pump(app, 0.5)


def _close_notifications(viewer, app) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _pump(app, 0.2)


def _viewer(title: str, app, width: int = 1560, height: int = 1000):
    import napari

    viewer = napari.Viewer(title=title)
    viewer.window._qt_window.resize(width, height)
    _pump(app, 0.5)
    return viewer


def _dock(viewer, name: str, app, width: int = 520):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    viewer.window._qt_window.resizeDocks([dock], [width], 0x1)  # Qt.Horizontal
    _pump(app, 0.3)
    return widget


def _save(viewer, app, name: str) -> Path:
    from PIL import Image

    _close_notifications(viewer, app)
    _pump(app, 0.5)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = OUT / name
    Image.fromarray(shot).save(path)
    print(f"wrote {path} {shot.shape[1]}x{shot.shape[0]}", flush=True)
    return path


def _dataset(src: Path, dst: Path, stems: list[str], truncated: str | None = None) -> Path:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    for stem in stems:
        shutil.copy(src / "images" / f"{stem}.jpg", dst / "images")
        shutil.copy(src / "masks" / f"{stem}_segmentation.png", dst / "masks")
    if truncated:
        shutil.copy(src / "masks" / f"{truncated}_segmentation.png", dst / "masks")
        data = (src / "images" / f"{truncated}.jpg").read_bytes()
        (dst / "images" / f"{truncated}.jpg").write_bytes(data[: len(data) // 3])
    return dst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017_train256")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recist_widget_shots"))
    parser.add_argument("--n-train", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # a shared 2-core machine
    from qtpy.QtWidgets import QApplication

    stems = sorted(p.stem for p in (args.data / "images").glob("*.jpg"))
    train_stems = stems[: args.n_train]
    val_stems = stems[-12:]
    bulk_stems = stems[args.n_train : args.n_train + 14]
    shutil.rmtree(args.work, ignore_errors=True)
    train_ds = _dataset(args.data, args.work / "train", train_stems)
    val_ds = _dataset(args.data, args.work / "validation", val_stems)
    bulk_ds = _dataset(args.data, args.work / "bulk", bulk_stems[:-1], truncated=bulk_stems[-1])
    OUT.mkdir(parents=True, exist_ok=True)

    import napari

    app = QApplication.instance() or napari.qt.get_qapp()

    # 1. Train / fine-tune -------------------------------------------------------------
    models = {}
    for mode in ("a1", "a1l"):
        viewer = _viewer(f"napari-recist-seg — train {mode}", app)
        viewer.open(str(train_ds / "images" / f"{train_stems[3]}.jpg"))
        w = _dock(viewer, "Train / fine-tune", app)
        w.from_folder.setChecked(True)
        w.folder.set_path(train_ds)
        w.init_model.set_choice("scratch")
        w.mode.setCurrentIndex(w.mode.findData(mode))
        w.epochs.setValue(args.epochs)
        w.input_size.setValue(64)
        w.batch_size.setValue(16)
        w.val_fraction.setValue(0.2)
        w.device.setCurrentText("cpu")
        w.output.set_path(args.work / f"model_{mode}")
        w.start_training()
        _wait(app, lambda: not w.jobs.busy)  # noqa: B023 - called in this iteration
        if w.jobs.last_outcome.status != "ok":
            print("training failed:", w.jobs.error.text(), w.jobs.error.toolTip(), file=sys.stderr)
            return 1
        models[mode] = w.checkpoint
        if mode == "a1l":
            _save(viewer, app, "train.png")
        viewer.close()

    # 1b. Fine-tune on curated layers ---------------------------------------------------
    import numpy as np

    from napari_recist_seg._reader import recist_shapes_layer
    from napari_recist_seg.data import read_image, read_mask
    from napari_recist_seg.recist import recist_from_mask

    viewer = _viewer("napari-recist-seg — fine-tune on curated masks", app)
    tune_stems = stems[args.n_train + 20 : args.n_train + 32]
    curated = tune_stems[:4]
    for stem in tune_stems:
        gt = read_mask(args.data / "masks" / f"{stem}_segmentation.png")
        viewer.add_image(read_image(args.data / "images" / f"{stem}.jpg").array, name=stem,
                         rgb=True, visible=stem == curated[0])
        data, kwargs, _ = recist_shapes_layer([(1, recist_from_mask(gt))], name=f"{stem} RECIST", ndim=2)
        viewer.add_shapes(data, visible=stem == curated[0], **kwargs)
        if stem in curated:  # the expert mask stands in for a mask corrected by hand
            viewer.add_labels(gt.astype(np.int32), name=f"{stem} lesions", opacity=0.4,
                              visible=stem == curated[0])
    w = _dock(viewer, "Train / fine-tune", app)
    w.from_layers.setChecked(True)
    w.refresh_layers()
    for row in range(w.layer_table.rowCount()):
        if w.layer_table.item(row, 1).text() in curated:
            w.layer_table.item(row, 3).setCheckState(2)
    w.init_model.set_choice("checkpoint", models["a1l"])
    w.epochs.setValue(4)
    w.batch_size.setValue(8)
    w.device.setCurrentText("cpu")
    w.output.set_path(args.work / "model_finetuned")
    w.start_fine_tune()
    _wait(app, lambda: not w.jobs.busy)
    if w.jobs.last_outcome.status != "ok":
        print("fine-tuning failed:", w.jobs.error.text(), w.jobs.error.toolTip(), file=sys.stderr)
        return 1
    viewer.layers.selection.active = viewer.layers[curated[0]]
    viewer.reset_view()
    _save(viewer, app, "finetune.png")
    viewer.close()

    # 2. Bulk segment ------------------------------------------------------------------
    viewer = _viewer("napari-recist-seg — bulk segment", app)
    w = _dock(viewer, "Bulk segment", app)
    w.input.set_path(bulk_ds)
    if (ROOT / "napari_recist_seg" / "models" / "default" / "config.json").is_file():
        w.model.set_choice("default")  # the model shipped with the plugin
    else:
        w.model.set_choice("checkpoint", models["a1l"])
    w.output.set_path(args.work / "bulk_out")
    w.device.setCurrentText("cpu")
    w.start()
    _wait(app, lambda: not w.jobs.busy)
    done = [i for i, r in enumerate(w.rows) if r.status == "done"]
    w.results.setCurrentRow(done[1])
    w._open_item(w.results.item(done[1]))
    _pump(app, 0.5)
    _save(viewer, app, "bulk.png")
    viewer.close()

    # 3. Evaluate --------------------------------------------------------------------------
    viewer = _viewer("napari-recist-seg — evaluate", app, width=1600, height=1080)
    w = _dock(viewer, "Evaluate", app, width=640)
    w.model_a.set_choice("checkpoint", models["a1"])
    w.compare.setChecked(True)
    w.model_b.set_choice("checkpoint", models["a1l"])
    w.folder.set_path(val_ds)
    w.recist.setCurrentIndex(w.recist.findData("masks"))
    w.output.set_path(args.work / "evaluation")
    w.device.setCurrentText("cpu")
    w.start(replace_predictions=True)
    _wait(app, lambda: not w.jobs.busy)
    w.view.setCurrentIndex(2)  # B - A per case
    w.metric.setCurrentIndex(w.metric.findData("dice"))
    w.table.selectRow(0)
    w._row_clicked(0, 0)
    _pump(app, 0.5)
    _save(viewer, app, "evaluate.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
