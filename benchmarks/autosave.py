"""Autosave cost of the annotator (annotation.recovery), printed as JSON.

Two parts, as the dock splits them: ``snapshot`` (GUI thread: the records and a copy
of the labels; what the viewer waits for) and ``write`` (worker thread: CSV, labels
TIFF, entry.json). Inputs: an ISIC sample image (2D), the LiTS CT of ../shared/data
(its whole labels volume) and a full-size 512 x 512 x 200 labels volume, one lesion each.

    PYTHONPATH=$PWD nice python benchmarks/autosave.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_recist_seg._widgets.annotator_recovery import COPY_IN_GUI_BYTES
from napari_recist_seg.annotation import AnnotationSession, recovery
from napari_recist_seg.data import read_image, read_mask
from napari_recist_seg.recist import recist_from_mask

REPO = Path(__file__).resolve().parents[1]
ISIC = REPO / "napari_recist_seg" / "sample_data" / "ISIC_0000021.jpg"
LITS = REPO / ".." / "shared" / "data" / "lits_case117"


def _case(labels: np.ndarray, plane: tuple[int, int], n_slices: int | None) -> AnnotationSession:
    s = AnnotationSession(plane, n_slices=n_slices)
    lab2d = labels if labels.ndim == 2 else labels[int(np.argmax((labels > 0).sum(axis=(1, 2))))]
    z = None if labels.ndim == 2 else int(np.argmax((labels > 0).sum(axis=(1, 2))))
    r = recist_from_mask(lab2d > 0)
    if r is not None:
        s.add_recist(r if z is None else dataclasses.replace(r, slice_index=z), lesion_id=1)
    return s


def _time(repeats: int, key: str, session: AnnotationSession, labels: np.ndarray) -> dict:
    # As the dock does: a copy in the GUI thread only up to COPY_IN_GUI_BYTES.
    copy = labels.nbytes <= COPY_IN_GUI_BYTES
    snap_ms, write_ms = [], []
    with tempfile.TemporaryDirectory() as root:
        for _ in range(repeats):
            t0 = time.perf_counter()
            snap = recovery.snapshot(key, session, labels, None, key, copy_labels=copy)
            t1 = time.perf_counter()
            recovery.write_snapshot(root, snap)
            t2 = time.perf_counter()
            snap_ms.append((t1 - t0) * 1000)
            write_ms.append((t2 - t1) * 1000)
    return {"shape": list(labels.shape), "dtype": str(labels.dtype), "labels_mb": round(labels.nbytes / 1e6, 1),
            "snapshot_ms_median": round(statistics.median(snap_ms), 2),
            "write_ms_median": round(statistics.median(write_ms), 1), "copied_in_gui_thread": copy, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    out = {}
    img = read_image(ISIC).array
    lab = np.zeros(img.shape[:2], np.uint16)
    lab[80:160, 80:170] = 1
    out["isic_2d"] = _time(args.repeats, "isic", _case(lab, lab.shape, None), lab)
    if (LITS / "labels.nii.gz").exists():
        vol = (read_mask(LITS / "labels.nii.gz") > 0).astype(np.uint16)
        out["lits_ct"] = _time(args.repeats, "lits", _case(vol, vol.shape[1:], vol.shape[0]), vol)
    # A full-size CT (512 x 512 x 200, the labels layer's uint16): the copy the GUI waits for.
    big = np.zeros((200, 512, 512), np.uint16)
    big[90:110, 200:260, 220:300] = 1
    out["ct_512x512x200"] = _time(max(3, args.repeats // 2), "big", _case(big, big.shape[1:], 200), big)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
