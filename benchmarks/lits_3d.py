"""One RECIST -> a 3D tumour on the LiTS case and on proxies of other scanners.

Tumours are the 26-connected components of label 2 spanning >= ``--min-slices`` axial
slices whose largest axial cross-section (the RECIST slice) has >= ``--min-area`` px
(28 px gives the issue's 35 tumours on the CT as shipped). Each gets one RECIST
(``recist_from_mask`` of its largest 2D component on that slice). The shipped default
model segments the RECIST slice; :func:`propagate_lesion`'s walk
(:func:`napari_recist_seg.propagate.trace`) grows it through the neighbouring slices,
each off-slice mask blended with the lesion's intensity region
(:class:`~napari_recist_seg.propagate.IntensityBlend`, the library's default; ``--level``
/ ``--weight`` to try others, ``--no-blend`` for the model's masks alone, ``--fold`` to
trace only even / odd tumour ids, as the blend's defaults were chosen on ``--fold 0``).
The model was trained on ISIC dermoscopy only (never on this case).

Proxies of scanners we do not have (``--proxies``), all made from case 117:

- ``ct``: the CT as shipped (unit spacing, treated as isotropic);
- ``ct_thick2`` / ``ct_thick3``: thick slices, the mean of 2 / 3 consecutive slices
  (partial volume), labels by majority, slice spacing 2 / 3 px;
- ``ct_noisy``: + Gaussian noise of 25 HU (a low-dose scan);
- ``mr_t1``, ``mr_t2``: MR-like, a non-monotonic remap of the HU (fat bright, air and
  bone dark; in ``mr_t2`` fluid is bright and the tumour brighter than the liver, the
  opposite polarity of CT), a smooth bias field and Rician noise; no HU meaning, the
  model gets the per-crop percentile normalisation (modality ``grey``);
- ``mr_t2_thick3``: ``mr_t2`` of the thick-slice volume (like 6.5 mm MR slices);
- ``mr_flair_thick3``: brain-like FLAIR on thick slices: fluid suppressed (dark), fat
  moderately bright, the liver mid-grey and the tumour brighter (about 1.4x), a
  head-coil-like bias that also falls off along z, milder Rician noise;
- ``mr_t1c``: breast-like fat-saturated contrast T1 on thin slices: fat and fluid
  dark, the tumour strongly enhancing (about 1.6x the liver), a one-sided
  surface-coil fall-off across the rows, Rician noise.
- ``ct_thick5`` / ``mr_flair_thick5``: the mean of 5 consecutive slices (spacing 5 px,
  25 slices, 10 tumours spanning >= 3 of them), as CT and as the FLAIR remap: nearer
  the issue's 6.5 mm brain MR than ``thick3``; ``ct_thick7`` / ``mr_flair_thick7`` (7
  slices, not in the default run): nearer still.

- ``ct_hyper``: CT with hyperdense tumours, a remap of the HU: 30..95 HU (the
  tumours) -> 170..235 HU, the liver (100..160 HU) and everything else kept (a
  lesion brighter than the liver in the soft-tissue window; modality ``ct``).

``--polarity`` sets the predictor's lesion-polarity mode (:mod:`napari_recist_seg.
polarity`: ``auto`` decides per tumour on its RECIST slice and keeps it for the walk,
``dark`` never inverts = the behaviour before it). ``--tta`` sets the predictor's
test-time augmentation (:mod:`napari_recist_seg.tta`) for every slice of the walk
(``--seed-tta`` for the RECIST slice alone).

Each direction's walk is traced once without stop rules (capped ``--cap`` slices past
the tumour's true end; the default runs to the volume's edge, so the replay scores a
walk that runs on as ``segment --3d`` would) and replayed under the rules (:func:`first_stop`, the same
code as ``propagate_lesion``), so a grid of rules costs no model call. Reported per
proxy: RECIST-slice Dice, 3D Dice of the slice-only output, of the old stop rules
(area 0.15, growth 1.2, overlap 0.3, 30 HU on CT only), of the library's default
:class:`StopRules`, of the best stop per tumour (oracle, an upper bound), and the
robust choice over the grid: the rules whose worst proxy is best (maximin; ties broken
by the next worst proxy, leximin), with a 2-fold split by tumour (choose on one half,
score the other) as an honest figure. ``--grid round1`` is the blend round's grid;
``--grid run_on`` adds the regrowth and seed-overlap rules (walks that run on into a
neighbouring structure) and reports the best point of each family of them.

Run from the repository root::

    nice -n 10 python3 benchmarks/lits_3d.py --threads 1 --cache /tmp/lits3d_traces.pkl \
        --grid run_on

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT.parent / "shared" / "data" / "lits_case117"
PROXIES = ("ct", "ct_thick2", "ct_thick3", "ct_noisy", "mr_t1", "mr_t2", "mr_t2_thick3",
           "mr_flair_thick3", "mr_t1c", "ct_hyper", "ct_thick5", "mr_flair_thick5")
#: Not in the default run: 7-slice means (nearer 6.5 mm slices over ~1 mm pixels).
EXTRA_PROXIES = ("ct_thick7", "mr_flair_thick7")

from lits_3d_rules import GRIDS, LegacyRules, evaluate, grid_rules  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _thick(vol: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = vol.shape[0] // k
    v = vol[: n * k].astype(np.float32).reshape(n, k, *vol.shape[1:]).mean(axis=1)
    lab = labels[: n * k].reshape(n, k, *labels.shape[1:])
    tum = (lab == 2).mean(axis=1) >= 0.5
    liver = (lab >= 1).mean(axis=1) >= 0.5
    out = np.where(tum, 2, np.where(liver, 1, 0)).astype(np.uint8)
    return v, out


_HU = [-1000, -300, -100, 0, 40, 80, 130, 300, 1000]
_MR = {  # signal at the HU anchors above, noise sigma
    "mr_t1": ([5, 20, 800, 200, 330, 450, 520, 400, 60], 30.0),
    "mr_t2": ([5, 30, 500, 900, 600, 420, 330, 200, 40], 40.0),
    "mr_flair": ([5, 15, 300, 60, 450, 560, 340, 200, 30], 25.0),
    "mr_t1c": ([5, 10, 40, 90, 520, 760, 360, 280, 60], 30.0),
}


def _mr(vol: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    anchors, sigma = _MR[kind]
    s = np.interp(vol.astype(np.float32), _HU, anchors).astype(np.float32)
    z, y, x = (np.linspace(-0.5, 0.5, n, dtype=np.float32) for n in vol.shape)
    if kind == "mr_t1":  # a linear bias field across the body and along z
        bias = 1.0 + 0.3 * x[None, None, :] + 0.2 * z[:, None, None]
    elif kind == "mr_flair":  # a head coil: falls off away from the centre, z included
        bias = 1.15 - 0.5 * (y[None, :, None] ** 2 + x[None, None, :] ** 2 + z[:, None, None] ** 2)
    elif kind == "mr_t1c":  # a one-sided surface coil (breast): bright rows near it
        bias = 1.0 - 0.5 * y[None, :, None] + 0.0 * z[:, None, None] + 0.0 * x[None, None, :]
    else:  # a smooth bump (a surface coil)
        bias = 1.2 - 0.6 * (y[None, :, None] ** 2 + x[None, None, :] ** 2) + 0.0 * z[:, None, None]
    s = s * bias
    rng = np.random.default_rng(seed)
    n1 = rng.normal(0, sigma, s.shape).astype(np.float32)
    n2 = rng.normal(0, sigma, s.shape).astype(np.float32)
    return np.sqrt((s + n1) ** 2 + n2 ** 2)  # Rician magnitude


def make_proxy(name: str, ct: np.ndarray, labels: np.ndarray):
    """``(volume, labels, spacing, modality)`` of one proxy."""
    if name in ("ct_thick2", "ct_thick3", "ct_thick5", "ct_thick7"):
        k = int(name[-1])
        v, lab = _thick(ct, labels, k)
        return v, lab, (float(k), 1.0, 1.0), "ct"
    if name == "ct_noisy":
        rng = np.random.default_rng(0)
        return ct + rng.normal(0, 25.0, ct.shape).astype(np.float32), labels, (1.0, 1.0, 1.0), "ct"
    if name == "ct_hyper":
        hyper = np.interp(ct.astype(np.float32), [-1000, 0, 25, 30, 95, 100, 3000],
                          [-1000, 0, 25, 170, 235, 100, 3000]).astype(np.float32)
        return hyper, labels, (1.0, 1.0, 1.0), "ct"
    if name in _MR:
        return _mr(ct, name), labels, (1.0, 1.0, 1.0), "grey"
    if name in ("mr_t2_thick3", "mr_flair_thick3", "mr_flair_thick5", "mr_flair_thick7"):
        k = int(name[-1])
        v, lab = _thick(ct, labels, k)
        return _mr(v, name.split("_thick")[0]), lab, (float(k), 1.0, 1.0), "grey"
    return ct.astype(np.float32), labels, (1.0, 1.0, 1.0), "ct"


def tumours(labels: np.ndarray, min_slices: int, min_area: int) -> list[dict]:
    from napari_recist_seg.recist import recist_from_mask

    lab3, n = ndi.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    out = []
    for t in range(1, n + 1):
        comp = lab3 == t
        areas = comp.sum(axis=(1, 2))
        zs = np.nonzero(areas)[0]
        if zs[-1] - zs[0] + 1 < min_slices:
            continue
        z = int(np.argmax(areas))
        if areas[z] < min_area:
            continue
        lab2, _ = ndi.label(comp[z])
        big = lab2 == (np.argmax(np.bincount(lab2.ravel())[1:]) + 1)
        out.append({"id": t, "z": z, "mask3d": comp, "zs": (int(zs[0]), int(zs[-1])),
                    "recist": recist_from_mask(big, slice_index=z)})
    return out


def trace_proxy(name: str, ct: np.ndarray, labels: np.ndarray, pred, args) -> dict:
    """Seed, context and the two capped walks of every tumour of one proxy."""
    from napari_recist_seg.polarity import lesion_contrast, lesion_polarity
    from napari_recist_seg.propagate import (
        intensity_prompter,
        intensity_refiner,
        predictor_segmenter,
        seed_context,
        trace,
    )
    from napari_recist_seg.propagate_intensity import _axis_error

    vol, lab, spacing, modality = make_proxy(name, ct, labels)
    blend = _blend(args)
    rows = []
    for tum in tumours(lab, args.min_slices, args.min_area):
        if args.fold is not None and tum["id"] % 2 != args.fold:
            continue
        z, (z_lo, z_hi) = tum["z"], tum["zs"]
        # decided once on the RECIST slice, kept for the walk (as segment --3d does)
        pol = lesion_polarity(vol[z], tum["recist"], pred.preprocess, modality=modality,
                              window=pred.window, mode=args.polarity) or "dark"
        seg = predictor_segmenter(pred, vol, modality=modality, polarity=pol)
        seed = predictor_segmenter(pred, vol, modality=modality, polarity=pol,
                                   tta=args.seed_tta)(z, tum["recist"])
        ctx = seed_context(seed, spacing=spacing, image=vol, z0=z)
        refine = prompter = None
        if blend is not None:  # as propagate_lesion does with the drawn RECIST
            seed = blend.seed(vol[z], seed, tum["recist"], ctx.band, ctx.shift_px)
            ctx = replace(ctx, area0=int(seed.sum()))
            refine = intensity_refiner(vol, ctx, blend)
            prompter = intensity_prompter(vol, ctx, blend)
        thick = 1.0 - 1.0 / max(ctx.shift_px, 1.0)
        scale = blend.prompt_scale(ctx.shift_px) if blend is not None else 1.0
        walk_seg = seg
        if args.two_scale and thick > 0 and blend is not None and ctx.band is not None:
            walk_seg = _two_scales(seg, _scaled_prompts(seg, 1.0 - args.two_scale * thick), vol, ctx, blend)
        walks = []
        for step, end in ((-1, z_lo), (+1, z_hi)):
            cap = abs(end - z) + args.cap
            walks.append(list(trace(vol.shape[0], z, step, seed, walk_seg, image=vol, max_steps=cap,
                                    refine=refine, prompt_mask=prompter, prompt_scale=scale)))
        gt = tum["mask3d"]
        rows.append({
            "id": tum["id"], "z": z, "ctx": ctx, "gt_voxels": int(gt.sum()), "polarity": pol,
            "contrast": lesion_contrast(vol[z], tum["recist"], pred.preprocess, modality=modality,
                                        window=pred.window),
            "seed_axis_error": _axis_error(seed, tum["recist"]),
            "seed_area": int(seed.sum()), "seed_inter": int((seed & gt[z]).sum()),
            "seed_mean": float(vol[z][seed].mean()) if seed.any() else None,
            "slice_gt": int(gt[z].sum()), "span_gt": z_hi - z_lo + 1,
            "capped": [len(w) == abs(e - z) + args.cap for w, e in zip(walks, (z_lo, z_hi))],
            # per step: the step (mask dropped to save memory) and its overlap with the truth
            "walks": [[(_strip(s), int((s.mask & gt[s.z]).sum())) for s in w] for w in walks],
        })
    log(f"{name}: {len(rows)} tumours traced")
    return {"modality": modality, "spacing": spacing, "rows": rows}


def _scaled_prompts(seg, scale: float):
    """``seg`` with each prompt's axes scaled by ``scale`` about their crossing (for
    ``--two-scale``'s second prompt; ``seg`` itself at 1)."""
    from napari_recist_seg.recist import Recist, RecistError

    if scale == 1.0:
        return seg

    def segment(z, r):
        try:
            c = r.crossing
        except RecistError:  # axes that do not cross: scale about the box centre
            c = r.centre
        small = Recist(c + scale * (r.long_axis - c), c + scale * (r.short_axis - c),
                       slice_index=r.slice_index, spacing=r.spacing)
        try:
            return seg(z, small)
        except RecistError:  # an axis scaled below a pixel: the prompt as it was
            return seg(z, r)

    return segment


