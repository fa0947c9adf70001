"""How much is there in blending the model's mask with GrabCut from the same RECIST?

On the proxy of :mod:`proxy_shift` (``val`` ids by default), per image and RECIST
kind (exact / jittered): the default model's refined mask (its calibration off), GrabCut
from the RECIST on the lesion's crop (:func:`napari_recist_seg.grabcut_blend.grabcut_of`),
and their blends ``w`` in :data:`~napari_recist_seg.grabcut_blend.BLENDS`, each with the
RECIST fit ``--fit`` applied in two orders: ``blend_then_fit`` (the fit measured on
the blended outline) and ``fit_then_blend`` (the model's outline fitted, then blended:
what the Predictor does), plus the blends without a fit. Printed: mean Dice per
(order, w), the per-lesion oracle over ``w`` (an upper bound: how much a perfect
per-lesion choice would give), GrabCut's fallback share and its median ms per lesion
(the crop's GrabCut alone, 1 thread).

Usage::

    python benchmarks/grabcut_blend.py [--ids val] [--n 60] [--render clinic|none] [--fit 0.75]
        [--style none|tight|loose|edges --style-frac F] [--latency-n 20]

    python benchmarks/grabcut_blend.py --combine clinic.json none.json   # the default's rule

``--combine``: the rule of ``default_calibration.py`` over the cells (render x RECIST kind)
of earlier outputs, order ``fit_then_blend`` (what the Predictor does): among the weights
whose Dice change against 0 is ``>= -0.001`` in every cell, the best mean change.

``--style``: the annotation style of ``finetune_gain.py`` (the expert masks and their
RECIST as another clinic draws them). ``--latency-n``: also the median ms of one
``Predictor.segment`` (one lesion, the model's own calibration) with ``grabcut_blend``
0 and 0.25, timed alternately on that many images.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from finetune_gain import styled_cases  # noqa: E402
from latency import load_predictor, machine_info  # noqa: E402
from proxy_shift import split_ids  # noqa: E402

ORDERS = ("no_fit", "blend_then_fit", "fit_then_blend")


def _dice(m: np.ndarray, g_crop: np.ndarray, g_sum: float) -> float:
    denom = float(m.sum()) + g_sum
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(m, g_crop).sum()) / denom


def case_rows(predictor, image, gt, r, fit: float) -> tuple[np.ndarray, float, bool]:
    """Dice ``(n_orders, n_blends)`` of one lesion, GrabCut's ms, whether it fell back."""
    from napari_recist_seg.grabcut_blend import BLENDS, blend_masks, grabcut_of
    from napari_recist_seg.refine import axis_gap, offset_mask

    [res] = predictor.segment(image, [r])
    (r0, c0), (h, w) = res.offset, res.mask.shape
    local = res.recist.transformed(res.offset, 1.0)
    crop = image[r0:r0 + h, c0:c0 + w]
    g_crop, g_sum = gt[r0:r0 + h, c0:c0 + w], float(gt.sum())
    t0 = time.perf_counter()
    gc = grabcut_of(crop, local)
    ms = 1000 * (time.perf_counter() - t0)

    def fitted(m):
        return offset_mask(m, fit * axis_gap(m, local)) if fit and m.any() else m

    out = np.zeros((len(ORDERS), len(BLENDS)))
    px = fit * axis_gap(res.mask, local) if fit and res.mask.any() else 0.0
    for j, wt in enumerate(BLENDS):
        b = blend_masks(res.mask, gc, wt, local)
        out[0, j] = _dice(b, g_crop, g_sum)
        out[1, j] = _dice(fitted(b), g_crop, g_sum)
        # As refine_result: the model's outline moved by px inside the blend.
        ftb = offset_mask(res.mask, px) if wt == 0 or gc is None else blend_masks(res.mask, gc, wt, local, shift=px)
        out[2, j] = _dice(ftb, g_crop, g_sum)
    return out, ms, gc is None


def latency(predictor, stems: list[str], render: str, seed: int, blend: float = 0.25) -> dict:
    """Median ms of one ``Predictor.segment`` (exact RECIST) without / with the blend,
    the two timed alternately per image (its own calibration otherwise)."""
    from proxy_shift import load_cases

    times: dict[str, list[float]] = {"blend 0": [], f"blend {blend:g}": []}
    saved = predictor.grabcut_blend
    try:
        for _, image, _, exact, _ in load_cases(stems, render, seed):
            for name, w in zip(times, (0.0, blend)):
                predictor.grabcut_blend = w
                t0 = time.perf_counter()
                predictor.segment(image, [exact])
                times[name].append(1000 * (time.perf_counter() - t0))
    finally:
        predictor.grabcut_blend = saved
    return {k: round(float(np.median(v)), 1) for k, v in times.items()} | {"n": len(stems)}


