"""Where the 3D Dice is lost: per tumour, from a trace cache of ``benchmarks/lits_3d.py``.

For every tumour of the named proxies (no model call: the traces of ``--cache``):

- ``dice3d``: the default :class:`StopRules` replayed (as ``lits_3d.py`` reports);
- ``oracle``: the best pair of stops (below, above) on the same walk;
- ``true_stop``: stopping each walk exactly at the tumour's true end (extent right,
  masks as traced);
- ``perfect_seed``: the default stops with the RECIST slice's mask replaced by the
  truth (what the RECIST slice costs);
- ``extent``: slices kept below / above by the default rules, the oracle and the truth;
- per-slice Dice of the traced masks by distance from the RECIST slice, pooled over
  tumours (``by_distance``), within the tumour's true extent.

Run from the repository root::

    python3 benchmarks/lits_3d_diag.py --cache /tmp/thk/base.pkl --proxies ct_thick3 mr_flair_thick3

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


def _dice(inter: float, a: float, b: float) -> float:
    return 1.0 if a + b == 0 else 2.0 * inter / (a + b)


def _sums(walk: list, k: int) -> tuple[int, int]:
    """Area and overlap with the truth of the first ``k`` steps of a walk."""
    return sum(s.area for s, _ in walk[:k]), sum(i for _, i in walk[:k])


def _oracle_stops(row: dict) -> tuple[int, int]:
    """The pair of kept-step counts (below, above) with the best 3D Dice."""
    cs = []
    for walk in row["walks"]:
        a = np.concatenate([[0], np.cumsum([s.area for s, _ in walk])])
        i = np.concatenate([[0], np.cumsum([x for _, x in walk])])
        cs.append((a, i))
    (a0, i0), (a1, i1) = cs
    d = 2.0 * (row["seed_inter"] + i0[:, None] + i1[None, :]) / (
        row["seed_area"] + a0[:, None] + a1[None, :] + row["gt_voxels"])
    k0, k1 = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(k0), int(k1)


def diagnose(rows: list[dict], gt: dict, rules: StopRules) -> dict:
    """Per-tumour figures and the per-slice Dice by distance (module notes)."""
    per, by_dist = [], {}
    for row in rows:
        tum = gt[row["id"]]
        areas = tum["mask3d"].sum(axis=(1, 2))
        z, (z_lo, z_hi) = row["z"], tum["zs"]
        kept = [len(first_stop([s for s, _ in w], row["ctx"], rules)[0]) for w in row["walks"]]
        true = [z - z_lo, z_hi - z]
        orc = _oracle_stops(row)

        def score(ks, seed_area=row["seed_area"], seed_inter=row["seed_inter"]):
            a, i = seed_area, seed_inter
            for w, k in zip(row["walks"], ks):  # noqa: B023 - called in this iteration
                da, di = _sums(w, k)
                a, i = a + da, i + di
            return _dice(i, a, row["gt_voxels"])  # noqa: B023 - called in this iteration

        for w in row["walks"]:
            for d, (s, inter) in enumerate(w, start=1):
                if areas[s.z] > 0:
                    by_dist.setdefault(d, []).append(_dice(inter, s.area, int(areas[s.z])))
        per.append({
            "id": row["id"], "slice_dice": round(_dice(row["seed_inter"], row["seed_area"],
                                                       row["slice_gt"]), 3),
            "dice3d": round(score(kept), 3), "oracle": round(score(orc), 3),
            "true_stop": round(score(true), 3),
            "perfect_seed": round(score(kept, row["slice_gt"], row["slice_gt"]), 3),
            "extent": {"default": kept, "oracle": list(orc), "true": true},
            "traced": [len(w) for w in row["walks"]],
        })
    mean = {k: round(float(np.mean([p[k] for p in per])), 4)
            for k in ("slice_dice", "dice3d", "oracle", "true_stop", "perfect_seed")}
    ext = np.array([[p["extent"]["default"], p["extent"]["true"]] for p in per])  # (n, 2, 2)
    mean["short_steps"] = int(np.clip(ext[:, 1] - ext[:, 0], 0, None).sum())
    mean["long_steps"] = int(np.clip(ext[:, 0] - ext[:, 1], 0, None).sum())
    return {"mean": mean, "by_distance": {d: [round(float(np.mean(v)), 3), len(v)]
                                          for d, v in sorted(by_dist.items()) if d <= 8},
            "per_tumour": per}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--proxies", nargs="+", required=True)
    ap.add_argument("--min-slices", type=int, default=3)
    ap.add_argument("--min-area", type=int, default=28)
    args = ap.parse_args()
    from napari_recist_seg.data.images import read_image

    with gzip.open(args.cache, "rb") as fh:
        traces = pickle.load(fh)
    ct = read_image(DATA / "ct.nii.gz").array
    labels = read_image(DATA / "labels.nii.gz").array
    out = {}
    for name in args.proxies:
        lab = make_proxy(name, ct, labels)[1]
        gt = {t["id"]: t for t in tumours(lab, args.min_slices, args.min_area)}
        out[name] = diagnose(traces[name]["rows"], gt, StopRules())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
