"""`recist-seg view` in a real viewer: sample opened, annotator docked, masks appear."""

from __future__ import annotations

import numpy as np

from napari_recist_seg._launch import open_viewer


def test_open_viewer_with_dermoscopy_sample(qtbot):
    viewer = open_viewer(sample="dermoscopy", run=False)
    try:
        names = [layer.name for layer in viewer.layers]
        assert any(n.startswith("ISIC_") for n in names), names
        docks = list(viewer.window.dock_widgets)
        assert any("RECIST annotator" in name for name in docks), docks

        images = [n for n in names if n.startswith("ISIC_") and " " not in n]
        assert len(images) == 4, names

        def masks_shown() -> bool:
            # Every sample image gets its masks on opening, not only the selected one.
            return all(
                f"{n} lesions" in viewer.layers
                and np.asarray(viewer.layers[f"{n} lesions"].data).any()
                for n in images
            )

        qtbot.waitUntil(masks_shown, timeout=60000)
    finally:
        viewer.close()
