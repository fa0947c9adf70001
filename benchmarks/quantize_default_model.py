"""Store the INT8 graph in a checkpoint (default: the shipped model) and measure it.

Calibration and the write-time check use **training ids only** of the model's
``split.json`` (seeded shuffle: the first ``--n-calibration`` calibrate, the next
``--n-check`` check; RECIST derived from the expert masks, as for every prompt here;
the masks themselves are never used). Then, on the **validation ids** (``--n-val``),
the final masks (refinement included) of the float and of the INT8 graph are compared:
mean / min / 5th percentile Dice between them, and each one's mean Dice to the expert
masks; and the CPU time of the forward pass per lesion (one thread, batches of 8,
best of 5) for both. Prints one JSON object.

Usage::

    python benchmarks/quantize_default_model.py [--model DIR] [--dry-run]

``--dry-run`` builds and measures the INT8 graph without storing it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from splits import load_isic_case  # noqa: E402


def _inputs(stems, config) -> np.ndarray:
    from napari_recist_seg.preprocess import make_input
    from napari_recist_seg.recist import recist_from_mask, snap

    xs = []
    for stem in stems:
        _, image, mask = load_isic_case(stem)
        r = snap(recist_from_mask(mask), image_shape=image.shape)
        xs.append(make_input(image, r, config.preprocess)[0])
    return np.stack(xs)


def _cpu_ms(graph: bytes, x: np.ndarray, batch: int = 8) -> float:
    from napari_recist_seg.runtime import onnx_session_runner

    run = onnx_session_runner(graph, threads=1)
    run(x[:batch])
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for i in range(0, len(x), batch):
            run(x[i : i + batch])
        best = min(best, (time.process_time() - t) / len(x) * 1e3)
    return round(best, 2)


def _val_masks(predictor, stems) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from napari_recist_seg.recist import recist_from_mask

    preds, truths = [], []
    for stem in stems:
        _, image, mask = load_isic_case(stem)
        [res] = predictor.segment(image, [recist_from_mask(mask)])
        full = np.zeros(mask.shape, bool)
        res.paste_into(full, True)
        preds.append(full)
        truths.append(mask > 0)
    return preds, truths


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--n-calibration", type=int, default=200, help="training ids that calibrate")
    parser.add_argument("--n-check", type=int, default=100, help="other training ids checked at write time")
    parser.add_argument("--n-val", type=int, default=200, help="validation ids compared (final masks)")
    parser.add_argument("--dry-run", action="store_true", help="measure without storing the INT8 graph")
    args = parser.parse_args(argv)

    import shutil

    from napari_recist_seg.model import load_checkpoint_graph
    from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor
    from napari_recist_seg.quantize import add_int8_graph, read_int8_graph

    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    split = json.loads((model / "split.json").read_text())
    train = list(np.random.default_rng(0).permutation(sorted(split["train"])))
    _, config, _ = load_checkpoint_graph(model)
    t0 = time.perf_counter()
    calibration = _inputs(train[: args.n_calibration], config)
    check = _inputs(train[args.n_calibration : args.n_calibration + args.n_check], config)
    target = model
    if args.dry_run:
        target = Path(tempfile.mkdtemp(prefix="recist_int8_")) / "ckpt"
        shutil.copytree(model, target)
    name = add_int8_graph(target, calibration, check)
    build_s = time.perf_counter() - t0
    doc = json.loads((target / "config.json").read_text())
    int8 = read_int8_graph(target, doc)
    fp32 = load_checkpoint_graph(target)[0]
    val = sorted(split["val"])[: args.n_val]
    p32 = Predictor.load(target, device="cpu", precision="fp32")
    p8 = Predictor.load(target, device="cpu", precision="int8")
    m32, truth = _val_masks(p32, val)
    m8, _ = _val_masks(p8, val)
    d = np.array([_dice(a, b) for a, b in zip(m32, m8)])
    x_val = _inputs(val[:64], config)
    out = {
        "benchmark": "quantize_default_model", "model": str(model), "stored": not args.dry_run,
        "int8_graph": name, "int8_mb": round(len(int8) / 2**20, 1), "build_s": round(build_s, 1),
        "calibration_ids": len(calibration), "check_ids": len(check), "val_ids": len(val),
        "val_dice_int8_vs_fp32": {"mean": round(float(d.mean()), 4), "min": round(float(d.min()), 4),
                                  "p5": round(float(np.percentile(d, 5)), 4)},
        "val_dice_to_expert": {"fp32": round(float(np.mean([_dice(a, t) for a, t in zip(m32, truth)])), 4),
                               "int8": round(float(np.mean([_dice(a, t) for a, t in zip(m8, truth)])), 4)},
        "forward_cpu_ms_per_lesion_1thread_b8": {"fp32": _cpu_ms(fp32, x_val), "int8": _cpu_ms(int8, x_val)},
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    if args.dry_run:
        shutil.rmtree(target.parent, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
