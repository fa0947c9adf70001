"""Under torchrun the logged train loss covers all ranks' shards (all-reduced), and
``recist-seg`` prints its summary once (rank 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ISIC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isic2017_train256"

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
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
    (out.parent / f"loss{os.environ['RANK']}.json").write_text(
        json.dumps([h.train_loss for h in res.history]))
    """
)


@pytest.mark.skipif(not ISIC.is_dir(), reason=f"real data missing: {ISIC}")
def test_train_loss_is_reduced_over_ranks(tmp_path):
    script = tmp_path / "ddp_loss.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
           str(script), str(ISIC), str(tmp_path / "model")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l0 = json.loads((tmp_path / "loss0.json").read_text())
    l1 = json.loads((tmp_path / "loss1.json").read_text())
    # Different shards give different losses per rank; reduced, both ranks log the same.
    assert len(l0) == 1 and l0 == pytest.approx(l1, rel=1e-9)