def _two_scales(seg, seg_small, vol, ctx, blend):
    """Each off-slice segmented from its prompt and from a smaller one; the mask that
    agrees better (Dice) with the slice's intensity region near the first is kept."""
    def dice(a, b):
        return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())

    def segment(z, r):
        m1, m2 = seg(z, r), seg_small(z, r)
        if not m1.any():
            return m2
        region = blend.region(vol[z], m1, ctx.band, ctx.shift_px)
        return m2 if dice(m2, region) > dice(m1, region) else m1

    return segment


def _blend(args):
    """The :class:`IntensityBlend` of the run (``None`` with ``--no-blend``)."""
    from napari_recist_seg.propagate import IntensityBlend

    if args.no_blend:
        return None
    return IntensityBlend(level=args.level, weight=args.weight, reach=args.reach,
                          prompt_weight=args.prompt_weight, prompt_shrink=args.prompt_shrink,
                          seed_weight=None if args.no_seed_blend else IntensityBlend().seed_weight)


def _trace_key(args) -> tuple:
    """What the traces depend on (a cache of other settings is not re-used)."""
    # "steps v2": steps carry seed_overlap (older caches would replay that rule as off)
    return ("steps v3", args.min_slices, args.min_area, args.cap, args.fold, repr(_blend(args)),
            args.polarity, args.tta, args.seed_tta, args.two_scale)


