"""Does flip TTA help the 3D walk? Trace caches of ``benchmarks/lits_3d.py --tta`` compared.

Each ``--cache MODE=PATH`` holds the traces of every proxy with the predictor's
test-time augmentation ``MODE`` (:mod:`napari_recist_seg.tta`) on every slice of the walk.
No model call here: the walks are replayed under the library's default
:class:`~napari_recist_seg.propagate.StopRules`, as ``lits_3d.py`` reports them.

Per proxy and mode, split by tumour id (fold 0 = even ids, the fold a choice is made on;
fold 1 = odd ids, held out; then all):

- ``dice3d``: mean per-tumour 3D Dice (the issue's figure);
- ``recist_slice``: mean Dice of the RECIST slice's mask;
- ``off_slices``: mean per-tumour Dice of the kept off-RECIST slices alone (the 3D
  Dice with the RECIST slice left out of both masks): what the walk adds;
- ``by_distance``: per-slice Dice of the traced masks 1 / 2 / 3 steps from the RECIST
  slice, pooled over tumours, within each tumour's true extent.

The choice rule (fixed before looking): the mode with the best fold-0 mean 3D Dice over
the proxies, with no proxy's fold-0 mean below ``none``'s by more than 0.005; ``none``
when no mode passes.

Run from the repository root::

    python3 benchmarks/lits_3d_tta.py --cache none=/tmp/tta3d/none.pkl flip=/tmp/tta3d/flip.pkl \\
        flip4=/tmp/tta3d/flip4.pkl

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lits_3d import DATA, make_proxy, tumours  # noqa: E402

from napari_recist_seg.propagate import StopRules, first_stop  # noqa: E402

# Choose a mode only if no proxy loses more than this on fold 0 (the brief's tolerance).
MAX_LOSS = 0.005


def _dice(inter: float, a: float, b: float) -> float:
    return 1.0 if a + b == 0 else 2.0 * inter / (a + b)


def tumour_scores(row: dict, gt_areas: np.ndarray, rules: StopRules) -> dict:
    """3D, RECIST-slice and off-slice Dice of one traced tumour under ``rules``, and
    its traced masks' per-slice Dice by distance (within the true extent)."""
    area, inter = row["seed_area"], row["seed_inter"]
    off_area = off_inter = 0
    by_dist: dict[int, float] = {}
    for walk in row["walks"]:
        kept, _ = first_stop([s for s, _ in walk], row["ctx"], rules)
        off_area += sum(s.area for s in kept)
        off_inter += sum(walk[k][1] for k in range(len(kept)))
        for d, (s, i) in enumerate(walk[:3], start=1):
            if gt_areas[s.z] > 0:
                by_dist.setdefault(d, []).append(_dice(i, s.area, int(gt_areas[s.z])))
    off_gt = row["gt_voxels"] - row["slice_gt"]
    return {"id": row["id"],
            "dice3d": _dice(inter + off_inter, area + off_area, row["gt_voxels"]),
            "recist_slice": _dice(row["seed_inter"], row["seed_area"], row["slice_gt"]),
            "off_slices": _dice(off_inter, off_area, off_gt),
            "by_distance": by_dist}


def summarise(per: list[dict]) -> dict:
    """Fold 0 / fold 1 / all means of the per-tumour figures."""
    out = {}
    for fold, keep in (("f0", lambda i: i % 2 == 0), ("f1", lambda i: i % 2 == 1), ("all", lambda i: True)):
        sel = [p for p in per if keep(p["id"])]
        fig = {k: round(float(np.mean([p[k] for p in sel])), 4) if sel else None
               for k in ("dice3d", "recist_slice", "off_slices")}
        for d in (1, 2, 3):
            vals = [v for p in sel for v in p["by_distance"].get(d, [])]
            fig[f"d{d}"] = round(float(np.mean(vals)), 4) if vals else None
        out[fold] = fig
    return out


def choose(table: dict, modes: list[str]) -> dict:
    """The choice rule of the module notes, on fold 0."""
    proxies = list(table)
    f0 = {m: np.array([table[p][m]["f0"]["dice3d"] for p in proxies]) for m in modes}
    base = f0["none"]
    passing = {m: round(float(f0[m].mean()), 4) for m in modes
               if m != "none" and (f0[m] - base).min() >= -MAX_LOSS}
    pick = max(passing, key=passing.get) if passing else "none"
    if passing and passing[pick] <= float(base.mean()):
        pick = "none"
    return {"fold0_mean": {m: round(float(f0[m].mean()), 4) for m in modes},
            "fold0_worst_change": {m: round(float((f0[m] - base).min()), 4) for m in modes},
            "passing": passing, "chosen": pick}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", nargs="+", required=True, help="MODE=PATH, 'none' among them")
    ap.add_argument("--min-slices", type=int, default=3)
    ap.add_argument("--min-area", type=int, default=28)
    args = ap.parse_args()
    from napari_recist_seg.data.images import read_image

    caches = dict(c.split("=", 1) for c in args.cache)
    traces = {}
    for mode, path in caches.items():
        with gzip.open(path, "rb") as fh:
            traces[mode] = pickle.load(fh)
    modes = list(caches)
    proxies = [p for p in traces["none"] if p != "key" and all(p in traces[m] for m in modes)]
    ct = read_image(DATA / "ct.nii.gz").array
    labels = read_image(DATA / "labels.nii.gz").array
    table: dict = {}
    for name in proxies:
        lab = make_proxy(name, ct, labels)[1]
        gt = {t["id"]: t["mask3d"].sum(axis=(1, 2)) for t in tumours(lab, args.min_slices, args.min_area)}
        table[name] = {}
        for mode in modes:
            rows = traces[mode][name]["rows"]
            rules = StopRules()
            table[name][mode] = summarise([tumour_scores(r, gt[r["id"]], rules) for r in rows])
            table[name][mode]["trace_seconds"] = traces[mode][name].get("seconds")
    print(json.dumps({"modes": modes, "choice": choose(table, modes), "proxies": table}, indent=1))


if __name__ == "__main__":
    main()
