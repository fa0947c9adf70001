"""Build one self-training round's targets for the ISIC training split (issue #10).

For every training and validation id of ``benchmarks/train_default_model.py``'s split,
the RECIST is derived from the expert mask (as training does), the model
(``--model``, default: the shipped one) segments the image from that RECIST, and
:func:`napari_recist_seg.selftrain.self_training_target` refines its probability against
the RECIST and GrabCut. The expert mask is read only to derive the RECIST: it is never
a target and never compared with here. Targets are written as
``OUT/<stem>_target.png`` (0/255), which ``train_default_model.py --target-dir OUT``
trains on; the run is resumable (existing targets are kept).

Usage::

    python benchmarks/selftrain_targets.py --out /tmp/st1 [--model DIR] [--blend 0.25]
        [--tolerance 0.1] [--tta] [--threads 1] [--max N] [--score-val]

Prints one JSON object: counts, the fraction of targets that fell back to GrabCut, the
median area ratio target / GrabCut, and the wall time. ``--score-val`` adds the mean
Dice against the expert masks of the *validation* ids' new targets and of their GrabCut
targets (how the recipe's settings were chosen; training ids are never scored).
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

from train_default_model import DATA, load_case, make_split  # noqa: E402


def full_probability(res, shape: tuple[int, int]) -> np.ndarray:
    """The lesion's crop probability pasted into a zero plane of ``shape``."""
    prob = np.zeros(shape, np.float32)
    r0, c0 = res.offset
    h, w = res.probability.shape
    prob[r0 : r0 + h, c0 : c0 + w] = res.probability
    return prob


def build_target(predictor, image: np.ndarray, recist, blend: float, tolerance: float, tta: bool):
    """``(target, grabcut)`` masks of one lesion (bool, image shape)."""
    from napari_recist_seg.selftrain import self_training_target
    from napari_recist_seg.targets import grabcut_mask

    res = predictor.segment(image, [recist], tta=tta)[0]
    gc = grabcut_mask(image, recist)
    prob = full_probability(res, image.shape[:2])
    return self_training_target(prob, image, recist, grabcut=gc, blend=blend, tolerance=tolerance,
                                threshold=predictor.threshold), gc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--blend", type=float, default=0.25)
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--score-val", action="store_true")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max", type=int, default=None, help="only the first N ids (quick runs)")
    args = p.parse_args(argv)

    import os

    from PIL import Image

    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.metrics import dice
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.recist import recist_from_mask

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # ONNX Runtime's intra-op threads
    stems = sorted(q.stem for q in (DATA / "images").glob("*.jpg"))
    split = make_split(stems)
    ids = split["train"] + split["val"]
    ids = ids[: args.max] if args.max else ids
    predictor = Predictor.load(args.model, device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    made = kept = fell_back = 0
    ratios = []
    val_ids, scores = set(split["val"]), {"target": [], "grabcut": []}
    for i, stem in enumerate(ids):
        dest = args.out / f"{stem}_target.png"
        if dest.exists():
            kept += 1
            continue
        img_path, gt = load_case(stem)
        image = read_image(img_path).array
        target, gc = build_target(predictor, image, recist_from_mask(gt), args.blend, args.tolerance, args.tta)
        if args.score_val and stem in val_ids:  # validation ids only: the recipe's choice
            scores["target"].append(dice(target, gt))
            scores["grabcut"].append(dice(gc, gt))
        fell_back += int(np.array_equal(target, gc))
        ratios.append(float(target.sum()) / max(1.0, float(gc.sum())))
        tmp = dest.with_suffix(".tmp.png")
        Image.fromarray(target.astype(np.uint8) * 255).save(tmp)
        tmp.replace(dest)  # atomic: a crash never leaves a half-written target
        made += 1
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(ids)} targets", file=sys.stderr, flush=True)
    print(json.dumps({
        "n_ids": len(ids), "made": made, "kept": kept,
        "grabcut_fallback_fraction": fell_back / made if made else None,
        "median_area_ratio_to_grabcut": float(np.median(ratios)) if ratios else None,
        "val_dice": ({k: round(float(np.mean(v)), 4) for k, v in scores.items()} | {"n": len(scores["target"])}
                     if scores["target"] else None),
        "blend": args.blend, "tolerance": args.tolerance, "tta": args.tta, "model": str(args.model or "default"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
