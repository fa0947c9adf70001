"""Walk-through screenshots of the plugin at 1366x768 (issue 13), for a person to read.

Run under a 1366x768 X server::

    xvfb-run -a -s "-screen 0 1366x768x24" python3 scripts/walkthrough_screens.py

It opens napari at 1366x768 with the plugin's docks (RECIST annotator, Train, Evaluate,
Bulk), opens a dermoscopy image of the sample data, draws a stray 1 px line, then a long
and a short axis with real Qt mouse events on the canvas (press, drags, release), opens
the CT sample and does the same on a tumour of slice 7, and saves at most 8 small PNGs (palette PNG, < 200 KB) in
``docs/screenshots/walkthrough/``. It prints a JSON summary (lesions, mask areas,
messages, file sizes). The annotator uses its default segmenter (the shipped model,
on CPU); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots" / "walkthrough"
SAMPLES = REPO / "napari_recist_seg" / "sample_data"
PLUGIN = "napari-recist-seg"
SIZE = (1366, 768)
SHOTS_DIR = [OUT]  # where shoot() writes (set from --out)


def _pump(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _wait_idle(widget: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _pump(0.05)
        if not widget.busy:
            break
    _pump(0.3)


def _canvas_point(viewer: Any, world_rc: tuple[float, float]) -> Any:
    """The canvas widget pixel of a world (row, col) point in the 2D view."""
    from qtpy.QtCore import QPoint

    canvas = viewer.window._qt_viewer.canvas.native
    cam = viewer.scene.camera
    centre = cam.center[-2:]
    x = (world_rc[1] - centre[1]) * cam.zoom + canvas.width() / 2
    y = (world_rc[0] - centre[0]) * cam.zoom + canvas.height() / 2
    return QPoint(int(round(x)), int(round(y)))


def _mouse(canvas: Any, kind: str, point: Any, buttons: bool) -> None:
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    types = {"press": QEvent.MouseButtonPress, "move": QEvent.MouseMove,
             "release": QEvent.MouseButtonRelease}
    pos = QPointF(point)
    glob = QPointF(canvas.mapToGlobal(point))
    button = Qt.LeftButton if kind != "move" else Qt.NoButton
    held = Qt.LeftButton if buttons else Qt.NoButton
    event = QMouseEvent(types[kind], pos, glob, button, held, Qt.NoModifier)
    QApplication.sendEvent(canvas, event)
    _pump(0.02)


def drag_line(viewer: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Draw one line with real mouse events: press at ``start``, 8 drags, release at ``end``."""
    canvas = viewer.window._qt_viewer.canvas.native
    a, b = _canvas_point(viewer, start), _canvas_point(viewer, end)
    _mouse(canvas, "move", a, False)
    _mouse(canvas, "press", a, True)
    for t in np.linspace(0.125, 1.0, 8):
        p = a + (b - a) * float(t)
        _mouse(canvas, "move", p, True)
    _mouse(canvas, "release", b, False)
    _pump(0.3)


def shoot(viewer: Any, name: str, shots: list[dict[str, Any]], out: Path | None = None) -> None:
    """Save the whole window as a palette PNG (small files) in ``out`` (default OUT)."""
    from PIL import Image

    _pump(0.5)
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(np.asarray(rgba)[..., :3]).quantize(colors=96, dither=Image.Dither.NONE)
    path = (out or SHOTS_DIR[0]) / f"{len(shots) + 1:02d}_{name}.png"
    img.save(path, optimize=True)
    shots.append({"file": str(path), "kb": round(path.stat().st_size / 1024, 1),
                  "size": list(rgba.shape[1::-1])})


def _docks(viewer: Any) -> dict[str, Any]:
    docks = {}
    for title in ("RECIST annotator", "Train / fine-tune", "Evaluate", "Bulk segment"):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title, tabify=True)
        docks[title] = (dock, widget)
    return docks


def _raise(docks: dict[str, Any], title: str) -> None:
    dock = docks[title][0]
    dock.show()
    dock.raise_()
    _pump(0.4)


