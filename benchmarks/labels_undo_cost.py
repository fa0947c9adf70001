"""What keeping the label image for Undo costs the annotator (issue-3dundo).

Prints one JSON object: median ms over ``--repeats`` of the LabelsState steps on a
CT-sized label volume (``--shape``, default 100 x 512 x 512) holding one 3D lesion of
``--lesion`` voxels a side: ``written`` (after each paste: follows our own write),
``of`` (after a hand edit or an undo: the volume read again), ``changed_ids`` with
nothing changed (each napari refresh, e.g. a slider step), ``changes`` (an undo), and
the bytes one undo step keeps.

    nice python benchmarks/labels_undo_cost.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from napari_recist_seg.annotation.labels_state import LabelsState


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=(100, 512, 512))
    ap.add_argument("--lesion", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="int32")
    args = ap.parse_args()
    labels = np.zeros(args.shape, args.dtype)
    z, n = args.shape[0] // 2, args.lesion
    labels[z - n // 8:z + n // 8, 200:200 + n, 200:200 + n] = 1
    state = LabelsState.of(labels)
    paste = np.nonzero(labels[z] == 1)
    paste = (np.full(paste[0].shape, z), *paste)
    after = labels.copy()
    after[labels == 1] = 0
    out = {
        "shape": list(args.shape), "dtype": args.dtype, "lesion_voxels": int((labels == 1).sum()),
        "written_ms": _ms(lambda: state.written(paste, 2), args.repeats),
        "of_ms": _ms(lambda: LabelsState.of(labels), args.repeats),
        "changed_ids_unchanged_ms": _ms(lambda: state.changed_ids(labels), args.repeats),
        "changes_ms": _ms(lambda: list(state.changes(after)), args.repeats),
        "step_bytes": int(state.flat.nbytes + state.values.nbytes),
        "machine": {"cpus": os.cpu_count(), "load1": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
