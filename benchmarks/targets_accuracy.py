"""Accuracy and speed of the weak targets on ISIC 2017 (RECIST derived from the masks).

For every image: RECIST from the expert mask (``recist_from_mask``), then the Dice of
the ellipse (``quadrant`` and ``centred``), of GrabCut as shipped (ellipse prior 0.5)
and of raw GrabCut (``prior=0``) against that mask. Prints one JSON object: means (and
sd) over all images, the first half and the second half of the sorted file list (the
GrabCut settings were tuned on the first half only), fallback counts and per-image
times (wall and CPU; the CPU time is the better figure on a shared machine).

Run from the repository root::

    python benchmarks/targets_accuracy.py                 # all 2000 images
    python benchmarks/targets_accuracy.py --limit 200     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "isic2017_train256"


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, float)
    return {"mean": round(float(a.mean()), 4), "sd": round(float(a.std()), 4), "n": int(a.size)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with images/ and masks/")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--step", type=int, default=1, help="every STEP-th image")
    parser.add_argument("--no-raw", action="store_true", help="skip raw GrabCut (prior=0)")
    args = parser.parse_args(argv)

    import cv2

    from napari_recist_seg.data import read_image, read_mask
    from napari_recist_seg.metrics import dice
    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.targets import ellipse_mask, grabcut_mask

    masks = sorted((args.data / "masks").glob("*_segmentation.png"))
    if not masks:
        print(f"no masks under {args.data / 'masks'}", file=sys.stderr)
        return 2
    half = len(masks) // 2
    order = list(enumerate(masks))[: args.limit][:: args.step]

    methods = ["ellipse_quadrant", "ellipse_centred", "grabcut"] + ([] if args.no_raw else ["grabcut_raw"])
    dices: dict[str, list[tuple[int, float]]] = {m: [] for m in methods}
    times = {m: {"wall": [], "cpu": []} for m in methods}
    fallbacks: dict[str, int] = {}
    fallback_reasons: dict[str, int] = {}
    load = os.getloadavg()[0]
    t_all = time.perf_counter()
    for idx, mask_path in order:
        stem = mask_path.name.replace("_segmentation.png", "")
        image = read_image(args.data / "images" / f"{stem}.jpg").array
        gt = read_mask(mask_path)
        recist = recist_from_mask(gt)

        def timed(name, fn):
            w, c = time.perf_counter(), time.process_time()
            out = fn()
            times[name]["wall"].append(time.perf_counter() - w)
            times[name]["cpu"].append(time.process_time() - c)
            return out

        runs = {
            "ellipse_quadrant": lambda: ellipse_mask(recist, gt.shape, mode="quadrant"),  # noqa: B023 - called in this iteration
            "ellipse_centred": lambda: ellipse_mask(recist, gt.shape, mode="centred"),  # noqa: B023 - called in this iteration
            "grabcut": lambda: grabcut_mask(image, recist, return_info=True),  # noqa: B023 - called in this iteration
            "grabcut_raw": lambda: grabcut_mask(image, recist, prior=0.0, return_info=True),  # noqa: B023 - called in this iteration
        }
        for name in methods:
            out = timed(name, runs[name])
            if not isinstance(out, np.ndarray):
                if out.fell_back:
                    fallbacks[name] = fallbacks.get(name, 0) + 1
                    key = out.reason.split(" (")[0]
                    fallback_reasons[key] = fallback_reasons.get(key, 0) + 1
                out = out.mask
            dices[name].append((idx, dice(out, gt)))

    def split(name: str, part: str) -> dict[str, float]:
        vals = [d for i, d in dices[name] if part == "all" or (part == "first_half") == (i < half)]
        return _stats(vals) if vals else {}

    result = {
        "benchmark": "targets_accuracy",
        "data": str(args.data),
        "images": len(order),
        "recist": "derived from the expert masks (recist_from_mask)",
        "dice": {
            part: {m: split(m, part) for m in methods}
            for part in ("all", "first_half", "second_half")
        },
        "grabcut_fallbacks": fallbacks,
        "fallback_reasons": fallback_reasons,
        "time_ms_per_image": {
            m: {
                kind: {
                    "median": round(1000 * float(np.median(v)), 2),
                    "p90": round(1000 * float(np.percentile(v, 90)), 2),
                }
                for kind, v in times[m].items()
            }
            for m in methods
        },
        "grabcut_defaults": "prior=0.5, core=0.4, ring=1.15, margin=0.25, iterations=5, max_side=112",
        "total_s": round(time.perf_counter() - t_all, 1),
        "load_average_at_start": round(load, 2),
        "cv2_threads": cv2.getNumThreads(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
