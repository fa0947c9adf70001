"""``train`` runs unchanged under torchrun: 2 CPU processes (gloo), one tiny epoch; one
checkpoint from rank 0, each shard's targets prepared once, losses and validation
metrics all-reduced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
ISIC = DATA / "isic2017_train256"

# The start of both single-loop scripts: 10 real ISIC images with their RECIST, one tiny
# A1+L epoch under torchrun; the script then writes what its test checks, per rank.
TRAIN_PRELUDE = """
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
rank = int(os.environ["RANK"])
"""

SCRIPT = TRAIN_PRELUDE + """
(out.parent / f"rank{rank}.json").write_text(
    '{"n_train": %d, "n_val": %d, "checkpoint": %s}'
    % (res.n_train, res.n_val, "true" if res.checkpoint else "false"))
"""

LOSS_SCRIPT = TRAIN_PRELUDE + """
(out.parent / f"loss{rank}.json").write_text(json.dumps([h.train_loss for h in res.history]))
"""


def _torchrun(script_text: str, tmp_path: Path) -> Path:
    """Run ``script_text ISIC tmp_path/model`` in 2 CPU processes; returns the model dir."""
    script = tmp_path / "ddp_script.py"
    script.write_text(script_text)
    out = tmp_path / "model"
    # The worktree's package, not an editable install elsewhere (cwd is tmp_path).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", "--master_port=0", "--rdzv_backend=c10d",
        "--rdzv_endpoint=127.0.0.1:0", str(script), str(ISIC), str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.skipif(not ISIC.is_dir(), reason=f"real data missing: {ISIC}")
def test_torchrun_two_cpu_processes(tmp_path):
    out = _torchrun(SCRIPT, tmp_path)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    # Both ranks report the totals (8 training, 2 validation lesions); only rank 0 wrote.
    assert r0["n_train"] == r1["n_train"] == 8
    assert r0["n_val"] == r1["n_val"] == 2
    assert r0["checkpoint"] and not r1["checkpoint"]
    log = json.loads((out / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["status"] == "finished" and len(log["epochs"]) == 1

    from napari_recist_seg.model import load_checkpoint

    model, cfg, clusters = load_checkpoint(out)
    assert cfg.mode == "a1l" and clusters.k == 2 and cfg.input_size == 32


SHARD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import numpy as np, torch
    from PIL import Image
    torch.set_num_threads(1)
    from napari_recist_seg import training
    from napari_recist_seg.recist import recist_from_mask
    # Spied where the loop looks them up (training is a package since #15).
    from napari_recist_seg.training import loop, samples as samples_mod

    isic, out = Path(sys.argv[1]), Path(sys.argv[2])
    prepared, validated = [], []
    prepare, validate = samples_mod._prepare_one, loop.validate

    def spy_prepare(s, *a, **k):
        prepared.append(s.name)
        return prepare(s, *a, **k)

    def spy_validate(model, items, *a, **k):
        res = validate(model, items, *a, **k)
        validated.append([len(items), sum(v.gt is not None for v in items), *res])
        return res

    samples_mod._prepare_one, loop.validate = spy_prepare, spy_validate
    samples = []
    for m in sorted((isic / "masks").glob("*.png"))[:12]:
        stem = m.name[: -len("_segmentation.png")]
        gt = np.asarray(Image.open(m)) > 0
        samples.append(training.TrainSample(isic / "images" / f"{stem}.jpg", recist_from_mask(gt),
                                            gt_mask=gt, group=stem, name=stem))
    cfg = training.TrainConfig(mode="a1l", n_clusters=2, epochs=1, batch_size=2, input_size=32,
                               val_fraction=0.34, device="cpu", decoder_channels=32)
    res = training.train(cfg, samples, out)
    e = res.history[-1]
    rank = int(os.environ["RANK"])
    (out.parent / f"rank{rank}.json").write_text(json.dumps({
        "prepared": prepared, "validated": validated, "n_train": res.n_train,
        "n_val": res.n_val, "val": [e.val_loss, e.val_dice, e.val_gt_dice],
        "train_loss": e.train_loss}))
    """
)


@pytest.mark.skipif(not ISIC.is_dir(), reason=f"real data missing: {ISIC}")
def test_ddp_prepares_each_shard_once_and_all_reduces_validation(tmp_path):
    out = _torchrun(SHARD_SCRIPT, tmp_path)
    r = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    # Targets: each sample prepared exactly once, by one rank, and both ranks did some.
    names = r[0]["prepared"] + r[1]["prepared"]
    assert len(names) == len(set(names)) == 12 and r[0]["prepared"] and r[1]["prepared"]
    assert r[0]["n_train"] == r[1]["n_train"] and r[0]["n_val"] == r[1]["n_val"]
    assert r[0]["n_train"] + r[0]["n_val"] == 12
    # Validation: each rank validated its own shard; the logged metrics are the
    # count-weighted means over both shards, the same on both ranks.
    local = [v[0] for k in (0, 1) for v in r[k]["validated"]]
    assert all(local) and sum(v[0] for k in (0, 1) for v in r[k]["validated"][-1:]) == r[0]["n_val"]
    last = [r[k]["validated"][-1] for k in (0, 1)]
    for j, w in ((0, 0), (1, 0), (2, 1)):  # loss, Dice (weights: items), GT Dice (with GT)
        want = sum(v[2 + j] * v[w] for v in last) / sum(v[w] for v in last)
        assert r[0]["val"][j] == pytest.approx(want, rel=1e-9)
        assert r[1]["val"][j] == pytest.approx(want, rel=1e-9)
    assert r[0]["train_loss"] == pytest.approx(r[1]["train_loss"], rel=1e-9)
    log = json.loads((out / "train_log.json").read_text())
    assert log["epochs"][0]["val_dice"] == pytest.approx(r[0]["val"][1], rel=1e-9)


@pytest.mark.skipif(not ISIC.is_dir(), reason=f"real data missing: {ISIC}")
def test_train_loss_is_reduced_over_ranks(tmp_path):
    _torchrun(LOSS_SCRIPT, tmp_path)
    l0 = json.loads((tmp_path / "loss0.json").read_text())
    l1 = json.loads((tmp_path / "loss1.json").read_text())
    # Different shards give different losses per rank; reduced, both ranks log the same.
    assert len(l0) == 1 and l0 == pytest.approx(l1, rel=1e-9)
