"""Proxy for another clinic's images: the held-out test split re-rendered, measured.

The project has no full-resolution dermoscopy from another source, so this benchmark
makes one from images the default model never trained on (the ``test`` ids of the
model's ``split.json``; ``--ids val`` for the validation ids, the ones to tune on):

- resolution: the 256 x 256 image resized (bicubic) to 768 x 576 (about 3x, and the
  4:3 aspect of the clinic's ~768 x 560 images); the expert mask resized (linear,
  threshold 0.5) with it;
- a camera of its own, drawn per image from a seeded generator: Gaussian blur
  (sigma 0.5-1.5 px), per-channel colour gains (0.85-1.15), gamma (0.8-1.25), JPEG
  quality 60-95;
- RECIST derived from the re-rendered expert mask, exact and jittered as a human draws
  (each endpoint moved by N(0, (0.03 L)^2) per coordinate, kept inside the image);
- for the click methods, one click instead of the RECIST: "exact" at the lesion centre
  (the expert mask's centroid, or the exact RECIST's crossing when the centroid lies
  outside the mask), "jittered" that click moved by N(0, (0.05 L)^2) per coordinate
  (kept inside the image).

For each method it prints the DESIGN.md section-6 metrics (``metrics.evaluate_case``:
Dice, IoU, HD95, AVD) averaged over images, the median area ratio to the expert mask,
and how many RECIST were refused. Methods: the default ``Predictor`` as shipped
(``model``), with ``Predictor.upsample = "guided"`` (``model_guided``), its raw
thresholded probability (``model_raw``), GrabCut and the
quadrant ellipse from the same RECIST, the refinements of
:mod:`napari_recist_seg.refine`, and ``Predictor.segment_click`` from one click
(``click``: as shipped; ``click_single``: one pass, no RECIST refinement;
``click_once``: one RECIST refinement round; ``click_rounds`` / ``click_ranked``: the
``chooser`` of ``click_rank.segment_click``) (``--methods``). ``ms_median`` is the
median wall time of one call (image already in memory).

Usage::

    python benchmarks/proxy_shift.py [--model DIR] [--n 50] [--skip 0] [--ids test|val]
        [--render clinic|none|hires] [--methods model,grabcut,...] [--seed 0]

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from latency import ISIC, load_predictor, machine_info  # noqa: E402

CLINIC_SHAPE = (576, 768)  # rows, cols
JITTER_SD = 0.03  # of the long axis, per endpoint coordinate
CLICK_JITTER_SD = 0.05  # of the long axis, per click coordinate


def render_clinic(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
    shape: tuple[int, int] = CLINIC_SHAPE,
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` as another camera would have given them (see module notes)."""
    import cv2
    from PIL import Image

    size = (int(shape[1]), int(shape[0]))
    img = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    m = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5)))
    img = np.clip(img * rng.uniform(0.85, 1.15, size=3)[None, None, :], 0, 1)
    img = img ** float(rng.uniform(0.8, 1.25))
    buf = io.BytesIO()
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(
        buf, format="JPEG", quality=int(rng.integers(60, 96))
    )
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB")), m


#: ``--render`` choices: see :func:`render_case`.
RENDERS = ("clinic", "none", "hires")
HIRES_SHAPE = (960, 1280)  # rows, cols: 3.75x / 5x the 256-px image (4:3)


