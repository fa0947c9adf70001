"""How the ``"recist"`` threshold choice searches, on the default model's real probabilities.

For N ISIC images (``--ids val`` by default: the model's validation ids; ``all`` for
the 2000 images; the choice is not tuned here, only counted), the default predictor's
unrefined probability of each lesion (RECIST derived from the expert mask) is taken,
and for each threshold of ``refine.THRESHOLDS`` (and the fixed one) the error
``refine._threshold_error`` measures on the shrunk map. It reports, as one JSON object:

- ``chosen``: how often each threshold is chosen (the shipped rule);
- ``hill_climb_differs``: lesions where a search that starts at the fixed threshold
  and walks to the better neighbour while the error falls (at most 4 measurements
  instead of 6) would choose another threshold: the error is not unimodal there;
- ``measured_per_lesion``: components flood-filled (long axes) and short axes measured
  by the shipped rule (``refine._best_threshold``), counted by wrapping its helpers;
- ``best_threshold_us``: its process CPU per lesion (median of 3 passes).

Usage::

    python benchmarks/threshold_search.py [--ids val|test|all] [--n 200]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splits import ISIC, isic_split, load_isic_case  # noqa: E402


def _probabilities(stems: list[str]) -> list[tuple[np.ndarray, object]]:
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.recist import recist_from_mask

    predictor = Predictor.load(None, device="cpu", threads=1)
    predictor.refine, predictor.recist_fit = "none", 0.0
    out = []
    for start in range(0, len(stems), 8):
        pairs = []
        for stem in stems[start : start + 8]:
            _, image, gt = load_isic_case(stem)
            pairs.append((image, [recist_from_mask(gt > 0)]))
        for [res] in predictor.segment_many(pairs):
            out.append((res.probability, res.recist.transformed(res.offset, 1.0)))
    return out


def _errors(prob: np.ndarray, r: object, threshold: float) -> list[float]:
    """The error of each of (THRESHOLDS) on the shrunk map, as the choice measures it."""
    from napari_recist_seg import refine

    f = min(1.0, refine._MEASURE_SIDE / max(prob.shape))
    small, r_small = prob, r
    if f < 1.0:
        size = (max(2, int(round(prob.shape[1] * f))), max(2, int(round(prob.shape[0] * f))))
        small = cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)
        r_small = r.transformed((0.0, 0.0), (size[1] / prob.shape[0], size[0] / prob.shape[1]))
    at = refine._crossing_pixel(r_small)
    return [refine._threshold_error(small > t, r_small, at) if (small > t).any() else float("inf")
            for t in refine.THRESHOLDS]


def _hill_climb(errors: list[float], start: int) -> int:
    """Index chosen by walking from ``start`` to the better neighbour while it is better."""
    def better(i: int, j: int) -> bool:
        return 0 <= j < len(errors) and errors[j] < errors[i] - 1e-9

    left, right = start - 1, start + 1
    if better(start, left) and (not better(start, right) or errors[left] <= errors[right]):
        step = -1
    elif better(start, right):
        step = 1
    else:
        return start
    cur = start + step
    while better(cur, cur + step):
        cur += step
    return cur


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", choices=["val", "test", "all"], default="val")
    parser.add_argument("--n", type=int, default=200, help="images (at most)")
    args = parser.parse_args(argv)
    from napari_recist_seg import refine

    stems = (sorted(p.stem for p in (ISIC / "images").glob("*.jpg")) if args.ids == "all"
             else isic_split()[args.ids])[: args.n]
    cases = _probabilities(stems)
    thresholds, fixed = refine.THRESHOLDS, 0.5
    chosen: collections.Counter = collections.Counter()
    differs = 0
    for prob, r in cases:
        mask = refine._best_threshold(prob, r, fixed)[0]
        pick = next(t for t in (fixed, *thresholds) if np.array_equal(mask, prob > t))
        chosen[pick] += 1
        errors = _errors(prob, r, fixed)
        climbed = thresholds[_hill_climb(errors, thresholds.index(fixed))]
        differs += not np.array_equal(prob > climbed, mask)
    counts: collections.Counter = collections.Counter()
    wrapped = {name: getattr(refine, name) for name in ("_kept_component", "_component_axes")}
    for name, real in wrapped.items():
        setattr(refine, name, lambda *a, _n=name, _f=real, **k: (counts.update([_n]), _f(*a, **k))[1])
    for prob, r in cases:
        refine._best_threshold(prob, r, fixed)
    for name, real in wrapped.items():
        setattr(refine, name, real)
    passes = []
    for _ in range(3):
        c0 = time.process_time()
        for prob, r in cases:
            refine._best_threshold(prob, r, fixed)
        passes.append(1e6 * (time.process_time() - c0) / len(cases))
    result = {
        "ids": args.ids, "lesions": len(cases), "chosen": {str(k): v for k, v in sorted(chosen.items())},
        "hill_climb_differs": differs,
        "measured_per_lesion": {"flood_fills": counts["_kept_component"] / len(cases),
                                "short_axes": counts["_component_axes"] / len(cases)},
        "best_threshold_us": round(float(np.median(passes)), 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
