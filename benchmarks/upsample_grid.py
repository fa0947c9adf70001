"""Settle the edge-aware upsampling (napari_recist_seg.upsample) on the proxy.

For each case of ``proxy_shift.load_cases`` (exact and jittered RECIST) the network
runs once; its probability (bilinear to the crop box) is then filtered with every
``(radius, eps)`` of the grid and refined the predictor's way (``refine.refine_mask``
with ``Predictor.refine``, default ``"recist"``). Prints mean Dice against the expert
mask per setting and RECIST kind, the paired difference to no filtering, and the
median milliseconds of the filter alone.

Usage::

    python benchmarks/upsample_grid.py --ids val --n 60 --render clinic
        [--radius 1,2,3] [--eps 1e-3,1e-2] [--threads 1]
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

from latency import load_predictor, machine_info  # noqa: E402
from proxy_shift import RENDERS, load_cases, split_ids  # noqa: E402


def _dice_in_box(pred: np.ndarray, offset: tuple[int, int], gt: np.ndarray) -> float:
    r0, c0 = offset
    h, w = pred.shape
    inter = float(np.logical_and(pred, gt[r0 : r0 + h, c0 : c0 + w]).sum())
    total = float(pred.sum() + gt.sum())
    return 2.0 * inter / total if total else 1.0


def run_grid(predictor, cases, settings: list[tuple[float, float, bool, str, float]],
             args_detail: float = 2.0) -> dict:
    """``{kind: {setting: [dice per case]}}`` and filter times."""
    from napari_recist_seg.preprocess import crop_box
    from napari_recist_seg.recist import snap
    from napari_recist_seg.refine import refine_mask
    from napari_recist_seg.upsample import guided_upsample

    method = predictor.refine
    saved = predictor.upsample
    predictor.upsample = "none"
    dice: dict[str, dict[str, list[float]]] = {}
    ms: dict[str, list[float]] = {}
    try:
        for _stem, image, gt, exact, jittered in cases:
            for kind, r in (("exact", exact), ("jittered", jittered)):
                r = snap(r.validate(image.shape), image_shape=image.shape)
                [res] = predictor._run(image, [r], batch_size=1, tta=False, timings=None)
                (r0, c0), (h, w) = res.offset, res.probability.shape
                crop = image[r0 : r0 + h, c0 : c0 + w]
                local = r.transformed(res.offset, 1.0)
                scale = crop_box(r, predictor.preprocess).side / predictor.preprocess.input_size
                plain = refine_mask(method, res.probability, local, crop, threshold=predictor.threshold)
                dice.setdefault(kind, {}).setdefault("none", []).append(
                    _dice_in_box(plain, res.offset, gt))
                for radius, eps, colour, order, smooth in settings:
                    key = f"{order[:2]}_{'c' if colour else ''}r{radius:g}_e{eps:g}"
                    key += f"_s{smooth:g}" if smooth else ""
                    t0 = time.perf_counter()
                    if order == "pre":  # filter the probability, then refine
                        prob = guided_upsample(res.probability, crop, scale, radius=radius,
                                               eps=eps, colour=colour, smooth=smooth,
                                               detail=args_detail)
                        mask = refine_mask(method, prob, local, crop, threshold=predictor.threshold)
                    else:  # refine, then filter the chosen mask
                        soft = guided_upsample(plain.astype(np.float32), crop, scale, radius=radius,
                                               eps=eps, colour=colour, smooth=smooth)
                        mask = soft > 0.5
                    ms.setdefault(key, []).append(1000 * (time.perf_counter() - t0))
                    dice[kind].setdefault(key, []).append(_dice_in_box(mask, res.offset, gt))
    finally:
        predictor.upsample = saved
    return {"dice": dice, "ms": ms}


def summarize(out: dict) -> dict:
    table = {}
    for kind, per in out["dice"].items():
        base = np.asarray(per["none"])
        for key, vals in per.items():
            v = np.asarray(vals)
            d = v - base
            table.setdefault(key, {})[kind] = {
                "dice": round(float(v.mean()), 4),
                "delta": round(float(d.mean()), 4),
                "wins": int((d > 1e-6).sum()),
                "losses": int((d < -1e-6).sum()),
            }
    table["none"]["filter_ms_median"] = 0.0
    for key, t in out["ms"].items():
        table[key]["filter_ms_median"] = round(float(np.median(t)), 2)
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--ids", choices=("test", "val"), default="val")
    parser.add_argument("--render", choices=RENDERS, default="clinic")
    parser.add_argument("--radius", default="1,2,3")
    parser.add_argument("--eps", default="1e-3,3e-3,1e-2,3e-2")
    parser.add_argument("--guide", choices=("grey", "colour", "both"), default="grey")
    parser.add_argument("--order", choices=("pre", "post", "both"), default="pre",
                        help="filter the probability before the refinement, or its mask after")
    parser.add_argument("--smooth", default="0", help="guide blur, x scale / 2 (sensor noise)")
    parser.add_argument("--detail", type=float, default=2.0,
                        help="coefficients at DETAIL x the network's resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.guides = {"grey": [False], "colour": [True], "both": [False, True]}[args.guide]

    import torch

    torch.set_num_threads(args.threads)
    predictor, info = load_predictor(args.model, "cpu")
    stems = split_ids(predictor, args.ids)[: args.n]
    orders = ["pre", "post"] if args.order == "both" else [args.order]
    settings = [(float(r), float(e), c, o, float(sm)) for o in orders for c in args.guides
                for r in args.radius.split(",") for e in args.eps.split(",")
                for sm in args.smooth.split(",")]
    t0 = time.perf_counter()
    out = run_grid(predictor, load_cases(stems, args.render, args.seed), settings, args.detail)
    result = {
        "benchmark": "upsample_grid",
        "ids": f"{args.ids} split, first {len(stems)}",
        "render": args.render,
        "refine": predictor.refine,
        "model": info,
        "settings": summarize(out),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info(predictor.device),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
