"""Train the shipped default model on ISIC 2017 (256 px) from RECIST only, and evaluate it.

Weak supervision: the RECIST of each image is derived from its expert mask (longest
diameter, longest perpendicular diameter), and the network is trained on the weak
target built from that RECIST (``--target``: the four-endpoint ellipse, or GrabCut seeded
by it); the expert masks themselves are never a training target.
They are used (a) for the validation column ``val_gt_dice`` of the training log
(reporting only; model selection uses the Dice against the weak target) and (b) for the
held-out evaluation below.

Split (fixed, reproducible): the sorted image ids are permuted with
``numpy.random.default_rng(SPLIT_SEED)``; the first 10% are the held-out *test* images
(never trained on, never used for model selection), the next 10% validation, the rest
training. The split is written to ``OUT/split.json``.

Usage (the shipped model)::

    python benchmarks/train_default_model.py --out /tmp/default_model --mode a1 \
        --target grabcut --epochs 10 --threads 2
    # then copy config.json, weights-*.safetensors, train_log.json, split.json,
    # heldout_eval.json into napari_recist_seg/models/default/

Prints one JSON object: the held-out metrics (mean +- sd) of the model and of the
RECIST ellipses (quadrant and centred) and GrabCut targets on the same test images,
and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SPLIT_SEED = 2017
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isic2017_train256"


def make_split(stems: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    stems = sorted(stems)
    perm = np.random.default_rng(seed).permutation(len(stems))
    n_test = n_val = int(round(0.1 * len(stems)))
    test = sorted(stems[i] for i in perm[:n_test])
    val = sorted(stems[i] for i in perm[n_test : n_test + n_val])
    train = sorted(stems[i] for i in perm[n_test + n_val :])
    return {"seed": seed, "rule": "sorted ids, numpy default_rng(seed).permutation; test = first 10%, val = next 10%", "train": train, "val": val, "test": test}


def load_case(stem: str) -> tuple[Path, np.ndarray]:
    from napari_recist_seg.data.masks import read_mask

    return DATA / "images" / f"{stem}.jpg", read_mask(DATA / "masks" / f"{stem}_segmentation.png")


def evaluate(model_dir: Path, stems: list[str], threads: int) -> dict:
    import torch

    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.metrics import evaluate_case, summarize
    from napari_recist_seg.model import load_checkpoint
    from napari_recist_seg.preprocess import make_input, paste_back
    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.targets import ellipse_mask, grabcut_mask

    torch.set_num_threads(threads)
    model, cfg, _ = load_checkpoint(model_dir)
    pcfg = cfg.preprocess
    rows: dict[str, list[dict]] = {"model": [], "ellipse_quadrant": [], "ellipse_centred": [], "grabcut": []}
    for stem in stems:
        img_path, gt = load_case(stem)
        image = read_image(img_path).array
        r = recist_from_mask(gt)
        x, box = make_input(image, r, pcfg)
        with torch.inference_mode():
            seg, _ = model(torch.from_numpy(x)[None])
        prob = torch.sigmoid(seg[0, 0]).numpy()
        (r0, c0), p = paste_back(prob, box, gt.shape)
        pred = np.zeros(gt.shape, bool)
        pred[r0 : r0 + p.shape[0], c0 : c0 + p.shape[1]] = p > cfg.threshold
        rows["model"].append({"case": stem, **evaluate_case(pred, gt)})
        rows["ellipse_quadrant"].append({"case": stem, **evaluate_case(ellipse_mask(r, gt.shape), gt)})
        rows["ellipse_centred"].append(
            {"case": stem, **evaluate_case(ellipse_mask(r, gt.shape, mode="centred"), gt)}
        )
        rows["grabcut"].append({"case": stem, **evaluate_case(grabcut_mask(image, r), gt)})
    out: dict = {"n_images": len(stems)}
    for name, cases in rows.items():
        mean, sd = summarize(cases)
        out[name] = {k: {"mean": mean[k], "sd": sd[k]} for k in ("dice", "iou", "hd95", "avd", "hd")}
    model_d = np.array([c["dice"] for c in rows["model"]])
    ell_d = np.array([c["dice"] for c in rows["ellipse_quadrant"]])
    out["model_beats_quadrant_ellipse_fraction"] = float(np.mean(model_d > ell_d))
    out["per_case"] = rows
    return out


def _target_path(folder: Path | None, stem: str) -> Path | None:
    """The prebuilt weak target of ``stem`` (``--target-dir``), if there is one."""
    if folder is None:
        return None
    path = folder / f"{stem}_target.png"
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=["a1", "a1l"], default="a1l")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--aux-weight", type=float, default=0.3)
    p.add_argument("--clusters", type=int, default=None, help="K (default: silhouette)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--crop-factor", type=float, default=2.0)
    p.add_argument("--no-recist-channel", action="store_true")
    p.add_argument("--jitter", type=float, default=0.05)
    p.add_argument("--target", choices=["ellipse", "grabcut"], default="ellipse")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-train", type=int, default=None, help="use only N training images (quick runs)")
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None, help="evaluate on N test images only")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="start from this checkpoint (e.g. the shipped default) for a shorter schedule")
    p.add_argument("--target-dir", type=Path, default=None,
                   help="weak targets <stem>_target.png built beforehand (benchmarks/selftrain_targets.py: "
                        "a self-training round); replaces --target for every id that has one")
    p.add_argument("--shift-aug", type=float, default=0.0,
                   help="probability of each blur / JPEG / colour-balance augmentation (0: off)")
    args = p.parse_args(argv)

    import torch

    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.training import TrainConfig, TrainSample, train

    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        print(f"missing data folder {DATA}", file=sys.stderr)
        return 2
    stems = sorted(p.stem for p in (DATA / "images").glob("*.jpg"))
    split = make_split(stems)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split.json").write_text(json.dumps(split, indent=1))
    t0 = time.perf_counter()
    result_info: dict = {}
    if not args.eval_only:
        samples = []
        train_stems = split["train"][: args.max_train] if args.max_train else split["train"]
        val_stems = split["val"][: args.max_val] if args.max_val else split["val"]
        for which, group in (("train", train_stems), ("val", val_stems)):
            for stem in group:
                img_path, gt = load_case(stem)
                samples.append(
                    TrainSample(
                        image=img_path,
                        recist=recist_from_mask(gt),
                        weak_mask=_target_path(args.target_dir, stem),
                        # Reporting only (val_gt_dice); never a target, never selection.
                        gt_mask=gt if which == "val" else None,
                        group=stem,
                        split=which,
                        name=stem,
                    )
                )
        cfg = TrainConfig(
            mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            aux_weight=args.aux_weight, n_clusters=args.clusters, target=args.target,
            seed=args.seed, device="cpu", patience=args.patience, jitter=args.jitter,
            encoder=args.encoder, input_size=args.input_size, crop_factor=args.crop_factor,
            recist_channel=not args.no_recist_channel, half_weights=True,
            shift_aug=args.shift_aug,
        )

        def progress(e):  # sparse progress lines in the log
            if e.done == e.total or e.done % 25 == 0:
                print(e.format(), file=sys.stderr, flush=True)

        res = train(
            cfg, samples, args.out, init_checkpoint=args.init, progress=progress,
            on_epoch=lambda e: print(json.dumps(e.__dict__), file=sys.stderr, flush=True),
            extra={"command": "python benchmarks/train_default_model.py " + " ".join(argv or sys.argv[1:]),
                   "dataset": "isic2017_train256", "split_seed": SPLIT_SEED,
                   "supervision": (f"RECIST derived from masks -> {args.target} targets"
                                   + (f" / self-training targets from {args.target_dir}" if args.target_dir else "")
                                   + "; masks never used as targets")},
        )
        result_info = {"best_epoch": res.best_epoch, "best_val_dice": res.best_val_dice,
                       "epochs_run": res.epochs_run, "train_wall_s": res.wall_time_s,
                       "n_train": res.n_train, "n_val": res.n_val, "n_clusters": res.n_clusters}
    test = split["test"][: args.max_test] if args.max_test else split["test"]
    ev = evaluate(args.out, test, args.threads)
    ev.update(result_info)
    ev["total_wall_s"] = time.perf_counter() - t0
    (args.out / "heldout_eval.json").write_text(json.dumps(ev, indent=1))
    summary = {k: v for k, v in ev.items() if k != "per_case"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
