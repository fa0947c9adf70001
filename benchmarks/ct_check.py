"""A1 vs A1+L vs the RECIST ellipse on CT tumours (LiTS case 117): a small sanity check.

The paper's CT result is on DeepLesion, which we do not have; this is the one real CT
case we do have (``../shared/data/lits_case117``: 128^3 int16 HU, labels 2 = tumour,
spacing unknown so distances are in px).

- Every axial slice with tumour: one RECIST per 8-connected tumour component of at
  least ``--min-area`` px (``recist_from_mask`` on that component; the tumour label is
  only used to derive the RECIST and to score, never as a target).
- Split by slab, so that near-duplicate neighbouring slices cannot leak: axial blocks
  of ``--block`` slices; odd blocks are *test*, the last even block is validation
  (early stopping on the weak target), the other even blocks train. The ``--gap``
  slices at each block edge are dropped, so train and test slices are at least
  ``2 * gap + 1`` slices apart.
- A1 and A1+L are trained on the weak targets (ellipse) of the train RECIST with the
  CT soft-tissue window (the preprocessing default for HU images), identical settings,
  paired seeds; each test lesion is segmented with ``Predictor`` from its RECIST and
  scored against its own tumour component on that slice (``metrics.evaluate_case``).
- Paired difference A1+L - A1 with a 95% CI from a cluster bootstrap over the 3D
  tumours (the lesion-slices of one tumour are resampled together: they are not
  independent), on the seed-averaged per-lesion-slice difference.

Run from the repository root::

    python benchmarks/ct_check.py --out /tmp/ct_check --seeds 0 1 2 --threads 2

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import splits  # noqa: E402

METRICS = ("dice", "iou", "hd95", "avd", "vs")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def lesion_slices(labels: np.ndarray, min_area: int) -> list[dict]:
    """One entry per (axial slice, 2D tumour component): RECIST, mask, 3D tumour id."""
    from scipy import ndimage

    from napari_recist_seg.recist import RecistError, recist_from_mask

    tumour = labels == 2
    lab3, _ = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
    out = []
    for z in np.where(tumour.any(axis=(1, 2)))[0]:
        lab2, n = ndimage.label(tumour[z], structure=np.ones((3, 3), bool))
        for i in range(1, n + 1):
            comp = lab2 == i
            if comp.sum() < min_area:
                continue
            try:
                r = recist_from_mask(comp, slice_index=int(z))
            except RecistError:
                continue
            tid = int(np.bincount(lab3[z][comp]).argmax())
            out.append({"z": int(z), "mask": comp, "recist": r, "tumour": tid})
    return out


def assign(z: int, block: int, gap: int, n_blocks: int) -> str | None:
    b, pos = divmod(z, block)
    if pos < gap or pos >= block - gap:
        return None
    if b % 2 == 1:
        return "test"
    last_even = (n_blocks - 1) if (n_blocks - 1) % 2 == 0 else n_blocks - 2
    return "val" if b == last_even else "train"


def cluster_bootstrap(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int = 0) -> list[float]:
    """95% CI of the mean, resampling whole groups (3D tumours)."""
    uniq = np.unique(groups)
    members = [np.where(groups == g)[0] for g in uniq]
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[k] for k in pick])
        means[b] = values[idx].mean()
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=splits.LITS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--aux-weight", type=float, default=0.3)
    p.add_argument("--clusters", type=int, default=None)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--gap", type=int, default=1)
    p.add_argument("--min-area", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=5000)
    args = p.parse_args(argv)

    import torch

    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.metrics import evaluate_case
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.targets import ellipse_mask
    from napari_recist_seg.training import TrainConfig, TrainSample, train

    torch.set_num_threads(args.threads)
    command = "python benchmarks/ct_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    ct = read_image(args.data / "ct.nii.gz").array
    labels = read_image(args.data / "labels.nii.gz").array
    items = lesion_slices(labels, args.min_area)
    n_blocks = -(-ct.shape[0] // args.block)
    for it in items:
        it["split"] = assign(it["z"], args.block, args.gap, n_blocks)
    parts = {s: [it for it in items if it["split"] == s] for s in ("train", "val", "test")}
    log(f"{len(items)} lesion-slices: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
    samples = [
        TrainSample(image=ct, recist=it["recist"], gt_mask=it["mask"] if it["split"] == "val" else None,
                    group=f"z{it['z']}", split=it["split"], name=f"z{it['z']}_t{it['tumour']}")
        for it in parts["train"] + parts["val"]
    ]
    test = parts["test"]
    groups = np.array([it["tumour"] for it in test])

    rows: dict[str, list[list[dict]]] = {"a1": [], "a1l": []}
    ell = [evaluate_case(ellipse_mask(it["recist"], ct.shape), it["mask"]) for it in test]
    runs = {}
    for seed in args.seeds:
        for mode in ("a1", "a1l"):
            cfg = TrainConfig(mode=mode, epochs=args.epochs, patience=args.patience, seed=seed,
                              device="cpu", input_size=args.input_size, encoder=args.encoder,
                              aux_weight=args.aux_weight, n_clusters=args.clusters)
            d = args.out / f"{mode}_s{seed}"
            res = train(cfg, samples, d, extra={"command": command, "dataset": "lits_case117"})
            pred = Predictor.load(d, device="cpu")
            seg = pred.segment(ct, [it["recist"] for it in test])
            rows[mode].append([evaluate_case(r.full_mask(ct.shape[1:]), it["mask"]) for r, it in zip(seg, test)])
            runs[d.name] = {"best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                            "train_wall_s": res.wall_time_s, "n_clusters": res.n_clusters,
                            "test_dice": float(np.mean([r["dice"] for r in rows[mode][-1]]))}
            log(f"{d.name}: test Dice {runs[d.name]['test_dice']:.4f}")

    def summary(per_seed: list[list[dict]]) -> dict[str, Any]:
        out = {}
        for k in METRICS:
            a = np.array([[r[k] for r in rs] for rs in per_seed])
            sm = a.mean(axis=1)
            out[k] = {"mean": float(sm.mean()), "sd_seeds": float(sm.std(ddof=1)) if len(sm) > 1 else 0.0,
                      "sd_lesions": float(np.mean(a.std(axis=1, ddof=1)))}
        return out

    paired = {}
    for name, (a, b) in {"a1l_minus_a1": (rows["a1"], rows["a1l"]),
                         "a1_minus_ellipse": ([ell], rows["a1"]),
                         "a1l_minus_ellipse": ([ell], rows["a1l"])}.items():
        paired[name] = {}
        for k in ("dice", "avd"):
            va = np.array([[r[k] for r in rs] for rs in a]).mean(axis=0)
            vb = np.array([[r[k] for r in rs] for rs in b]).mean(axis=0)
            d = vb - va
            paired[name][k] = {"mean": float(d.mean()),
                               "ci95_tumour_bootstrap": cluster_bootstrap(d, groups, args.bootstrap),
                               "fraction_b_greater": float(np.mean(d > 0))}
    sizes = np.array([it["recist"].long_length for it in test])
    result = {
        "benchmark": "ct_check",
        "command": command,
        "protocol": {
            "data": "lits_case117 (128^3, HU, spacing unknown -> px); labels 2 = tumour",
            "lesion_slices": {k: len(v) for k, v in parts.items()},
            "test_tumours_3d": int(len(np.unique(groups))),
            "test_long_axis_px": {"median": float(np.median(sizes)), "min": float(sizes.min()),
                                  "max": float(sizes.max())},
            "split": f"axial blocks of {args.block}: odd blocks test, last even block validation, "
                     f"other even blocks train; {args.gap} edge slices of each block dropped",
            "seeds": args.seeds, "epochs": args.epochs, "patience": args.patience,
            "input_size": args.input_size, "encoder": args.encoder, "aux_weight": args.aux_weight,
            "target": "ellipse", "window": "CT soft tissue (level 40, width 400) - preprocessing default",
        },
        "machine": splits.machine(),
        "models": {"a1": summary(rows["a1"]), "a1l": summary(rows["a1l"]), "ellipse_quadrant": summary([ell])},
        "paired": paired,
        "paired_note": "seed-averaged per-lesion-slice difference b - a; CI: bootstrap over 3D tumours",
        "runs": runs,
        "total_wall_s": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ct_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