def _strip(step):
    return replace(step, mask=np.zeros((0, 0), bool))


def load_traces(args) -> dict:
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        with gzip.open(cache, "rb") as fh:
            traces = pickle.load(fh)
        if traces.get("key") == _trace_key(args) and all(p in traces for p in args.proxies):
            log(f"traces from {cache}")
            return traces
    import torch

    torch.set_num_threads(args.threads)
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.predict import Predictor

    ct = read_image(DATA / "ct.nii.gz").array
    labels = read_image(DATA / "labels.nii.gz").array
    pred = Predictor.load(None, device="cpu", tta=args.tta)
    traces: dict = {"key": _trace_key(args)}
    for name in args.proxies:
        t0 = time.perf_counter()
        traces[name] = trace_proxy(name, ct, labels, pred, args)
        traces[name]["seconds"] = round(time.perf_counter() - t0, 1)
    if cache is not None:
        with gzip.open(cache, "wb") as fh:
            pickle.dump(traces, fh)
    return traces


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-slices", type=int, default=3)
    ap.add_argument("--min-area", type=int, default=28)
    ap.add_argument("--proxies", nargs="+", default=list(PROXIES), choices=PROXIES + EXTRA_PROXIES)
    ap.add_argument("--cap", type=int, default=128,
                    help="slices traced past the true end (128: to the volume edge, so a walk that "
                         "runs on is scored as the CLI would run it; 8 before the blend)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="pickle of the traces (re-used if present)")
    ap.add_argument("--no-grid", action="store_true", help="skip the grid of rules")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="round1",
                    help="round1: the blend round's grid; run_on: the regrowth / seed-overlap rules")
    ap.add_argument("--no-blend", action="store_true",
                    help="off-slice masks as the model gives them (no IntensityBlend)")
    ap.add_argument("--no-seed-blend", action="store_true",
                    help="the RECIST slice keeps the model's mask (IntensityBlend.seed_weight None)")
    ap.add_argument("--level", type=float, default=None, help="IntensityBlend.level (default: the library's)")
    ap.add_argument("--weight", type=float, default=None, help="IntensityBlend.weight (default: the library's)")
    ap.add_argument("--prompt-weight", type=float, default=None,
                    help="IntensityBlend.prompt_weight (off-slice prompts from the region, times 1 - 1 / "
                         "(slice spacing / pixel); default: the library's; -1: off)")
    ap.add_argument("--reach", type=float, default=None, help="IntensityBlend.reach (default: the library's)")
    ap.add_argument("--polarity", choices=("auto", "dark", "bright"), default="auto",
                    help="lesion polarity mode (napari_recist_seg.polarity; dark = never invert)")
    ap.add_argument("--tta", choices=("none", "flip", "flip4"), default="none",
                    help="the predictor's test-time augmentation (napari_recist_seg.tta) on every "
                         "slice of the walk, the RECIST slice included")
    ap.add_argument("--seed-tta", choices=("none", "flip", "flip4"), default=None,
                    help="the RECIST slice's TTA alone (default: --tta's)")
    ap.add_argument("--prompt-shrink", type=float, default=None,
                    help="IntensityBlend.prompt_shrink: off-slice prompts' axes scaled by 1 - A (1 - 1 / "
                         "(slice spacing / pixel)) about their crossing (default: the library's; 0: off)")
    ap.add_argument("--two-scale", type=float, default=0.0,
                    help="thick slices only: each off-slice also prompted at 1 - B (1 - 1 / shift) "
                         "of its prompt, the mask nearer the intensity region kept (2x calls; 0: off)")
    ap.add_argument("--fold", type=int, choices=(0, 1), default=None,
                    help="trace only the tumours with an even (0) / odd (1) id")
    ap.add_argument("--write-recist", default=None,
                    help="write the CT's tumour RECIST as a CSV (lesion id = tumour id) and exit")
    ap.add_argument("--score-labels", default=None,
                    help="score a `segment --3d` labels file of the CT (or of the one proxy named "
                         "by --proxies) against the tumours and exit")
    ap.add_argument("--write-proxy", default=None,
                    help="write each --proxies volume as DIR/<name>.nii.gz (the CT's affine, z "
                         "scaled for thick slices) with its RECIST as DIR/<name>_recist.csv, and exit")
    args = ap.parse_args()
    args.seed_tta = args.tta if args.seed_tta is None else args.seed_tta
    from napari_recist_seg.propagate import IntensityBlend

    args.level = IntensityBlend().level if args.level is None else args.level
    args.weight = IntensityBlend().weight if args.weight is None else args.weight
    args.reach = IntensityBlend().reach if args.reach is None else args.reach
    if args.prompt_shrink is None:
        args.prompt_shrink = IntensityBlend().prompt_shrink
    if args.prompt_weight is None:
        args.prompt_weight = IntensityBlend().prompt_weight
    elif args.prompt_weight < 0:  # --prompt-weight -1: off (the walk before issue-11thick)
        args.prompt_weight = None
    if args.write_recist or args.score_labels or args.write_proxy:
        return cli_check(args)
    from napari_recist_seg.propagate import StopRules

    traces = load_traces(args)
    default = StopRules()
    out: dict = {"case": "lits_case117", "model": "shipped default (trained on ISIC dermoscopy only)",
                 "settings": {k: v for k, v in vars(args).items()
                              if k not in ("no_grid", "write_recist", "score_labels", "write_proxy")},
                 "default_rules": asdict(default),
                 "blend": None if _blend(args) is None else asdict(_blend(args)), "proxies": {}}
    for name in args.proxies:
        tr = traces[name]
        ev = evaluate(tr["rows"], default, per_tumour=True)
        out["proxies"][name] = {
            "modality": tr["modality"], "spacing": tr["spacing"], "n_tumours": len(tr["rows"]),
            "recist_slice_dice": ev["slice_dice"], "dice3d_slice_only": ev["slice_only"],
            "dice3d_old_rules": evaluate(tr["rows"], LegacyRules(tr["modality"]))["dice3d"],
            "dice3d_default": ev["dice3d"], "dice3d_oracle_stop": ev["oracle"],
            "stops_default": ev["stops"], "capped_walks": ev["capped"],
            "trace_seconds": tr.get("seconds"), "per_tumour": ev["per_tumour"],
            "n_bright": sum(r.get("polarity") == "bright" for r in tr["rows"]),
            "contrast": {r["id"]: round(r["contrast"], 4) for r in tr["rows"]},
            "seed_axis_error": {r["id"]: round(r["seed_axis_error"], 4) for r in tr["rows"]},
        }
    if not args.no_grid:
        out["grid"] = grid_search(traces, args.proxies, args.grid)
    print(json.dumps(out, indent=1))


