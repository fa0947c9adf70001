"""Wall time of ``segment_click`` per chooser, alternating in one process (same images, clicks).

For each image of the proxy (``proxy_shift.load_cases``) and its centre click, the choosers
(``--choosers``) run one after the other, ``--runs`` times, after one warm-up call each;
the median over all calls of each chooser is printed (ms), with their ratio per call pair.

Usage::

    python benchmarks/click_rank_latency.py --ids val --n 8 --render clinic --runs 2 --threads 1
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--ids", choices=("val", "test"), default="val")
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--render", choices=RENDERS, default="clinic")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--choosers", default="rounds,ranked")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    predictor, info = load_predictor(args.model, "cpu")
    choosers = args.choosers.split(",")
    stems = split_ids(predictor, args.ids)[args.skip: args.skip + args.n]
    ms: dict[str, list[float]] = {c: [] for c in choosers}
    for i, (_, image, gt, exact, _) in enumerate(load_cases(stems, args.render, 0)):
        point = tuple(click_points(gt, exact, np.random.default_rng([0, i, 5]))["exact"])
        for c in choosers:  # warm-up
            predictor.segment_click(image, point, chooser=c)
        for _ in range(args.runs):
            for c in choosers:
                t0 = time.perf_counter()
                predictor.segment_click(image, point, chooser=c)
                ms[c].append(1000.0 * (time.perf_counter() - t0))
    out = {"benchmark": "click_rank_latency", "ids": f"{args.ids} {args.skip}:{args.skip + args.n}",
           "render": args.render, "model": info, "calls": len(ms[choosers[0]]),
           "ms_median": {c: round(float(np.median(v)), 1) for c, v in ms.items()},
           "machine": machine_info("cpu")}
    if len(choosers) == 2:
        a, b = (np.array(ms[c]) for c in choosers)
        out[f"ratio_median_{choosers[1]}_over_{choosers[0]}"] = round(float(np.median(b / a)), 3)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
