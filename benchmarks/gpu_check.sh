#!/usr/bin/env bash
# The GPU path, checked in one short run (< 5 min on an H200-class card; never run on
# the 2-core CPU machine): (1) one training epoch on the ISIC set with mixed precision
# (`--device cuda`, float16 autocast + GradScaler), (2) bulk segmentation of 2000 ISIC
# images on the GPU (benchmarks/throughput.py), (3) GPU vs CPU (ONNX Runtime) masks of
# the default model on 200 images. Prints one JSON object per step; figures go into
# benchmarks/README.md. Usage (from the repository root, data in ../shared/data):
#
#     timeout 300 bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Goals (issue 14): >= 2000 lesions/s bulk, < 10 s per training epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ISIC=../shared/data/isic2017_train256

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, onnxruntime as o; print(torch.__version__, torch.cuda.is_available(), o.get_available_providers())"

echo "== 1. one AMP training epoch on ISIC (1800 train / 200 val, ellipse targets)" >&2
timeout 150 python3 - "$ISIC" "$OUT/train" <<'PY' | tee "$OUT/train.json"
import json, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from napari_recist_seg.recist import recist_from_mask
from napari_recist_seg.training import TrainConfig, TrainSample, train

isic, out = Path(sys.argv[1]), Path(sys.argv[2])
t0 = time.perf_counter()
samples = []
for m in sorted((isic / "masks").glob("*_segmentation.png")):
    stem = m.name[: -len("_segmentation.png")]
    gt = np.asarray(Image.open(m)) > 0
    samples.append(TrainSample(isic / "images" / f"{stem}.jpg", recist_from_mask(gt),
                               gt_mask=gt, group=stem, name=stem))
t_load = time.perf_counter() - t0
cfg = TrainConfig(mode="a1l", n_clusters=2, epochs=1, batch_size=128, lr=2e-3,
                  target="ellipse", device="cuda", num_workers=8)
res = train(cfg, samples, out)
h = res.history[0]
print(json.dumps({"step": "train_epoch_amp", "n_train": res.n_train, "n_val": res.n_val,
                  "batch_size": cfg.batch_size, "epoch_time_s": round(h.epoch_time_s, 2),
                  "train_wall_s": round(res.wall_time_s, 2), "read_masks_s": round(t_load, 2),
                  "train_loss": h.train_loss, "val_gt_dice": h.val_gt_dice,
                  "goal_epoch_s": 10.0}))
PY

echo "== 2. bulk segmentation of 2000 ISIC images on the GPU" >&2
timeout 120 python3 benchmarks/throughput.py --n 2000 --device cuda --batch-size 256 \
    | tee "$OUT/bulk.json"

echo "== 3. GPU vs CPU masks of the default model (200 images)" >&2
timeout 90 python3 - "$ISIC" <<'PY' | tee "$OUT/parity.json"
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from napari_recist_seg.predict import Predictor
from napari_recist_seg.recist import recist_from_mask

isic = Path(sys.argv[1])
cpu = Predictor.load(device="cpu")
gpu = Predictor.load(device="cuda")
dices, equal = [], 0
for m in sorted((isic / "masks").glob("*_segmentation.png"))[:200]:
    stem = m.name[: -len("_segmentation.png")]
    image = np.asarray(Image.open(isic / "images" / f"{stem}.jpg").convert("RGB"))
    r = [recist_from_mask(np.asarray(Image.open(m)) > 0)]
    a, b = cpu.segment(image, r)[0].full_mask(image.shape), gpu.segment(image, r)[0].full_mask(image.shape)
    equal += int(np.array_equal(a, b))
    dices.append(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))
print(json.dumps({"step": "gpu_cpu_parity", "cpu_backend": cpu.backend, "gpu_backend": gpu.backend,
                  "gpu_device": gpu.device, "n": len(dices), "identical_masks": equal,
                  "dice_gpu_vs_cpu_min": float(np.min(dices)),
                  "dice_gpu_vs_cpu_mean": float(np.mean(dices)),
                  "pass": bool(np.min(dices) >= 0.98)}))
PY
