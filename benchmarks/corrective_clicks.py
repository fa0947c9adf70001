"""Corrective clicks, measured: Dice of the worst cases after 1 and 3 simulated clicks.

On the project's test split (the first ``--n`` ids of the ``test`` list of the default
model's ``split.json``; ISIC images and expert masks in ``/work/shared/data``), with
RECIST derived from the expert masks (as the other benchmarks), the default model
segments each image; the ``--worst`` cases with the lowest Dice then get simulated
corrective clicks, each at the point deepest inside the largest error region
(:func:`~napari_recist_seg.corrective.error_click`: positive on missed lesion, negative
on wrongly covered skin), through :func:`~napari_recist_seg.corrective.correct_lesion`
(GrabCut seeded by the mask, the model probability and the clicks; changes kept local
to the clicks). ``global`` is the same without the locality rule.

Usage::

    nice -n 10 python benchmarks/corrective_clicks.py [--n 200] [--worst 20] [--clicks 3]

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

from latency import ISIC, load_predictor, machine_info  # noqa: E402
from predict_accuracy import dice, summary, test_stems  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--worst", type=int, default=20)
    parser.add_argument("--clicks", type=int, default=3)
    args = parser.parse_args(argv)

    from PIL import Image

    from napari_recist_seg.corrective import correct_lesion, error_click
    from napari_recist_seg.recist import recist_from_mask

    predictor, model_info = load_predictor(args.model, "cpu")
    stems, where = test_stems(predictor, args.n)
    t0 = time.perf_counter()
    cases = []
    for stem in stems:
        image = np.asarray(Image.open(ISIC / "images" / f"{stem}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0
        [res] = predictor.segment(image, [recist_from_mask(gt)])
        prob = np.zeros(gt.shape, np.float32)
        (r0, c0), (h, w) = res.offset, res.probability.shape
        prob[r0 : r0 + h, c0 : c0 + w] = res.probability
        mask = res.full_mask(gt.shape)
        cases.append((dice(mask, gt), stem, image, gt, mask, prob))
    cases.sort(key=lambda c: c[0])
    worst = cases[: args.worst]
    variants = {"local": True, "global": False}
    after: dict[str, dict[int, list[float]]] = {
        v: {k: [] for k in range(args.clicks + 1)} for v in variants
    }
    ms: list[float] = []
    for d0, _stem, image, gt, mask0, prob in worst:
        for name, local in variants.items():
            mask, clicks = mask0, []
            after[name][0].append(d0)
            for k in range(1, args.clicks + 1):
                click = error_click(mask, gt)
                if click is not None:
                    clicks.append(click)
                    t = time.perf_counter()
                    mask = correct_lesion(image, mask0, clicks, prob, local=local)
                    ms.append((time.perf_counter() - t) * 1000)
                after[name][k].append(dice(mask, gt))
    out = {
        "benchmark": "corrective_clicks",
        "images": f"{len(stems)} of the {where}; worst {len(worst)} by Dice",
        "model": model_info,
        "dice_worst": {
            name: {f"{k}_clicks": summary(v) for k, v in per.items()} for name, per in after.items()
        },
        "dice_all_no_click": summary([c[0] for c in cases]),
        "ms_per_click": summary(ms),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info(predictor.device),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
