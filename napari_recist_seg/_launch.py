"""Open napari with the plugin ready: the annotator docked, images or a sample loaded.

This is what ``recist-seg view`` runs (napari layer: imported only by that command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from napari_recist_seg._reader import is_recist_csv

PLUGIN = "napari-recist-seg"


def open_viewer(
    paths: Sequence[Path] = (),
    *,
    sample: str | None = None,
    widgets: Sequence[str] = ("RECIST annotator",),
    run: bool = True,
):
    """Start a napari viewer with ``widgets`` docked and ``paths`` / ``sample`` opened.

    Returns the viewer (useful with ``run=False`` in tests and scripts).
    """
    import napari

    viewer = napari.Viewer(title="napari-recist-seg")
    if sample:
        viewer.open_sample(PLUGIN, sample)
    for path in paths:
        _open_path(viewer, Path(path))
    for name in widgets:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    # Docking shrinks the canvas: fit the data to what is left of it, now and again once
    # Qt has laid the window out (the canvas only gets its final size then).
    viewer.reset_view()
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, viewer.reset_view)
    if run:
        napari.run()
    return viewer


def _open_path(viewer, path: Path) -> None:
    """RECIST CSVs and CT / MR images through this plugin's readers (napari's own
    readers would also claim ``.csv`` / ``.nii.gz`` / ``.dcm``: no data, or the voxel
    spacing lost); anything else as napari opens it."""
    from napari_recist_seg._image_reader import image_layer_data, is_readable

    if is_recist_csv(path):
        # This plugin's reader by name: napari's own CSV reader also claims ``*.csv``
        # (it then "returned no data", or napari asked which reader to use).
        viewer.open(str(path), plugin=PLUGIN)
    elif is_readable(path):
        data, kwargs, _ = image_layer_data(path)
        viewer.add_image(data, **kwargs)
    else:
        viewer.open(str(path))
