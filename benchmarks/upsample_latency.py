"""Milliseconds per lesion with and without the guided upsampling (Predictor.upsample).

The default model segments the first ``--n`` validation ids, re-rendered by
``proxy_shift.load_cases`` (``--render clinic``: 768 x 576; ``none``: 256 x 256), one
lesion per call (exact RECIST), ``"none"`` and ``"guided"`` interleaved, ``--runs``
passes; prints the median ms per call of each and of the filter alone.

Usage::

    python benchmarks/upsample_latency.py [--render clinic|none|hires] [--n 20] [--runs 3]
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", choices=RENDERS, default="clinic")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from napari_recist_seg import upsample

    torch.set_num_threads(args.threads)
    predictor, info = load_predictor(None, "cpu")
    cases = list(load_cases(split_ids(predictor, "val")[: args.n], args.render, 0))
    times: dict[str, list[float]] = {"none": [], "guided": [], "filter": []}
    original = upsample.guided_upsample
    spent: list[float] = []

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = original(*a, **k)
        spent.append(time.perf_counter() - t0)
        return out

    upsample.guided_upsample = timed
    try:
        for _ in range(args.runs):
            for _stem, image, _gt, exact, _ in cases:
                for method in ("none", "guided"):
                    predictor.upsample = method
                    spent.clear()
                    t0 = time.perf_counter()
                    predictor.segment(image, [exact])
                    times[method].append(time.perf_counter() - t0)
                    if method == "guided":
                        times["filter"].append(sum(spent))
    finally:
        upsample.guided_upsample = original
    out = {
        "benchmark": "upsample_latency",
        "render": args.render,
        "shape": list(cases[0][1].shape),
        "calls": len(times["none"]),
        "ms_median": {k: round(1000 * float(np.median(v)), 1) for k, v in times.items()},
        "model": info,
        "machine": machine_info("cpu"),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