def dermoscopy(viewer: Any, ann: Any, shots: list[dict[str, Any]]) -> dict[str, Any]:
    """A stray 1 px line, then a long and a short axis across the lesion of ISIC_0000048."""
    from napari_recist_seg.data import read_mask
    from napari_recist_seg.recist import recist_from_mask

    layer = viewer.open(str(SAMPLES / "ISIC_0000048.jpg"))[0]
    viewer.layers.selection.active = layer
    _pump(0.5)
    b = ann.bind(layer)
    viewer.reset_view()
    ann.activate_drawing()
    _pump(0.3)
    gt = read_mask(SAMPLES / "ISIC_0000048_segmentation.png")
    r = recist_from_mask(gt)
    drag_line(viewer, (20.0, 20.0), (20.0, 20.6))  # a stray click-drag of < 1 px
    stray_message = ann.last_message
    drag_line(viewer, tuple(r.long_axis[0]), tuple(r.long_axis[1]))
    drag_line(viewer, tuple(r.short_axis[0]), tuple(r.short_axis[1]))
    _wait_idle(ann)
    shoot(viewer, "dermoscopy_drawn", shots)
    mask = np.asarray(b.labels.data) > 0
    dice = 2 * (mask & gt).sum() / max(1, mask.sum() + gt.sum())
    return {"lesions": len(b.session.lesions), "stray_message": stray_message,
            "area_px": int(mask.sum()), "dice_vs_expert": round(float(dice), 3),
            "message": ann.last_message}


def ct(viewer: Any, ann: Any, shots: list[dict[str, Any]]) -> dict[str, Any]:
    """The CT sample whole, then a stray line, a long and a short axis drawn on slice 7's
    largest expert tumour (not in the sample's CSV), zoomed on it."""
    from scipy import ndimage

    from napari_recist_seg.data.masks import read_labels
    from napari_recist_seg.recist import recist_from_mask

    viewer.layers.clear()  # the view then fits the CT slab
    viewer.open_sample(PLUGIN, "ct")
    image = next(lay for lay in viewer.layers if lay.name == "lits117_slab")
    viewer.layers.selection.active = image
    b = ann.bind(image)
    _wait_idle(ann)
    viewer.reset_view()
    viewer.dims.set_current_step(0, 4)
    shoot(viewer, "ct_sample", shots)
    before = set(b.session.lesions)
    tumours, _ = ndimage.label(read_labels(SAMPLES / "lits117_slab_labels.nii.gz")[7] == 2)
    gt = tumours == np.argmax(np.bincount(tumours.ravel())[1:]) + 1
    r = recist_from_mask(gt)
    viewer.dims.set_current_step(0, 7)
    cam = viewer.scene.camera
    cam.center = (7.0, *np.argwhere(gt).mean(axis=0))
    cam.zoom = cam.zoom * 2.5
    ann.activate_drawing()
    _pump(0.3)
    centre = np.argwhere(gt).mean(axis=0)
    drag_line(viewer, tuple(centre - 12), tuple(centre - 12 + 0.3))  # a stray 1 px drag
    stray_message = ann.last_message
    drag_line(viewer, tuple(r.long_axis[0]), tuple(r.long_axis[1]))
    drag_line(viewer, tuple(r.short_axis[0]), tuple(r.short_axis[1]))
    _wait_idle(ann)
    shoot(viewer, "ct_drawn_slice7", shots)
    new = sorted(set(b.session.lesions) - before)
    mask = np.isin(np.asarray(b.labels.data)[7], new)
    dice = 2 * (mask & gt).sum() / max(1, mask.sum() + gt.sum())
    return {"lesions": len(b.session.lesions), "new": new, "stray_message": stray_message,
            "area_px": int(mask.sum()), "dice_vs_expert": round(float(dice), 3),
            "message": ann.last_message}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    SHOTS_DIR[0] = args.out
    import napari

    viewer = napari.Viewer()
    win = viewer.window._qt_window
    win.showNormal()
    win.setGeometry(0, 0, *SIZE)
    _pump(1.0)
    docks = _docks(viewer)
    ann = docks["RECIST annotator"][1]
    shots: list[dict[str, Any]] = []
    _raise(docks, "RECIST annotator")
    summary: dict[str, Any] = {"dermoscopy": dermoscopy(viewer, ann, shots)}
    summary["ct"] = ct(viewer, ann, shots)
    for title, name in (("Train / fine-tune", "train"), ("Evaluate", "evaluate"),
                        ("Bulk segment", "bulk")):
        _raise(docks, title)
        shoot(viewer, f"{name}_dock", shots)
    summary["window"] = [win.width(), win.height()]
    summary["screenshots"] = shots
    print(json.dumps(summary, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
