"""Does the auxiliary RECIST-cluster task help?  A1 vs A1+L on held-out ISIC 2017 images.

Chu et al. (MIDL 2021) report that adding the RECIST shape-cluster classification head
(A1+L) to the weakly supervised segmenter (A1) raises Dice (HAM10000 90.01 -> 90.54,
DeepLesion 75.36 -> 77.43) and lowers AVD. This script tests that claim on our data.

Protocol
--------
- Data: ``../shared/data/isic2017_train256``; the RECIST of every image is derived from
  its expert mask (``recist_from_mask``). Training targets are the weak targets built
  from that RECIST (the ellipse by default); the expert masks are never a target.
- Split: the fixed split of ``train_default_model.py`` (``splits.isic_split``): the
  200 *test* images are the same as the default model's, never trained on, never used
  to select a model. Early stopping / model selection uses the validation images
  (the ``val`` part, Dice against the weak target), which are disjoint from the test.
- For every seed, A1 and A1+L are trained with identical settings (same training
  images, same seed: same initialisation of the shared layers, same batch order and
  augmentation), so the comparison is paired by seed as well as by test image.
- Each model segments every test image from the RECIST derived from its test mask,
  through :class:`~napari_recist_seg.predict.Predictor` (the shipped inference path),
  and is scored against the expert mask with ``metrics.evaluate_case`` (px units).
- Baselines on the same test images, no training: the RECIST ellipse (``quadrant``
  and ``centred``) and the GrabCut refinement (``targets.grabcut_mask``).

Statistics
----------
Per model: mean over seeds of the per-seed mean over test images, with ``sd_seeds``
(sd of those per-seed means: training noise) and ``sd_images`` (per-image sd, averaged
over seeds). The paired difference A1+L - A1 is taken per test image and seed; its
95% CI comes from (a) a bootstrap over test images of the seed-averaged per-image
difference (``ci95_images``: is the difference consistent across images, for these
trained models?) and (b) a two-level bootstrap resampling seeds, then images
(``ci95_seeds_images``: also counts the training-run noise; the honest one for "does
A1+L train better models").

Run from the repository root (the defaults are the full protocol)::

    python benchmarks/accuracy.py --out /tmp/acc --seeds 0 1 2
    # reduced protocol for a 2-core CPU:
    python benchmarks/accuracy.py --out /tmp/acc --seeds 0 1 2 --train-limit 400 \\
        --epochs 6 --input-size 96 --threads 2

``--out`` keeps each run (``a1_s0/``, ``a1l_s0/``, ...): checkpoint, ``train_log.json``
(read by ``training_time.py``) and ``test_eval.json`` (per-image metrics; read by
``figures.py``). Existing finished runs with the same settings are reused
(``--retrain`` forces training). Prints one JSON object.
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

METRICS = ("dice", "iou", "hd95", "avd", "hd", "vs", "centre_error", "perimeter_error")
PAIRED = ("dice", "iou", "hd95", "avd")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- statistics ----------------------------------------------------------------------
def bootstrap_ci(values: np.ndarray, n_boot: int = 10000, seed: int = 0) -> list[float]:
    """Percentile 95% CI of the mean of ``values`` (resampling its entries)."""
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def bootstrap_ci_2level(diff: np.ndarray, n_boot: int = 10000, seed: int = 0) -> list[float]:
    """95% CI of the mean of ``diff`` (seeds x images), resampling seeds, then images."""
    d = np.asarray(diff, float)
    n_s, n_i = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        s = rng.integers(0, n_s, n_s)
        i = rng.integers(0, n_i, n_i)
        means[b] = d[np.ix_(s, i)].mean()
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def paired(a: np.ndarray, b: np.ndarray, n_boot: int) -> dict[str, Any]:
    """Paired difference ``b - a`` of two (seeds, images) arrays of one metric."""
    d = np.asarray(b, float) - np.asarray(a, float)
    per_image = d.mean(axis=0)
    return {
        "mean": float(d.mean()),
        "ci95_images": bootstrap_ci(per_image, n_boot),
        "ci95_seeds_images": bootstrap_ci_2level(d, n_boot) if d.shape[0] > 1 else None,
        "per_seed_mean": [float(x) for x in d.mean(axis=1)],
        "fraction_images_b_greater": float(np.mean(per_image > 0)),
        "fraction_images_equal": float(np.mean(per_image == 0)),
    }


def summarise_runs(per_seed: list[list[dict]]) -> dict[str, dict[str, float]]:
    """Mean / sd_seeds / sd_images per metric from per-seed lists of per-image rows."""
    out = {}
    for k in METRICS:
        arr = np.array([[row[k] for row in rows] for rows in per_seed], float)
        seed_means = arr.mean(axis=1)
        out[k] = {
            "mean": float(seed_means.mean()),
            "sd_seeds": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else 0.0,
            "sd_images": float(np.mean(arr.std(axis=1, ddof=1))),
        }
    return out


# -- training / evaluation -------------------------------------------------------------
def build_samples(train_stems: list[str], val_stems: list[str]) -> list:
    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.training import TrainSample

    samples = []
    for which, stems in (("train", train_stems), ("val", val_stems)):
        for stem in stems:
            img_path, _, gt = splits.load_isic_case(stem)
            samples.append(TrainSample(
                image=img_path, recist=recist_from_mask(gt),
                gt_mask=gt if which == "val" else None,  # reporting only (val_gt_dice)
                group=stem, split=which, name=stem,
            ))
    return samples


def run_dir(out: Path, mode: str, seed: int) -> Path:
    return out / f"{mode}_s{seed}"


def train_one(cfg, samples, out_dir: Path, retrain: bool, command: str) -> dict:
    from dataclasses import asdict

    from napari_recist_seg.training import TrainConfig, train

    log_path = out_dir / "train_log.json"
    if not retrain and log_path.is_file():
        doc = json.loads(log_path.read_text())
        same = dict(doc.get("train_config", {})) == asdict(cfg)
        if same and doc.get("status") in ("finished", "early_stopped"):
            log(f"reusing {out_dir} ({doc['status']})")
            return {"reused": True, "best_epoch": doc["best_epoch"], "epochs_run": len(doc["epochs"]),
                    "train_wall_s": doc.get("wall_time_s"), "n_clusters": doc["n_clusters"],
                    "n_train": doc["n_train"], "n_val": doc["n_val"]}
    assert isinstance(cfg, TrainConfig)
    log(f"training {out_dir.name}")

    def on_epoch(e):
        log(f"{out_dir.name} epoch {e.epoch}: val_dice {e.val_dice:.4f} val_gt_dice {e.val_gt_dice:.4f} "
            f"({e.epoch_time_s:.0f} s)")

    res = train(cfg, samples, out_dir, on_epoch=on_epoch,
                extra={"command": command, "dataset": "isic2017_train256", "benchmark": "accuracy.py"})
    return {"reused": False, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
            "train_wall_s": res.wall_time_s, "n_clusters": res.n_clusters,
            "n_train": res.n_train, "n_val": res.n_val}


def evaluate_model(model_dir: Path, test: list[dict]) -> list[dict]:
    from napari_recist_seg.metrics import evaluate_case
    from napari_recist_seg.predict import Predictor

    pred = Predictor.load(model_dir, device="cpu")
    rows = []
    for case in test:
        res = pred.segment(case["image"], [case["recist"]])[0]
        mask = res.full_mask(case["gt"].shape)
        rows.append({"case": case["stem"], "cluster": res.cluster, **evaluate_case(mask, case["gt"])})
    return rows


def baselines(test: list[dict], grabcut: bool) -> dict[str, list[dict]]:
    from napari_recist_seg.metrics import evaluate_case
    from napari_recist_seg.targets import ellipse_mask, grabcut_mask

    out: dict[str, list[dict]] = {"ellipse_quadrant": [], "ellipse_centred": []}
    if grabcut:
        out["grabcut"] = []
    for c in test:
        gt, r = c["gt"], c["recist"]
        out["ellipse_quadrant"].append({"case": c["stem"], **evaluate_case(ellipse_mask(r, gt.shape), gt)})
        out["ellipse_centred"].append(
            {"case": c["stem"], **evaluate_case(ellipse_mask(r, gt.shape, mode="centred"), gt)})
        if grabcut:
            out["grabcut"].append({"case": c["stem"], **evaluate_case(grabcut_mask(c["image"], r), gt)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the runs (kept)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", choices=["a1", "a1l"], default=["a1", "a1l"])
    p.add_argument("--train-limit", type=int, default=None, help="first N training images of the split")
    p.add_argument("--val-limit", type=int, default=None, help="first N validation images")
    p.add_argument("--test-limit", type=int, default=None, help="first N test images (smoke tests only)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--aux-weight", type=float, default=0.3, help="lambda (A1+L)")
    p.add_argument("--clusters", type=int, default=None, help="K (default: silhouette)")
    p.add_argument("--target", choices=["ellipse", "grabcut"], default="ellipse")
    p.add_argument("--no-recist-channel", action="store_true")
    p.add_argument("--no-grabcut", action="store_true", help="skip the GrabCut baseline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=10000)
    p.add_argument("--retrain", action="store_true", help="train even if a finished run exists")
    args = p.parse_args(argv)

    import torch

    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.training import TrainConfig

    torch.set_num_threads(args.threads)
    command = "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    split = splits.isic_split()
    train_stems = split["train"][: args.train_limit] if args.train_limit else split["train"]
    val_stems = split["val"][: args.val_limit] if args.val_limit else split["val"]
    test_stems = split["test"][: args.test_limit] if args.test_limit else split["test"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split.json").write_text(json.dumps(split, indent=1))

    test = []
    for stem in test_stems:
        _, image, gt = splits.load_isic_case(stem)
        test.append({"stem": stem, "image": image, "gt": gt, "recist": recist_from_mask(gt)})
    log(f"baselines on {len(test)} test images")
    base_rows = baselines(test, not args.no_grabcut)
    samples = build_samples(train_stems, val_stems)

    runs: dict[str, dict] = {}
    per_seed_rows: dict[str, list[list[dict]]] = {m: [] for m in args.modes}
    for seed in args.seeds:
        for mode in args.modes:
            cfg = TrainConfig(
                mode=mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                aux_weight=args.aux_weight, n_clusters=args.clusters, target=args.target,
                seed=seed, device="cpu", patience=args.patience, encoder=args.encoder,
                input_size=args.input_size, recist_channel=not args.no_recist_channel,
            )
            d = run_dir(args.out, mode, seed)
            info = train_one(cfg, samples, d, args.retrain, command)
            te = time.perf_counter()
            rows = evaluate_model(d, test)
            info["test_eval_s"] = time.perf_counter() - te
            (d / "test_eval.json").write_text(json.dumps({"test": rows}, indent=1))
            per_seed_rows[mode].append(rows)
            info["test_dice_mean"] = float(np.mean([r["dice"] for r in rows]))
            runs[d.name] = info
            log(f"{d.name}: test Dice {info['test_dice_mean']:.4f}")

    result: dict[str, Any] = {
        "benchmark": "accuracy",
        "command": command,
        "protocol": {
            "dataset": "isic2017_train256 (256x256), RECIST derived from the expert masks",
            "split": f"train_default_model.make_split (seed {split['seed']}); test = the default model's 200 held-out images",
            "n_train_images": len(train_stems), "n_val_images": len(val_stems), "n_test_images": len(test),
            "seeds": args.seeds, "epochs": args.epochs, "patience": args.patience,
            "input_size": args.input_size, "encoder": args.encoder, "aux_weight": args.aux_weight,
            "clusters": args.clusters or "silhouette", "target": args.target,
            "recist_channel": not args.no_recist_channel, "batch_size": args.batch_size, "lr": args.lr,
            "selection": "best epoch by validation Dice against the weak target (never the expert masks)",
            "metrics": "metrics.evaluate_case vs expert masks, px units; Predictor from RECIST of the test masks",
        },
        "machine": splits.machine(),
        "models": {m: summarise_runs(per_seed_rows[m]) for m in args.modes},
        "baselines": {k: summarise_runs([v]) for k, v in base_rows.items()},
        "runs": runs,
    }
    # Paired comparisons (per test image and seed).
    arr = {m: {k: np.array([[r[k] for r in rows] for rows in per_seed_rows[m]]) for k in PAIRED}
           for m in args.modes}
    n_seeds = len(args.seeds)
    for name, rows in base_rows.items():
        arr[name] = {k: np.tile(np.array([r[k] for r in rows]), (n_seeds, 1)) for k in PAIRED}
    comparisons = {}
    if "a1" in arr and "a1l" in arr:
        comparisons["a1l_minus_a1"] = {k: paired(arr["a1"][k], arr["a1l"][k], args.bootstrap) for k in PAIRED}
    for m in args.modes:
        comparisons[f"{m}_minus_ellipse_quadrant"] = {
            k: paired(arr["ellipse_quadrant"][k], arr[m][k], args.bootstrap) for k in PAIRED}
    result["paired"] = comparisons
    result["paired_note"] = (
        "mean of (b - a) per test image and seed; ci95_images: bootstrap over test images of the "
        "seed-averaged difference; ci95_seeds_images: two-level bootstrap (seeds, then images). "
        "For dice/iou higher is better; for hd95/avd (px) lower is better."
    )
    result["total_wall_s"] = time.perf_counter() - t0
    (args.out / "accuracy.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
