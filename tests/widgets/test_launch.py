"""`recist-seg view` in a real viewer: sample opened, annotator docked, masks appear."""

from __future__ import annotations

import numpy as np

from napari_recist_seg._launch import open_viewer


def test_open_viewer_with_dermoscopy_sample(qtbot):
    viewer = open_viewer(sample="dermoscopy", run=False)
    try:
        names = [layer.name for layer in viewer.layers]
        assert any(n.startswith("ISIC_") for n in names), names
        docks = [name for name in viewer.window.dock_widgets]
        assert any("RECIST annotator" in name for name in docks), docks

        def masks_shown() -> bool:
            return any(
                n.endswith(" lesions") and np.asarray(viewer.layers[n].data).any()
                for n in (layer.name for layer in viewer.layers)
            )

        qtbot.waitUntil(masks_shown, timeout=60000)
    finally:
        viewer.close()
