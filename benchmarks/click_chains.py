"""Per-candidate RECIST chains of click mode on the proxy, to choose its rules offline.

For each case of ``proxy_shift.load_cases`` and each click of ``proxy_shift.click_points``
(centre, jittered), every circular candidate of ``segment_click`` that holds the click
starts a chain: its measured RECIST is segmented again, ``--rounds`` times (each round
one batch over all chains still alive). Every step is written with its Dice against the
expert mask (read here only to score rules), the Dice of the same step with the
calibration's ``recist_fit`` (same forward, :func:`refine.refine_result`), and the
features a rule may use: image contrast (two-sided, ring-only, band, edge gradient),
the network's confidence along the outline, the RECIST shift, the border leak, size.
Use validation ids only.

Usage::

    python benchmarks/click_chains.py --ids val --skip 120 --n 80 --render clinic --out F.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from click_candidates import click_parser, click_setup, contrast_variants  # noqa: E402
from latency import machine_info  # noqa: E402
from proxy_shift import click_points, load_cases  # noqa: E402

from napari_recist_seg.click_rank import outline_confidence  # noqa: E402

FIT = 0.75  # the default model's recist_fit


def _dice(res, gt: np.ndarray) -> float:
    m = res.full_mask(gt.shape)
    return 2.0 * float((m & gt).sum()) / float(m.sum() + gt.sum())


def step_row(predictor, plane, feats, gt, res, prompt, click) -> dict:
    """Figures of one result (``prompt``: the RECIST it was prompted with)."""
    from napari_recist_seg import click as C
    from napari_recist_seg.refine import refine_result

    row = {"holds": C._holds(res, click)}
    if not row["holds"]:
        return row
    L = res.measured.long_length
    width = max(2, int(round(0.1 * L)))
    fitted = refine_result(res, plane, predictor.refine, threshold=predictor.threshold,
                           postprocess=True, boundary_offset=predictor.boundary_offset,
                           recist_fit=FIT)
    row.update(
        dice=_dice(res, gt), dice_fit=_dice(fitted, gt), area=int(res.mask.sum()), L=L,
        W=res.measured.short_length,
        contrast=C._region_contrast(feats, (0, 0), res.mask, res.offset, width),
        shift=C.recist_shift(prompt, res.measured),
        leak=C._border_leak(res.probability, res.recist, predictor.preprocess, plane.shape[:2]),
        conf=outline_confidence(res, max(1, width // 2)),
        mean_prob=float(res.probability[res.mask].mean()),
        **contrast_variants(feats, (0, 0), res.mask, res.offset, width),
    )
    return row


def click_chains(predictor, image: np.ndarray, gt: np.ndarray, point, rounds: int) -> list:
    """Chains of every holding circular candidate for one click (see module notes)."""
    from napari_recist_seg import click as C
    from napari_recist_seg.recist import RecistError, snap

    p = np.asarray(point, float)
    click = (int(round(p[0])), int(round(p[1])))
    diameters = C.click_scales(image.shape[:2])
    prompts = [C._circle(p, d, None, None) for d in diameters]
    cands = predictor._run(image, prompts, batch_size=len(prompts), tta=False, timings=None,
                           postprocess=True)
    feats = C._click_features(image, predictor.preprocess)
    chains, alive = [], []
    for d, pr, res in zip(diameters, prompts, cands):
        row = step_row(predictor, image, feats, gt, res, pr, click)
        row["d"] = d
        chains.append([row])
        alive.append(res if row["holds"] else None)
    for _ in range(rounds):
        idx, nxt = [], []
        for i, res in enumerate(alive):
            if res is None:
                continue
            try:
                nxt.append(snap(res.measured))
                idx.append(i)
            except RecistError:
                alive[i] = None
        if not nxt:
            break
        outs = predictor._run(image, nxt, batch_size=len(nxt), tta=False, timings=None,
                              postprocess=True)
        for i, pr, res in zip(idx, nxt, outs):
            row = step_row(predictor, image, feats, gt, res, pr, click)
            chains[i].append(row)
            alive[i] = res if row["holds"] else None
    return chains


def main(argv: list[str] | None = None) -> dict:
    parser = click_parser(__doc__, skip=120)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    predictor, info, stems = click_setup(args)
    predictor.recist_fit = 0.0  # as segment_click runs; the fit is scored per step
    t0 = time.perf_counter()
    cases = []
    for i, (stem, image, gt, exact, _) in enumerate(load_cases(stems, args.render, args.seed)):
        clicks = click_points(gt, exact, np.random.default_rng([args.seed, i, 5]))
        cases.append({"stem": stem, "L": exact.long_length,
                      **{k: click_chains(predictor, image, gt, pt, args.rounds)
                         for k, pt in clicks.items()}})
        Path(args.out).write_text(json.dumps({"cases": cases, "partial": True}))
    out = {"benchmark": "click_chains", "ids": f"{args.ids} {args.skip}:{args.skip + args.n}",
           "render": args.render, "model": info, "cases": cases,
           "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info("cpu")}
    Path(args.out).write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
