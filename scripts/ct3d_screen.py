"""A screenshot of the CT sample with 3D lesions (issue 11), at 1366x768, for a person to read.

Run under a 1366x768 X server::

    xvfb-run -a -s "-screen 0 1366x768x24" python3 scripts/ct3d_screen.py

It opens the CT sample (File > Open Sample) with the RECIST annotator (its default
segmenter: the shipped model on CPU), ticks "3D lesion", commits the sample's eight
tumours (each propagated through the slab in a worker), goes to slice 6 (two off the
RECIST slice), and saves ``docs/screenshots/walkthrough/07_ct_3d_lesions.png`` (palette
PNG). It prints a JSON summary (per lesion: slices, voxels; seconds to propagate).
The helpers (real Qt events, small PNGs) are those of ``walkthrough_screens.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import walkthrough_screens as ws  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ws.OUT, help="folder for the PNG")
    parser.add_argument("--slice", type=int, default=6, help="slice shown (RECIST on 4)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import napari

    viewer = napari.Viewer()
    win = viewer.window._qt_window
    win.showNormal()
    win.setGeometry(0, 0, *ws.SIZE)
    ws._pump(1.0)
    _, ann = viewer.window.add_plugin_dock_widget(ws.PLUGIN, "RECIST annotator")
    viewer.open_sample(ws.PLUGIN, "ct")
    image = next(lay for lay in viewer.layers if lay.name == "lits117_slab")
    viewer.layers.selection.active = image
    b = ann.bind(image)
    ws._wait_idle(ann, 60)
    ann.volume_check.setChecked(True)
    t0 = time.perf_counter()
    ann.commit()
    ws._wait_idle(ann, 120)
    seconds = time.perf_counter() - t0
    viewer.reset_view()
    viewer.dims.set_current_step(0, args.slice)
    ann._refresh_table()
    shots: list[dict] = []
    ws.shoot(viewer, "ct_3d_lesions", shots, out=args.out)
    path = Path(shots[0]["file"])
    path.rename(path.with_name("07_ct_3d_lesions.png"))
    lab = np.asarray(b.labels.data)
    lesions = {i: {"slices": np.flatnonzero((lab == i).any(axis=(1, 2))).tolist(),
                   "voxels": int((lab == i).sum())} for i in sorted(b.session.lesions)}
    print(json.dumps({"segmenter": ann._device_text(), "propagate_s": round(seconds, 2),
                      "lesions": lesions, "message": ann.last_message,
                      "png": str(path.with_name("07_ct_3d_lesions.png")),
                      "kb": shots[0]["kb"]}, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
