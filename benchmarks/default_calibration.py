"""Should the default model carry a calibration? A (RECIST fit x boundary offset) grid on the proxy.

The proxy of :mod:`proxy_shift` (the model's ``val`` ids by default: the ids to choose
on), rendered as another clinic (``clinic``) and as they are (``none``), with the exact
and the jittered RECIST: four cells. Each image is segmented once per cell with the
model's calibration off (``calibration.dice_table``: the network's outputs and the
refinement are computed once, every (fit, offset) pair is scored on the same masks),
so the whole grid costs one pass.

Rule: among the settings whose Dice change against (fit 0, offset 0) is ``>= -tol``
(0.001) in every cell, the one with the best mean change over the four cells (ties: the
smaller change). A RECIST the predictor refuses scores 0 in every setting (as in
``proxy_shift``).

Usage::

    python benchmarks/default_calibration.py [--model DIR] [--ids val|test] [--n 200]
        [--renders clinic,none] [--threads 1] [--out table.npz] [--latency-n 30]
    python benchmarks/default_calibration.py --renders '' --fit 0.75 --latency-n 30  # timing only

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from latency import load_predictor, machine_info  # noqa: E402
from proxy_shift import load_cases, split_ids  # noqa: E402

FITS = (0.0, 0.25, 0.5, 0.75, 1.0)
OFFSETS = (-0.01, -0.005, 0.0)
KINDS = ("exact", "jittered")


def cell_tables(predictor, stems: list[str], render: str, seed: int = 0) -> dict[str, np.ndarray]:
    """``kind -> Dice (n_images, n_fits, n_offsets)`` of one render (one pass per kind)."""
    from napari_recist_seg.calibration import CalibrationCase, dice_table
    from napari_recist_seg.recist import RecistError

    out = {k: np.zeros((len(stems), len(FITS), len(OFFSETS))) for k in KINDS}
    for i, (stem, image, gt, exact, jittered) in enumerate(load_cases(stems, render, seed)):
        for kind, r in zip(KINDS, (exact, jittered)):
            with contextlib.suppress(RecistError):  # refused: Dice 0 whatever the setting
                out[kind][i] = dice_table(predictor, [CalibrationCase(stem, image, [r], gt)],
                                          (0.0,), OFFSETS, fits=FITS)[0, 0]
    return out


def choose_setting(deltas: np.ndarray, tol: float = 0.001) -> tuple[int, int] | None:
    """Grid indices ``(fit, offset)`` by the rule of the module notes, or None when
    no setting other than (0, 0) qualifies.

    ``deltas``: ``(n_cells, n_fits, n_offsets)`` mean Dice change against (0, 0).

    Examples
    --------
    >>> d = np.zeros((4, 5, 3)); d[:, 3, 1] = 0.004; d[0, 4, 0] = 0.01; d[1, 4, 0] = -0.002
    >>> choose_setting(d)
    (3, 1)
    """
    ok = deltas.min(axis=0) >= -tol
    size = np.abs(np.asarray(FITS))[:, None] + 100 * np.abs(np.asarray(OFFSETS))[None, :]
    score = np.where(ok, deltas.mean(axis=0) - 1e-7 * size, -np.inf)
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    if score[best] <= 0:
        return None
    return int(best[0]), int(best[1])


def summarise(tables: dict[str, np.ndarray], tol: float) -> dict:
    """Per cell: Dice at (0, 0) and the change of every setting; the chosen setting."""
    f0, o0 = FITS.index(0.0), OFFSETS.index(0.0)
    cells = sorted(tables)
    deltas = np.stack([tables[c].mean(axis=0) - tables[c][:, f0, o0].mean() for c in cells])
    pick = choose_setting(deltas, tol)
    grid = {f"fit {f:g} / offset {o:+g}": {c: round(float(deltas[n, a, b]), 4) for n, c in enumerate(cells)}
            | {"mean": round(float(deltas[:, a, b].mean()), 4), "worst": round(float(deltas[:, a, b].min()), 4)}
            for a, f in enumerate(FITS) for b, o in enumerate(OFFSETS)}
    out = {"dice_uncalibrated": {c: round(float(tables[c][:, f0, o0].mean()), 4) for c in cells},
           "delta_vs_uncalibrated": grid, "chosen": None}
    if pick is not None:
        a, b = pick
        out["chosen"] = {"recist_fit": FITS[a], "boundary_offset": OFFSETS[b],
                         "dice": {c: round(float(tables[c][:, a, b].mean()), 4) for c in cells},
                         "images_worse_by_0.01": {c: int((tables[c][:, a, b] < tables[c][:, f0, o0] - 0.01).sum())
                                                  for c in cells}}
    return out


def latency(predictor, stems: list[str], fit: float, offset: float, seed: int = 0) -> dict:
    """Median ms of one ``Predictor.segment`` call (one lesion, clinic render, exact
    RECIST) without and with ``(fit, offset)``, the two timed alternately per image."""
    times: dict[str, list[float]] = {"uncalibrated": [], "calibrated": []}
    saved = predictor.recist_fit, predictor.boundary_offset
    try:
        for _, image, _, exact, _ in load_cases(stems, "clinic", seed):
            for name, (f, o) in (("uncalibrated", (0.0, 0.0)), ("calibrated", (fit, offset))):
                predictor.recist_fit, predictor.boundary_offset = f, o
                t0 = time.perf_counter()
                predictor.segment(image, [exact])
                times[name].append(1000 * (time.perf_counter() - t0))
    finally:
        predictor.recist_fit, predictor.boundary_offset = saved
    return {k: round(float(np.median(v)), 1) for k, v in times.items()} | {"n": len(stems)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--ids", choices=("val", "test"), default="val")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--renders", default="clinic,none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-n", type=int, default=0,
                        help="also time the chosen setting on this many images (clinic render)")
    parser.add_argument("--fit", type=float, default=None, help="with --renders '': time this fit")
    parser.add_argument("--offset", type=float, default=0.0, help="with --fit: time this offset")
    parser.add_argument("--out", default=None, help="save the per-image tables (.npz)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    predictor, info = load_predictor(args.model, "cpu")
    if predictor.boundary_offset or predictor.recist_fit or predictor.logit_bias:
        info["own_calibration"] = "replaced while scoring (dice_table)"
    stems = split_ids(predictor, args.ids)[: args.n]
    t0 = time.perf_counter()
    tables: dict[str, np.ndarray] = {}
    for render in [r for r in args.renders.split(",") if r]:
        for kind, t in cell_tables(predictor, stems, render, args.seed).items():
            tables[f"{render}/{kind}"] = t
    if args.out:
        np.savez_compressed(args.out, fits=FITS, offsets=OFFSETS, ids=stems, **tables)
    out = {"benchmark": "default_calibration", "ids": f"{args.ids} split, first {len(stems)}",
           "seed": args.seed, "tol": args.tol, "model": info, "refine": predictor.refine,
           **(summarise(tables, args.tol) if tables else {"chosen": None}),
           "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info(predictor.device)}
    chosen = out["chosen"] or ({"recist_fit": args.fit, "boundary_offset": args.offset} if args.fit else None)
    if args.latency_n and chosen:
        out["ms_per_lesion_median"] = latency(predictor, stems[: args.latency_n], chosen["recist_fit"],
                                              chosen["boundary_offset"], args.seed)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
