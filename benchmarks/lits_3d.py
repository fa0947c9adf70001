"""One RECIST -> a 3D tumour on the LiTS case (../shared/data/lits_case117).

Tumours are the 26-connected components of label 2 spanning >= ``--min-slices`` axial
slices whose largest axial cross-section (the RECIST slice) has >= ``--min-area`` px
(28 px gives the issue's 35 tumours).
Each gets one RECIST (``recist_from_mask`` of its largest 2D component on that slice).
The shipped default model segments the RECIST slice; :func:`propagate_lesion` grows it
through the neighbouring slices. Reported: mean RECIST-slice Dice, per-tumour 3D Dice
of the slice-only output and of the propagated one (against that tumour's 3D
component). The model was trained on ISIC dermoscopy only (never on this case).

Run from the repository root::

    nice -n 10 python3 benchmarks/lits_3d.py

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "lits_case117"


def tumours(labels: np.ndarray, min_slices: int, min_area: int) -> list[dict]:
    from napari_recist_seg.recist import recist_from_mask

    lab3, n = ndi.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    out = []
    for t in range(1, n + 1):
        comp = lab3 == t
        areas = comp.sum(axis=(1, 2))
        zs = np.nonzero(areas)[0]
        if zs[-1] - zs[0] + 1 < min_slices:
            continue
        z = int(np.argmax(areas))
        if areas[z] < min_area:
            continue
        lab2, _ = ndi.label(comp[z])
        big = lab2 == (np.argmax(np.bincount(lab2.ravel())[1:]) + 1)
        out.append({"id": t, "z": z, "mask3d": comp, "slice_mask": comp[z],
                    "recist": recist_from_mask(big, slice_index=z)})
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-slices", type=int, default=3)
    ap.add_argument("--min-area", type=int, default=28)
    ap.add_argument("--min-fraction", type=float, default=0.15)
    ap.add_argument("--min-overlap", type=float, default=0.3)
    ap.add_argument("--max-growth", type=float, default=1.2)
    ap.add_argument("--intensity-tol", type=float, default=30.0, help="HU")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.propagate import predictor_segmenter, propagate_lesion

    ct = read_image(DATA / "ct.nii.gz")
    labels = read_image(DATA / "labels.nii.gz").array
    vol = ct.array
    pred = Predictor.load(None, device="cpu")
    seg = predictor_segmenter(pred, vol, modality="ct")
    t0 = time.perf_counter()
    rows = []
    for tum in tumours(labels, args.min_slices, args.min_area):
        z = tum["z"]
        seed = seg(z, tum["recist"])
        only = np.zeros(vol.shape, bool)
        only[z] = seed
        les = propagate_lesion(vol.shape, z, seed, seg, min_fraction=args.min_fraction,
                               min_overlap=args.min_overlap, max_growth=args.max_growth,
                               image=vol, intensity_tol=args.intensity_tol)
        gz = np.nonzero(tum["mask3d"].any(axis=(1, 2)))[0]
        rows.append({"id": tum["id"], "slice_dice": dice(seed, tum["slice_mask"]),
                     "dice3d_slice_only": dice(only, tum["mask3d"]),
                     "dice3d": dice(les.mask, tum["mask3d"]),
                     "slices_gt": int(gz[-1] - gz[0] + 1), "slices_pred": les.n_slices})
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    print(json.dumps({
        "case": "lits_case117", "n_tumours": len(rows), "settings": vars(args),
        "model": "shipped default (trained on ISIC dermoscopy only)",
        "recist_slice_dice": mean("slice_dice"),
        "dice3d_slice_only": mean("dice3d_slice_only"),
        "dice3d_propagated": mean("dice3d"),
        "seconds": round(time.perf_counter() - t0, 1),
        "per_tumour": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
