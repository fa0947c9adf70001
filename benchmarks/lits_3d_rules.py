"""Replaying traced walks of benchmarks/lits_3d.py under stop rules (no model calls)."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from napari_recist_seg.propagate import SeedContext, SliceStep, StopRules, first_stop

#: The grid of :class:`StopRules` the robust choice is made on (10 = growth rule off).
GRID: dict[str, list] = {
    "min_fraction": [0.05, 0.1, 0.15, 0.2],
    "max_growth": [1.1, 1.25, 1.5, 10.0],
    "contrast": [None, 0.3, 0.4, 0.5, 0.6, 0.75],
    "spread": [0.0, 0.5, 1.0],
    "min_overlap": [0.3, 0.5, 0.7],
    "max_slope": [0.5, 1.0, 2.0],
}


#: Round 2 (run-on): the new regrowth and seed-overlap rules (None = off) crossed with
#: the neighbourhood of round 1's choice (``--grid run_on``).
GRID_RUN_ON: dict[str, list] = {
    "min_fraction": [0.05, 0.1, 0.15],
    "max_growth": [1.1, 1.25, 1.5],
    "contrast": [None, 0.5],
    "spread": [0.0],
    "min_overlap": [0.5, 0.7],
    "max_slope": [0.5, 1.0],
    "max_regrowth": [None, 1.1, 1.15, 1.25, 1.5],
    "min_seed_overlap": [None, 0.5, 0.7, 0.8, 0.9],
}
GRIDS = {"round1": GRID, "run_on": GRID_RUN_ON}


def grid_rules(grid: dict[str, list] | None = None) -> list[StopRules]:
    grid = GRID if grid is None else grid
    out = []
    for values in itertools.product(*grid.values()):
        kw = dict(zip(grid, values))
        if kw.get("contrast") is None and kw.get("spread", 0.0) != grid["spread"][0]:
            continue  # spread means nothing without the intensity rule
        out.append(StopRules(**kw))
    return out


@dataclass(frozen=True)
class LegacyRules:
    """The stop rules before issue #11's rework: area < 0.15 of the seed or < 4 px,
    growth > 1.2, overlap < 0.3 of the smaller mask, and on CT only a drift of the
    mean HU by more than 30 from the seed's mean."""

    modality: str
    seed_mean: float | None = None

    def bind(self, row: dict) -> "LegacyRules":
        return replace(self, seed_mean=row.get("seed_mean"))

    def reason(self, step: SliceStep, ctx: SeedContext, smallest: int | None = None) -> str | None:
        if step.area < max(4, 0.15 * ctx.area0):
            return "area"
        if step.area > 1.2 * step.prev_area:
            return "growth"
        if (self.modality == "ct" and self.seed_mean is not None and step.mean is not None
                and abs(step.mean - self.seed_mean) > 30.0):
            return "intensity"
        if step.overlap < 0.3 * min(step.area, step.prev_area):
            return "overlap"
        return None


def _dice(inter: float, a: float, b: float) -> float:
    return 1.0 if a + b == 0 else 2.0 * inter / (a + b)


def _oracle(row: dict) -> float:
    """Best 3D Dice over every pair of stop positions (below, above)."""
    sums = []
    for walk in row["walks"]:
        a = np.concatenate([[0], np.cumsum([s.area for s, _ in walk])])
        i = np.concatenate([[0], np.cumsum([inter for _, inter in walk])])
        sums.append((a, i))
    (a0, i0), (a1, i1) = sums
    inter = row["seed_inter"] + i0[:, None] + i1[None, :]
    area = row["seed_area"] + a0[:, None] + a1[None, :]
    return float((2.0 * inter / (area + row["gt_voxels"])).max())


def evaluate(rows: list[dict], rules, per_tumour: bool = False) -> dict:
    """Mean Dice figures of ``rules`` replayed on traced ``rows``."""
    res: dict = {"per_tumour": [], "stops": Counter(), "capped": 0}
    d3, ds, so, orc = [], [], [], []
    for row in rows:
        r = rules.bind(row) if hasattr(rules, "bind") else rules
        area, inter, n = row["seed_area"], row["seed_inter"], 1
        for walk, capped in zip(row["walks"], row["capped"]):
            kept, why = first_stop([s for s, _ in walk], row["ctx"], r)
            area += sum(s.area for s in kept)
            inter += sum(walk[k][1] for k in range(len(kept)))
            n += len(kept)
            res["stops"][why] += 1
            res["capped"] += int(why == "end" and capped)
        d3.append(_dice(inter, area, row["gt_voxels"]))
        if per_tumour:
            ds.append(_dice(row["seed_inter"], row["seed_area"], row["slice_gt"]))
            so.append(_dice(row["seed_inter"], row["seed_area"], row["gt_voxels"]))
            orc.append(_oracle(row))
            res["per_tumour"].append({"id": row["id"], "slice_dice": round(ds[-1], 4),
                                      "dice3d": round(d3[-1], 4), "oracle": round(orc[-1], 4),
                                      "slices_gt": row["span_gt"], "slices_pred": n})
    res["dice3d"] = float(np.mean(d3)) if d3 else float("nan")
    if per_tumour:
        res.update(slice_dice=float(np.mean(ds)), slice_only=float(np.mean(so)),
                   oracle=float(np.mean(orc)))
    res["stops"] = dict(res["stops"])
    return res


__all__ = ["GRID", "GRIDS", "GRID_RUN_ON", "LegacyRules", "evaluate", "grid_rules"]
