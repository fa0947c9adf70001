"""``train`` runs unchanged under torchrun: 2 CPU processes (gloo), one tiny epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC = DATA / "isic2017_train256"

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import numpy as np, torch
    from PIL import Image
    torch.set_num_threads(1)
    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.training import TrainConfig, TrainSample, train

    isic, out = Path(sys.argv[1]), Path(sys.argv[2])
    samples = []
    for m in sorted((isic / "masks").glob("*.png"))[:10]:
        stem = m.name[: -len("_segmentation.png")]
        gt = np.asarray(Image.open(m)) > 0
        samples.append(TrainSample(isic / "images" / f"{stem}.jpg", recist_from_mask(gt),
                                   gt_mask=gt, group=stem, name=stem))
    cfg = TrainConfig(mode="a1l", n_clusters=2, epochs=1, batch_size=2, input_size=32,
                      val_fraction=0.2, device="cpu", decoder_channels=32)
    res = train(cfg, samples, out)
    rank = int(os.environ["RANK"])
    (out.parent / f"rank{rank}.json").write_text(
        '{"n_train": %d, "n_val": %d, "checkpoint": %s}'
        % (res.n_train, res.n_val, "true" if res.checkpoint else "false"))
    """
)


@pytest.mark.skipif(not ISIC.is_dir(), reason=f"real data missing: {ISIC}")
def test_torchrun_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "model"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", "--master_port=0", "--rdzv_backend=c10d",
        "--rdzv_endpoint=127.0.0.1:0", str(script), str(ISIC), str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    # Every rank prepared the 8 training lesions; only rank 0 validated and wrote.
    assert r0["n_train"] == r1["n_train"] == 8
    assert r0["n_val"] == 2 and r1["n_val"] == 0
    assert r0["checkpoint"] and not r1["checkpoint"]
    log = json.loads((out / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["status"] == "finished" and len(log["epochs"]) == 1

    from napari_recist_seg.model import load_checkpoint

    model, cfg, clusters = load_checkpoint(out)
    assert cfg.mode == "a1l" and clusters.k == 2 and cfg.input_size == 32