def combine(paths: list[str], tol: float = 0.001) -> dict:
    """The default's rule (module notes) over the cells of earlier outputs (outputs of
    one render on other ids, e.g. ``--skip 0`` and ``--skip 100``: weighted by their n)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for p in paths:
        d = json.loads(Path(p).read_text())
        n = int(d["ids"].split(", ")[1].split(" ")[0])
        for kind in ("exact", "jittered"):
            key = f"{d['render']}/{kind}"
            sums[key] = sums.get(key, 0.0) + n * np.asarray(d[kind]["fit_then_blend"])
            counts[key] = counts.get(key, 0) + n
    cells = {k: v / counts[k] - v[0] / counts[k] for k, v in sums.items()}
    blends = d["blends"]
    delta = np.stack(list(cells.values()))
    ok = delta.min(axis=0) >= -tol
    score = np.where(ok, delta.mean(axis=0), -np.inf)
    best = int(np.argmax(score))
    return {"cells": {k: [round(float(x), 4) for x in v] for k, v in cells.items()}, "blends": blends,
            "mean": [round(float(x), 4) for x in delta.mean(axis=0)],
            "worst": [round(float(x), 4) for x in delta.min(axis=0)],
            "chosen": blends[best] if score[best] > 0 else 0.0}


def main(argv: list[str] | None = None) -> dict:
    from napari_recist_seg.grabcut_blend import BLENDS
    from napari_recist_seg.recist import RecistError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--ids", choices=("val", "test"), default="val")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--render", default="clinic")
    ap.add_argument("--fit", type=float, default=0.75)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--style", default="none")
    ap.add_argument("--style-frac", type=float, default=0.03)
    ap.add_argument("--latency-n", type=int, default=0)
    ap.add_argument("--combine", nargs="+", default=None, help="earlier outputs: the default's rule")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.combine:
        out = {"benchmark": "grabcut_blend", "combine": args.combine, **combine(args.combine)}
        print(json.dumps(out, indent=2))
        return out

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    predictor, info = load_predictor(args.model, "cpu")
    stems = split_ids(predictor, args.ids)[args.skip:args.skip + args.n]
    lat = latency(predictor, stems[:args.latency_n], args.render, args.seed) if args.latency_n else None
    predictor.recist_fit = predictor.boundary_offset = 0.0
    t0 = time.perf_counter()
    tables = {k: [] for k in ("exact", "jittered")}
    ms, fell = [], 0
    for _stem, image, gt, exact, jit in styled_cases(stems, args.render, args.seed, args.style, args.style_frac):
        for kind, r in (("exact", exact), ("jittered", jit)):
            try:
                d, t, f = case_rows(predictor, image, gt, r, args.fit)
            except RecistError:
                d, t, f = np.zeros((len(ORDERS), len(BLENDS))), 0.0, True
            tables[kind].append(d)
            ms.append(t)
            fell += int(f)
    out = {"benchmark": "grabcut_blend", "ids": f"{args.ids} split, {len(stems)} from {args.skip}",
           "render": args.render, "style": args.style, "style_frac": args.style_frac, "fit": args.fit, "blends": list(BLENDS), "model": info}
    for kind, rows in tables.items():
        t = np.stack(rows)  # (n, orders, blends)
        out[kind] = {o: [round(float(v), 4) for v in t[:, i].mean(axis=0)] for i, o in enumerate(ORDERS)}
        out[kind]["oracle_fit_then_blend"] = round(float(t[:, 2].max(axis=1).mean()), 4)
        out[kind]["oracle_model_or_grabcut"] = round(float(t[:, 2][:, [0, -1]].max(axis=1).mean()), 4)
        out[kind]["grabcut_better_share"] = round(float((t[:, 2, -1] > t[:, 2, 0]).mean()), 3)
    out["grabcut_fell_back_share"] = round(fell / max(1, len(ms)), 3)
    out["grabcut_ms_median"] = round(float(np.median(ms)), 1)
    if lat is not None:
        out["segment_ms_median"] = lat
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["machine"] = machine_info(predictor.device)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