def write_proxies(args) -> None:
    """Each ``--proxies`` volume as NIfTI with its RECIST CSV (for ``segment --3d``)."""
    import nibabel as nib

    from napari_recist_seg.data import RecistRecord, write_recist_csv
    from napari_recist_seg.data.images import read_image

    ct_img = read_image(DATA / "ct.nii.gz")
    labels = read_image(DATA / "labels.nii.gz").array
    out = Path(args.write_proxy)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.proxies:
        vol, lab, spacing, _ = make_proxy(name, ct_img.array, labels)
        affine = np.array(ct_img.metadata["affine"], float)
        affine[:3, 2] *= spacing[0]  # thick slices: z steps of k slices
        path = out / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0), np.float32), affine),
                 str(path))
        tums = tumours(lab, args.min_slices, args.min_area)
        write_recist_csv(out / f"{name}_recist.csv",
                         [RecistRecord(path, t["id"], t["recist"]) for t in tums])
        log(f"{name}: {path} and {len(tums)} RECIST")


def cli_check(args) -> None:
    """The CLI on the CT: write its RECIST CSV, or score its ``<stem>_labels.nii.gz``
    (of the CT, or of the one proxy given with ``--proxies``); or write proxies."""
    from napari_recist_seg.data import RecistRecord, write_recist_csv
    from napari_recist_seg.data.images import read_image

    if args.write_proxy:
        return write_proxies(args)
    labels = read_image(DATA / "labels.nii.gz").array
    if args.score_labels and len(args.proxies) == 1 and args.proxies[0] != "ct":
        labels = make_proxy(args.proxies[0], read_image(DATA / "ct.nii.gz").array, labels)[1]
    tums = tumours(labels, args.min_slices, args.min_area)
    if args.write_recist:
        write_recist_csv(args.write_recist,
                         [RecistRecord(DATA / "ct.nii.gz", t["id"], t["recist"]) for t in tums])
        log(f"{len(tums)} RECIST written to {args.write_recist}")
        return
    lab = read_image(args.score_labels).array
    d, ds = [], []
    for t in tums:
        pred, gt, z = lab == t["id"], t["mask3d"], t["z"]
        d.append(2.0 * int((pred & gt).sum()) / (int(pred.sum()) + int(gt.sum())))
        ds.append(2.0 * int((pred[z] & gt[z]).sum()) / (int(pred[z].sum()) + int(gt[z].sum())))
    print(json.dumps({"labels": str(args.score_labels), "n_tumours": len(tums),
                      "recist_slice_dice": float(np.mean(ds)), "dice3d": float(np.mean(d)),
                      "per_tumour": [round(x, 4) for x in d]}, indent=1))


