"""Predictor design choices, measured: post-processing, flip TTA, click mode.

On held-out ISIC images (the ``test`` list of the model's ``split.json``, images the
model never trained on; else the last N images), with RECIST derived from the expert
masks, reports the mean / median Dice against the expert masks of:

- ``recist``: ``Predictor.segment`` from the RECIST, without post-processing (default);
- ``recist_postprocess``: with component selection + hole filling;
- ``recist_tta``: with horizontal-flip test-time augmentation;
- ``click_deep`` / ``click_centroid``: ``segment_click`` from one click at the point
  deepest inside the expert mask / at its centroid (with the refinement pass, the
  default);
- ``click_deep_norefine``: click without the refinement pass.

Optionally (``--lits``) the same with/without post-processing comparison per LiTS
tumour (RECIST per connected tumour component, every other slice).

Usage::

    python benchmarks/predict_accuracy.py [--model DIR] [--n 200] [--lits]

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

from latency import ISIC, SHARED_DATA, load_predictor, machine_info  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {
        "mean": round(float(a.mean()), 4),
        "sd": round(float(a.std()), 4),
        "median": round(float(np.median(a)), 4),
        "n": int(a.size),
    }


def test_stems(predictor, n: int) -> tuple[list[str], str]:
    split_file = Path(str(predictor.path)) / "split.json" if predictor.path else None
    if split_file is not None and split_file.is_file():
        stems = json.loads(split_file.read_text())["test"]
        return stems[:n], f"split.json test list of {predictor.path}"
    stems = sorted(p.name.rsplit(".", 1)[0] for p in (ISIC / "images").glob("*.jpg"))
    return stems[-n:], "last images of the data set (no split.json with the model)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lits", action="store_true")
    args = parser.parse_args(argv)

    import cv2
    import torch
    from PIL import Image

    from napari_recist_seg.recist import RecistError, recist_from_mask

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor, model_info = load_predictor(args.model, "cpu")
    stems, where = test_stems(predictor, args.n)
    variants = ["recist", "recist_postprocess", "recist_tta", "click_deep", "click_centroid",
                "click_deep_norefine"]
    scores: dict[str, list[float]] = {k: [] for k in variants}
    click_fail = {k: 0 for k in variants if k.startswith("click")}
    pp_changed = 0
    t0 = time.perf_counter()
    for stem in stems:
        image = np.asarray(Image.open(ISIC / "images" / f"{stem}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0
        r = recist_from_mask(gt)
        predictor.postprocess, predictor.tta = False, False
        [plain] = predictor.segment(image, [r])
        predictor.postprocess = True
        [post] = predictor.segment(image, [r])
        predictor.postprocess, predictor.tta = False, True
        [tta] = predictor.segment(image, [r])
        predictor.tta = False
        pp_changed += int(not np.array_equal(plain.mask, post.mask))
        for key, res in (("recist", plain), ("recist_postprocess", post), ("recist_tta", tta)):
            scores[key].append(dice(res.full_mask(gt.shape), gt))
        dist = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, 5)
        deep = np.unravel_index(int(np.argmax(dist)), gt.shape)
        rows, cols = np.nonzero(gt)
        centroid = (float(rows.mean()), float(cols.mean()))
        for key, point, refine in (
            ("click_deep", deep, True),
            ("click_centroid", centroid, True),
            ("click_deep_norefine", deep, False),
        ):
            try:
                res = predictor.segment_click(image, point, refine=refine)
                scores[key].append(dice(res.full_mask(gt.shape), gt))
            except RecistError:
                click_fail[key] += 1
                scores[key].append(0.0)
    out: dict = {
        "benchmark": "predict_accuracy",
        "images": where,
        "model": model_info,
        "dice_vs_expert": {k: summary(v) for k, v in scores.items()},
        "postprocess_changed_masks": pp_changed,
        "click_no_lesion_found": click_fail,
    }
    if args.lits:
        out["lits_postprocess"] = _lits(predictor)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["machine"] = machine_info(predictor.device)
    print(json.dumps(out, indent=2))
    return out


def _lits(predictor) -> dict:
    import nibabel as nib
    from scipy import ndimage

    from napari_recist_seg.recist import RecistError, recist_from_mask

    lits = SHARED_DATA / "lits_case117"
    ct = np.asarray(nib.load(str(lits / "ct.nii.gz")).dataobj).transpose(2, 1, 0).astype(np.int16)
    lab = np.asarray(nib.load(str(lits / "labels.nii.gz")).dataobj).transpose(2, 1, 0)
    plain, post = [], []
    for z in range(0, ct.shape[0], 2):
        comps, n = ndimage.label(lab[z] == 2, structure=np.ones((3, 3), bool))
        for i in range(1, n + 1):
            gt = comps == i
            if gt.sum() < 20:
                continue
            try:
                r = recist_from_mask(gt, slice_index=z).validate(ct.shape)
            except RecistError:
                continue
            for flag, acc in ((False, plain), (True, post)):
                predictor.postprocess = flag
                [res] = predictor.segment(ct, [r])
                acc.append(dice(res.full_mask(ct.shape)[z], gt))
    predictor.postprocess = False
    diff = np.asarray(post) - np.asarray(plain)
    return {
        "tumours": len(plain),
        "dice_plain": summary(plain),
        "dice_postprocess": summary(post),
        "better": int((diff > 1e-9).sum()),
        "worse": int((diff < -1e-9).sum()),
    }


if __name__ == "__main__":
    main()