def render_hires(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A harder proxy: 1280 x 960 (5x the columns), fine detail a real sensor adds.

    The 256-px image is up-scaled (bicubic) and sharpened (unsharp mask, amount
    0.5-1.5 at sigma 2 px: the edges a high-resolution optic keeps), given
    sensor noise (Gaussian, sd 1-3 % of full scale per pixel and channel, plus
    the 2x2-correlated part a Bayer demosaic leaves), then the clinic camera of
    :func:`render_clinic` (blur 0.5-1.5 px, colour, gamma, JPEG 60-95).
    """
    import cv2

    size = (int(HIRES_SHAPE[1]), int(HIRES_SHAPE[0]))
    up = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    soft = cv2.GaussianBlur(up, (0, 0), 2.0)
    up = up + float(rng.uniform(0.5, 1.5)) * (up - soft)
    sd = float(rng.uniform(0.01, 0.03))
    noise = rng.normal(0, sd, up.shape).astype(np.float32)
    coarse = rng.normal(0, sd, (up.shape[0] // 2, up.shape[1] // 2, 3)).astype(np.float32)
    noise += cv2.resize(coarse, size, interpolation=cv2.INTER_NEAREST)
    up = (np.clip(up + noise, 0, 1) * 255 + 0.5).astype(np.uint8)
    m = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5
    return render_clinic(up, m, rng, shape=HIRES_SHAPE)


def jitter_recist(recist, shape: tuple[int, int], rng: np.random.Generator, sd: float = JITTER_SD):
    """The RECIST as a person draws it: endpoints moved by N(0, (sd L)^2), inside the image.

    Redrawn (up to 20 times) when the jittered axes no longer cross; the exact RECIST
    is returned if they never do.
    """
    from dataclasses import replace

    from napari_recist_seg.recist import RecistError

    hi = np.array([shape[0] - 1.0, shape[1] - 1.0])
    for _ in range(20):
        la = np.clip(recist.long_axis + rng.normal(0, sd * recist.long_length, (2, 2)), 0, hi)
        sa = np.clip(recist.short_axis + rng.normal(0, sd * recist.long_length, (2, 2)), 0, hi)
        out = replace(recist, long_axis=la, short_axis=sa)
        try:
            return out.validate(shape)
        except RecistError:
            continue
    return recist


def annotation_style(mask: np.ndarray, frac: float) -> np.ndarray:
    """The expert mask as a clinic that draws looser (``frac > 0``: dilated) or tighter
    (eroded) outlines would have it: moved by ``|frac|`` x its long axis (exact
    Euclidean distance, scipy)."""
    from scipy import ndimage

    from napari_recist_seg.recist import recist_from_mask

    if frac == 0 or not mask.any():
        return mask
    d = abs(frac) * recist_from_mask(mask).long_length
    if frac > 0:
        return ndimage.distance_transform_edt(~mask) <= d
    out = ndimage.distance_transform_edt(mask) > d
    return out if out.any() else mask


def load_cases(stems: list[str], render: str, seed: int, style: float = 0.0):
    """Yield ``(stem, image, expert mask, exact RECIST, jittered RECIST)``.

    ``style``: :func:`annotation_style` of the expert mask (RECIST derived from it).
    """
    from PIL import Image

    from napari_recist_seg.recist import recist_from_mask

    for i, stem in enumerate(stems):
        rng = np.random.default_rng([seed, i])
        image = np.asarray(Image.open(ISIC / "images" / f"{stem}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0
        if render == "clinic":
            image, gt = render_clinic(image, gt, rng)
        elif render == "hires":
            image, gt = render_hires(image, gt, rng)
        gt = annotation_style(gt, style)
        exact = recist_from_mask(gt)
        yield stem, image, gt, exact, jitter_recist(exact, gt.shape, rng)


def lesion_centre(gt: np.ndarray, exact) -> np.ndarray:
    """The click at the lesion centre: the expert mask's centroid, or the crossing of
    its exact RECIST when the centroid lies outside the mask."""
    rows, cols = np.nonzero(gt)
    centre = np.array([rows.mean(), cols.mean()])
    r, c = (int(round(v)) for v in centre)
    if gt[r, c]:
        return centre
    return np.asarray(exact.crossing, dtype=float)


def click_points(gt: np.ndarray, exact, rng: np.random.Generator, sd: float = CLICK_JITTER_SD):
    """``{"exact": centre click, "jittered": it moved by N(0, (sd L)^2), inside}``."""
    centre = lesion_centre(gt, exact)
    hi = np.array([gt.shape[0] - 1.0, gt.shape[1] - 1.0])
    moved = np.clip(centre + rng.normal(0, sd * exact.long_length, 2), 0, hi)
    return {"exact": centre, "jittered": moved}


def split_ids(predictor, which: str) -> list[str]:
    split = Path(str(predictor.path)) / "split.json"
    if not split.is_file():
        split = Path(__file__).resolve().parents[1] / "napari_recist_seg/models/default/split.json"
    return list(json.loads(split.read_text())[which])


def methods_for(predictor, names: list[str]) -> dict[str, Callable]:
    """``name -> f(image, recist) -> full mask`` (a RecistError = refused)."""
    from napari_recist_seg import refine, targets

    def model(image, r):
        [res] = predictor.segment(image, [r])
        return res.full_mask(image.shape[:2])

    def with_setting(attr, value):
        def run(image, r):
            saved = getattr(predictor, attr)
            setattr(predictor, attr, value)
            try:
                [res] = predictor.segment(image, [r])
            finally:
                setattr(predictor, attr, saved)
            return res.full_mask(image.shape[:2])
        return run

    raw, guided = with_setting("refine", "none"), with_setting("upsample", "guided")

    table: dict[str, Callable] = {
        "model": model,
        "model_guided": guided,
        "model_raw": raw,
        "grabcut": lambda image, r: targets.grabcut_mask(image, r),
        "ellipse": lambda image, r: targets.ellipse_mask(r, image.shape, mode="quadrant"),
    }
    for name in refine.METHODS:
        table[name] = _refined(predictor, name)
    table.update(_click_methods(predictor))
    return {n: table[n] for n in names}


def _click_methods(predictor) -> dict[str, Callable]:
    """Click methods: ``f(image, point) -> full mask``, marked with ``.click = True``."""

    def make(**kwargs) -> Callable:
        def run(image, point):
            res = predictor.segment_click(image, tuple(point), **kwargs)
            return res.full_mask(image.shape[:2])

        run.click = True  # type: ignore[attr-defined]
        return run

    return {
        "click": make(),
        "click_single": make(refine=False),
        "click_once": make(rounds=1),
        "click_rounds": make(chooser="rounds"),
        "click_ranked": make(chooser="ranked"),
    }


def _refined(predictor, name: str) -> Callable:
    def run(image, r):
        saved = predictor.refine
        predictor.refine = name
        try:
            [res] = predictor.segment(image, [r])
        finally:
            predictor.refine = saved
        return res.full_mask(image.shape[:2])

    return run


def evaluate(predictor, methods: dict[str, Callable], cases, seed: int = 0) -> dict:
    """Per method and RECIST kind: mean metrics, median area ratio, refusals."""
    from napari_recist_seg.metrics import evaluate_case
    from napari_recist_seg.recist import RecistError

    rows: dict[str, dict[str, list]] = {}
    refused: dict[str, int] = {}
    per_case: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for i, (_stem, image, gt, exact, jittered) in enumerate(cases):
        clicks = click_points(gt, exact, np.random.default_rng([seed, i, 5]))
        for kind, r in (("exact", exact), ("jittered", jittered)):
            for name, fn in methods.items():
                key = f"{kind}/{name}"
                acc = rows.setdefault(key, {"dice": [], "iou": [], "hd95": [], "avd": [], "area": []})
                prompt = clicks[kind] if getattr(fn, "click", False) else r
                t0 = time.perf_counter()
                try:
                    pred = fn(image, prompt)
                except RecistError:
                    refused[key] = refused.get(key, 0) + 1
                    pred = np.zeros_like(gt)
                times.setdefault(key, []).append(time.perf_counter() - t0)
                m = evaluate_case(pred, gt)
                for k in ("dice", "iou", "hd95", "avd"):
                    acc[k].append(m[k])
                acc["area"].append(float(pred.sum()) / max(1.0, float(gt.sum())))
                per_case.setdefault(key, []).append(m["dice"])
    out = {}
    for key, acc in rows.items():
        out[key] = {k: round(float(np.mean(v)), 4) for k, v in acc.items() if k != "area"}
        out[key]["dice_sd"] = round(float(np.std(acc["dice"])), 4)
        out[key]["area_ratio_median"] = round(float(np.median(acc["area"])), 3)
        out[key]["larger_than_expert"] = round(float(np.mean(np.asarray(acc["area"]) > 1)), 3)
        out[key]["refused"] = refused.get(key, 0)
        out[key]["ms_median"] = round(1000 * float(np.median(times[key])), 1)
        out[key]["n"] = len(acc["dice"])
    return {"metrics": out, "per_case_dice": per_case}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first SKIP ids")
    parser.add_argument("--ids", choices=("test", "val"), default="test")
    parser.add_argument("--render", choices=RENDERS, default="clinic")
    parser.add_argument("--methods", default="model,model_raw,grabcut,ellipse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upsample", default=None, help="set Predictor.upsample (none|guided)")
    parser.add_argument("--tta", choices=("none", "flip", "flip4"), default="none",
                        help="set Predictor.tta (napari_recist_seg.tta)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-case", action="store_true", help="also print per-case Dice")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    predictor, info = load_predictor(args.model, "cpu")
    if args.upsample is not None:
        predictor.upsample = args.upsample
    predictor.tta = args.tta
    stems = split_ids(predictor, args.ids)[args.skip : args.skip + args.n]
    methods = methods_for(predictor, [m for m in args.methods.split(",") if m])
    t0 = time.perf_counter()
    res = evaluate(predictor, methods, load_cases(stems, args.render, args.seed), args.seed)
    out = {
        "benchmark": "proxy_shift",
        "ids": f"{args.ids} split, {len(stems)} from {args.skip}",
        "render": args.render,
        "seed": args.seed,
        "model": info,
        "predictor_refine_default": predictor.refine,
        "predictor_upsample": predictor.upsample,
        "predictor_tta": predictor.tta,
        "metrics": res["metrics"],
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info(predictor.device),
    }
    if args.per_case:
        out["per_case_dice"] = {"ids": stems, **res["per_case_dice"]}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