def _family(r) -> str:
    """Which of round 2's run-on rules a grid point uses."""
    return {(False, False): "neither", (True, False): "regrowth", (False, True): "seed_overlap",
            (True, True): "both"}[(r.max_regrowth is not None, r.min_seed_overlap is not None)]


def _leximin(scores: np.ndarray) -> int:
    """The row whose worst column is best; ties (at 4 decimals) broken by the
    second worst, then the third, ... (the maximin, made unique)."""
    ranked = np.sort(np.round(np.nan_to_num(scores, nan=-1.0), 4), axis=1)
    order = np.lexsort(ranked.T[::-1])  # last key = worst column = primary
    return int(order[-1])


def grid_search(traces: dict, proxies: list[str], grid_name: str = "round1") -> dict:
    """Maximin over the proxies on all tumours, and a 2-fold split by tumour.

    Also the maximin within each family of run-on rules (none / regrowth / seed
    overlap / both), so the margin a new rule buys is visible.
    """
    grid = GRIDS[grid_name]
    rules = grid_rules(grid)
    log(f"grid {grid_name}: {len(rules)} rules x {len(proxies)} proxies")
    scores = np.zeros((len(rules), len(proxies), 2))  # fold 0 / 1 mean Dice
    full = np.zeros((len(rules), len(proxies)))
    for j, name in enumerate(proxies):
        rows = traces[name]["rows"]
        folds = [[r for r in rows if r["id"] % 2 == f] for f in (0, 1)]
        sizes = np.array([len(f) for f in folds], float)
        for i, r in enumerate(rules):
            per = [evaluate(f, r)["dice3d"] if f else np.nan for f in folds]
            scores[i, j] = per
            full[i, j] = np.nansum(np.array(per) * sizes) / sizes.sum()
    worst = full.min(axis=1)
    best = _leximin(full)
    cv = {}
    for f in (0, 1):  # choose on fold f, score on the other
        pick = _leximin(scores[:, :, f])
        cv[f"chosen_on_fold{f}"] = {"rules": asdict(rules[pick]),
                                    "chosen_fold": dict(zip(proxies, scores[pick, :, f].round(4).tolist())),
                                    "held_out": dict(zip(proxies, scores[pick, :, 1 - f].round(4).tolist()))}
    families = {}
    for fam in ("neither", "regrowth", "seed_overlap", "both"):
        idx = [i for i, r in enumerate(rules) if _family(r) == fam]
        if idx:
            k = idx[_leximin(full[idx])]
            families[fam] = {"rules": asdict(rules[k]), "worst": round(float(worst[k]), 4),
                             "scores": dict(zip(proxies, full[k].round(4).tolist()))}
    return {
        "grid_name": grid_name,
        "grid": {k: [None if v is None else float(v) for v in vals] for k, vals in grid.items()},
        "maximin_rules": asdict(rules[best]),
        "maximin": dict(zip(proxies, full[best].round(4).tolist())),
        "by_family": families,
        "two_fold": cv,
    }


if __name__ == "__main__":
    main()
