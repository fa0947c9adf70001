"""Screenshots of the RECIST annotator on both samples (run under xvfb).

    xvfb-run -a python docs/screenshots/make_screenshots.py [--segmenter default|grabcut|ellipse|CKPT]

Opens a real napari window, loads the sample through the plugin manifest, docks the
annotator through the manifest, lets it segment every RECIST of the sample, and saves
``docs/screenshots/annotator_dermoscopy.png`` and ``annotator_ct.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent
PLUGIN = "napari-recist-seg"


def _wait(app, condition, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not condition():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the annotator did not finish in time")
    for _ in range(20):  # let the canvas redraw
        app.processEvents()
        time.sleep(0.01)


def _close_notifications(viewer, app) -> None:
    """Hide toasts (e.g. napari's PyQt5 deprecation note): they are not the subject."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def shoot(sample: str, out: Path, segmenter: str) -> None:
    import napari
    from napari.layers import Image
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-recist-seg")
    viewer.window._qt_window.resize(1600, 920)
    app = QApplication.instance()
    viewer.open_sample(PLUGIN, sample)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "RECIST annotator")
    _wait(app, lambda: not widget.busy)
    if segmenter in ("ellipse", "grabcut"):
        widget.load_segmenter(segmenter)
    elif segmenter != "default":
        widget.load_segmenter("checkpoint", segmenter)
    _wait(app, lambda: not widget.busy)
    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    for layer in images:
        viewer.layers.selection.active = layer
        _wait(app, lambda: not widget.busy)
    # Show the first image's table, a lesion selected, nothing in drawing mode.
    widget.bind(images[0], activate=False)
    viewer.layers.selection.active = widget.binding.labels
    rows = widget.binding.session.table_rows()
    if rows:
        widget.select_lesion(rows[0]["lesion"])
    viewer.reset_view()
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cam.zoom *= 0.92  # room for the labels at the edges
    if sample == "ct":
        viewer.dims.set_point(0, 4)
    _wait(app, lambda: not widget.busy)
    _close_notifications(viewer, app)
    viewer.window._qt_window.grab().save(str(out))
    print(f"wrote {out} ({widget.last_message})")
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--segmenter", default="default", help="default, grabcut, ellipse or a checkpoint path"
    )
    args = parser.parse_args()
    shoot("dermoscopy", OUT / "annotator_dermoscopy.png", args.segmenter)
    shoot("ct", OUT / "annotator_ct.png", args.segmenter)


if __name__ == "__main__":
    main()
