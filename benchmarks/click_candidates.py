"""Per-candidate figures of click mode on the proxy, to choose its selection rule.

For each case of ``proxy_shift.load_cases`` and each click of ``proxy_shift.click_points``
(centre, jittered), the click's circular candidates (``click.click_scales``) are
segmented as ``segment_click`` does, and every candidate that holds the click gets
its first RECIST round. Each candidate and round is written with its Dice against the
expert mask (read here only to score rules), its image contrast, its RECIST shift,
its border leak and its size, so that selection rules can be compared offline
(``--rules``: prints mean Dice per rule). Use validation ids only.

Usage::

    python benchmarks/click_candidates.py --ids val --skip 40 --n 80 --render clinic --out F.json
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
from proxy_shift import RENDERS, click_points, load_cases, split_ids  # noqa: E402

from napari_recist_seg.click_rank import mask_in_window  # noqa: E402


def _dice(res, gt: np.ndarray) -> float:
    m = res.full_mask(gt.shape)
    return 2.0 * float((m & gt).sum()) / float(m.sum() + gt.sum())


def contrast_variants(feats, origin, mask, offset, width: int) -> dict:
    """Alternative scores of how a mask stands out (same window as ``_region_contrast``):
    ``ring``: mean difference over the ring's spread only; ``band``: the band just
    inside the outline against the ring; ``edge``: mean feature gradient on the outline
    over its mean in the window."""
    import cv2

    inside, (a0, b0, a1, b1) = mask_in_window(
        feats.shape[:2], mask, (offset[0] - origin[0], offset[1] - origin[1]), width)
    dout = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 3)
    din = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
    ring = (dout > 0) & (dout <= width)
    band = inside & (din <= width)
    win = feats[a0:a1, b0:b1]
    if not ring.any() or not band.any():
        return {"ring": 0.0, "band": 0.0, "edge": 0.0}
    fin, fout, fband = win[inside], win[ring], win[band]
    diff = float(np.linalg.norm(fin.mean(0) - fout.mean(0)))
    sd_out = float(np.sqrt(fout.var(0).sum()))
    bdiff = float(np.linalg.norm(fband.mean(0) - fout.mean(0)))
    sd_band = float(np.sqrt(fband.var(0).sum()))
    sm = cv2.GaussianBlur(np.ascontiguousarray(win), (0, 0), max(1.0, width / 4))
    if sm.ndim == 2:
        sm = sm[..., None]
    gx = np.stack([cv2.Sobel(np.ascontiguousarray(sm[..., k]), cv2.CV_32F, 1, 0) for k in range(sm.shape[2])], 2)
    gy = np.stack([cv2.Sobel(np.ascontiguousarray(sm[..., k]), cv2.CV_32F, 0, 1) for k in range(sm.shape[2])], 2)
    grad = np.sqrt((gx ** 2 + gy ** 2).sum(2))
    outline = (din > 0) & (din <= 1.5)
    edge = float(grad[outline].mean() / (grad.mean() + 1e-6)) if outline.any() else 0.0
    return {"ring": diff / (sd_out + 1e-6), "band": bdiff / (sd_band + sd_out + 1e-6), "edge": edge}


def case_figures(predictor, image: np.ndarray, gt: np.ndarray, point) -> dict:
    """Candidates and their first rounds for one click (see module notes)."""
    from napari_recist_seg import click as C
    from napari_recist_seg.recist import RecistError, snap

    p = np.asarray(point, float)
    click = (int(round(p[0])), int(round(p[1])))
    diameters = C.click_scales(image.shape[:2])
    prompts = [C._circle(p, d, None, None) for d in diameters]
    cands = predictor._run(image, prompts, batch_size=len(prompts), tta=False, timings=None,
                           postprocess=True)
    pad = max(2, int(round(0.1 * max(diameters))))
    feats, origin = C._feature_window(predictor, image, cands, pad)
    rows = []
    held, firsts = [], []
    for d, res in zip(diameters, cands):
        row = {"d": d, "holds": C._holds(res, click)}
        if row["holds"]:
            row.update(
                dice=_dice(res, gt), area=int(res.mask.sum()),
                contrast=C._region_contrast(feats, origin, res.mask, res.offset,
                                            max(2, int(round(0.1 * d)))),
                leak=C._border_leak(res.probability, res.recist, predictor.preprocess,
                                    image.shape[:2]),
                mean_prob=float(res.probability[res.mask].mean()),
                **contrast_variants(feats, origin, res.mask, res.offset, max(2, int(round(0.1 * d)))),
            )
            try:
                firsts.append(snap(res.measured))
                held.append(row)
            except RecistError:
                pass
        rows.append(row)
    if firsts:
        rounds = predictor._run(image, firsts, batch_size=len(firsts), tta=False, timings=None,
                                postprocess=True)
        longest = max(r.measured.long_length if r.measured else 1.0 for r in rounds)
        feats, origin = C._feature_window(predictor, image, rounds, max(2, int(round(0.1 * longest))))
        for row, first, res in zip(held, firsts, rounds):
            ok = C._holds(res, click)
            row["round"] = {"holds": ok}
            if ok:
                width = max(2, int(round(0.1 * res.measured.long_length)))
                row["round"].update(
                    dice=_dice(res, gt), area=int(res.mask.sum()),
                    contrast=C._region_contrast(feats, origin, res.mask, res.offset, width),
                    shift=C.recist_shift(first, res.measured),
                    shift_self=C.recist_shift(res.recist, res.measured),
                    mean_prob=float(res.probability[res.mask].mean()),
                    **contrast_variants(feats, origin, res.mask, res.offset, width),
                )
    return {"candidates": rows}


def click_parser(doc: str, skip: int) -> argparse.ArgumentParser:
    """The options of the click benchmarks (this one and click_chains.py)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--skip", type=int, default=skip)
    parser.add_argument("--ids", choices=("val",), default="val")
    parser.add_argument("--render", choices=RENDERS, default="clinic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    return parser


def click_setup(args: argparse.Namespace):
    """``(predictor, info, stems)`` for the parsed click-benchmark options."""
    import torch

    torch.set_num_threads(args.threads)
    predictor, info = load_predictor(args.model, "cpu")
    return predictor, info, split_ids(predictor, args.ids)[args.skip : args.skip + args.n]


def main(argv: list[str] | None = None) -> dict:
    args = click_parser(__doc__, skip=40).parse_args(argv)
    predictor, info, stems = click_setup(args)
    t0 = time.perf_counter()
    cases = []
    for i, (stem, image, gt, exact, _) in enumerate(load_cases(stems, args.render, args.seed)):
        clicks = click_points(gt, exact, np.random.default_rng([args.seed, i, 5]))
        cases.append({"stem": stem, "L": exact.long_length,
                      **{k: case_figures(predictor, image, gt, pt) for k, pt in clicks.items()}})
    out = {"benchmark": "click_candidates", "ids": f"{args.ids} {args.skip}:{args.skip + args.n}",
           "render": args.render, "model": info, "cases": cases,
           "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info("cpu")}
    Path(args.out).write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
