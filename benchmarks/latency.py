"""Click-to-segment latency: one lesion, model call only, on a real ISIC image.

Times ``Predictor.segment(image, [recist])`` (validation + snap + crop/normalise +
forward + paste back/threshold/post-process/measure) after a warm-up, and each stage
separately; also ``segment_click`` (several scales in one batch, then a refinement
pass). Prints one JSON object on stdout.

Usage::

    python benchmarks/latency.py [--model DIR] [--runs 100] [--threads N]

Without ``--model`` the shipped default model is used, or, when it is missing, an
untrained model with the default architecture (same compute; reported as such).
Budget (DESIGN.md section 7): p50 <= 25 ms on the 2-core CPU. On a shared machine
look at ``loadavg_1min`` and ``min``: other processes inflate the wall times, and
``total_cpu_ms`` (CPU time of all torch threads) shows the work itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ISIC = SHARED_DATA / "isic2017_train256"
BUDGET_P50_MS = 25.0


def machine_info(device: str = "cpu") -> dict:
    """CPU count, load, torch version and threads, device."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    with contextlib.suppress(OSError):  # not on every platform
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_predictor(model: str | None, device: str = "cpu", **kwargs):
    """``(predictor, description)``: the given checkpoint, the default model, or an
    untrained default-architecture model when neither exists. ``kwargs`` go to
    ``Predictor.load`` (``optimize``, ``tta``, ``postprocess``)."""
    from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor

    if model is not None:
        p = Predictor.load(model, device=device, **kwargs)
        return p, {"source": str(model), **_describe(p)}
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        p = Predictor.load(None, device=device, **kwargs)
        return p, {"source": "default (shipped)", **_describe(p)}
    import torch

    from napari_recist_seg.clusters import ClusterModel
    from napari_recist_seg.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(mode="a1l", n_clusters=4)
    rng = np.random.default_rng(0)
    clusters = ClusterModel(rng.normal(size=(4, 7)), np.zeros(7), np.ones(7))
    path = save_checkpoint(Path(tempfile.mkdtemp()) / "untrained", build_model(cfg), cfg, clusters)
    p = Predictor.load(path, device=device, **kwargs)
    return p, {"source": "untrained (no default model yet; same architecture and compute)", **_describe(p)}


def _describe(p) -> dict:
    c = p.config
    return {
        "mode": c.mode,
        "encoder": c.encoder,
        "input_size": c.input_size,
        "recist_channel": c.recist_channel,
        "n_clusters": c.n_clusters,
        "backend": p.backend,
        "precision": getattr(p._runner, "precision", "fp32"),
    }


def stats_ms(seconds: list[float]) -> dict:
    a = np.asarray(seconds) * 1000.0
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "mean": round(float(a.mean()), 2),
        "min": round(float(a.min()), 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: shipped model)")
    parser.add_argument("--image", default="ISIC_0000000", help="ISIC stem in ../shared/data")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--click-runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=["auto", "onnxruntime", "torchscript", "eager"],
                        default="auto", help="how the network runs (default: fastest that agrees)")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from napari_recist_seg.recist import recist_from_mask

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (ISIC / "images").is_dir():
        sys.exit(f"real ISIC data not found at {ISIC}")
    image = np.asarray(Image.open(ISIC / "images" / f"{args.image}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(ISIC / "masks" / f"{args.image}_segmentation.png")) > 0
    recist = recist_from_mask(mask)
    t_load = time.perf_counter()
    predictor, model_info = load_predictor(
        args.model, args.device, **({} if args.backend == "auto" else {"backend": args.backend})
    )
    load_s = time.perf_counter() - t_load

    def sync() -> None:
        if predictor.device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        predictor.segment(image, [recist])
    sync()
    totals: list[float] = []
    cpu: list[float] = []
    stages: dict[str, list[float]] = {"preprocess": [], "forward": [], "postprocess": []}
    for _ in range(args.runs):
        timings: dict[str, float] = {}
        c0 = time.process_time()
        t0 = time.perf_counter()
        [res] = predictor.segment(image, [recist], timings=timings)
        sync()
        totals.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        for k in stages:
            stages[k].append(timings[k])
    dice = float(2 * (res.full_mask(mask.shape) & mask).sum() / (res.area_px + mask.sum()))

    rows, cols = np.nonzero(mask)
    point = (float(rows.mean()), float(cols.mean()))
    click: list[float] = []
    click_error = None
    for i in range(args.click_runs + 2):
        t0 = time.perf_counter()
        try:
            predictor.segment_click(image, point)
        except Exception as exc:  # an untrained model may find nothing
            click_error = str(exc)
            break
        sync()
        if i >= 2:
            click.append(time.perf_counter() - t0)

    total = stats_ms(totals)
    out = {
        "benchmark": "latency",
        "what": "Predictor.segment(image, [recist]) on one real ISIC image, one lesion",
        "image": f"{args.image}.jpg {image.shape}",
        "crop_side_px": int(res.mask.shape[0]),
        "model": model_info,
        "model_load_s": round(load_s, 3),
        "machine": machine_info(predictor.device),
        "runs": args.runs,
        "warmup": args.warmup,
        "total_ms": total,
        "total_cpu_ms": stats_ms(cpu),
        "preprocess_ms": stats_ms(stages["preprocess"]),
        "forward_ms": stats_ms(stages["forward"]),
        "postprocess_ms": stats_ms(stages["postprocess"]),
        "dice_vs_expert": round(dice, 4),
        "click_ms": stats_ms(click) if click else {"error": click_error},
        "budget_p50_ms": BUDGET_P50_MS,
        "within_budget": total["p50"] <= BUDGET_P50_MS,
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
