"""Tiny but real trainings on ISIC images: log, best checkpoint, cancel, A1 / A1+L,
fine-tuning, ground truth never used as a target, the train job and CLI options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.jobs.common import CancelToken, InputError
from napari_recist_seg.model import load_checkpoint, read_checkpoint_config
from napari_recist_seg.preprocess import PreprocessConfig
from napari_recist_seg.recist import recist_from_mask
from napari_recist_seg.training import (
    TRAIN_LOG,
    TrainConfig,
    TrainSample,
    _augment,
    _prepare_one,
    split_groups,
    train,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC = DATA / "isic2017_train256"
pytestmark = pytest.mark.skipif(not ISIC.is_dir(), reason=f"real data missing: {ISIC}")

STEMS = [p.name[: -len("_segmentation.png")] for p in sorted((ISIC / "masks").glob("*.png"))[:12]] if ISIC.is_dir() else []


def _gt(stem: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0


def _samples(with_gt: bool = True, curated: int = 0) -> list[TrainSample]:
    out = []
    for i, stem in enumerate(STEMS):
        gt = _gt(stem)
        out.append(
            TrainSample(
                image=ISIC / "images" / f"{stem}.jpg",
                recist=recist_from_mask(gt),
                gt_mask=gt if with_gt else None,
                curated_mask=gt if i < curated else None,
                group=stem,
                name=stem,
            )
        )
    return out


def _cfg(**kw) -> TrainConfig:
    base = dict(mode="a1l", epochs=2, batch_size=4, input_size=32, n_clusters=3,
                val_fraction=0.25, device="cpu", seed=0, patience=0, decoder_channels=32)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train") / "model"
    events = []
    res = train(_cfg(), _samples(), out, progress=events.append)
    return out, res, events


def test_tiny_a1l_training_writes_log_and_best_checkpoint(tiny_run):
    out, res, events = tiny_run
    assert not res.cancelled and res.epochs_run == 2
    assert res.n_train == 9 and res.n_val == 3 and res.n_clusters == 3
    log = json.loads((out / TRAIN_LOG).read_text())
    assert log["status"] == "finished" and len(log["epochs"]) == 2
    for e in log["epochs"]:
        assert np.isfinite(e["train_loss"]) and e["train_aux_loss"] is not None
        assert 0.0 <= e["val_dice"] <= 1.0 and 0.0 <= e["val_gt_dice"] <= 1.0
        assert e["epoch_time_s"] > 0
    dices = [e["val_dice"] for e in log["epochs"]]
    assert log["best_epoch"] == res.best_epoch == int(np.argmax(dices)) + 1
    assert log["val_target_gt_dice"] > 0.7  # the ellipse vs the expert masks, for reference
    model, cfg, clusters = load_checkpoint(out)
    assert cfg.mode == "a1l" and cfg.input_size == 32 and clusters.k == 3
    doc = read_checkpoint_config(out)
    assert doc["training"]["epoch"] == res.best_epoch
    seg, aux = model(torch.zeros(1, cfg.in_channels, 32, 32))
    assert tuple(aux.shape) == (1, 3)
    # Progress: preparation events, then one per batch with an ETA.
    batch_events = [e for e in events if "epoch" in e.message]
    assert batch_events[-1].done == batch_events[-1].total
    assert any(e.eta is not None for e in batch_events)


def test_cancel_in_second_epoch_keeps_the_first_epochs_checkpoint(tmp_path):
    cancel = CancelToken()

    def progress(e):
        if e.message.startswith("epoch 2/"):
            cancel.cancel()

    out = tmp_path / "m"
    res = train(_cfg(epochs=3), _samples(), out, progress=progress, cancel=cancel)
    assert res.cancelled and res.epochs_run == 1 and res.best_epoch == 1
    log = json.loads((out / TRAIN_LOG).read_text())
    assert log["status"] == "cancelled" and len(log["epochs"]) == 1
    model, cfg, _ = load_checkpoint(out)
    assert read_checkpoint_config(out)["training"]["epoch"] == 1


def test_a1_runs_and_ground_truth_never_changes_training(tmp_path):
    cfg = _cfg(mode="a1", epochs=1, n_clusters=None)
    r1 = train(cfg, _samples(with_gt=True), tmp_path / "gt")
    r2 = train(cfg, _samples(with_gt=False), tmp_path / "nogt")
    # A1 has no cluster head and no cluster loss, but keeps the RECIST shape clusters
    # of its training set so that inference can name a lesion's cluster.
    assert r1.history[0].train_aux_loss is None
    assert r1.history[0].val_gt_dice is not None and r2.history[0].val_gt_dice is None
    m1, c1, k1 = load_checkpoint(tmp_path / "gt")
    m2, _, _ = load_checkpoint(tmp_path / "nogt")
    assert c1.mode == "a1" and not c1.has_aux and c1.n_clusters == 0
    assert k1 is not None and k1.k == r1.n_clusters >= 2
    assert m1(torch.zeros(1, c1.preprocess.in_channels, 32, 32))[1] is None
    # Same seed, same weak targets: identical weights whether or not gt masks exist.
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert r1.history[0].val_dice == r2.history[0].val_dice


def test_fine_tuning_with_two_curated_masks(tiny_run, tmp_path):
    init, _, _ = tiny_run
    _, _, init_clusters = load_checkpoint(init)
    samples = _samples(curated=2)
    for s in samples[:2]:
        s.split = "train"
    for s in samples[2:]:
        s.split = "val" if s.name in STEMS[-3:] else "train"
    # A different input size asked: fine-tuning keeps the checkpoint's crop rule.
    res = train(_cfg(epochs=1, input_size=64), samples, tmp_path / "ft", init_checkpoint=init)
    log = json.loads((tmp_path / "ft" / TRAIN_LOG).read_text())
    assert log["n_curated"] == 2 and log["init_checkpoint"] == str(init)
    assert res.n_val == 3
    _, cfg, clusters = load_checkpoint(tmp_path / "ft")
    assert cfg.input_size == 32
    np.testing.assert_array_equal(clusters.centers, init_clusters.centers)


def test_augmentation_keeps_image_target_and_recist_channel_aligned():
    # No jitter: the RECIST axes lie inside their ellipse under any rotation / flip / scale.
    cfg = _cfg(jitter=0.0, rotate_deg=20.0, scale_jitter=0.15, input_size=64)
    pcfg = PreprocessConfig(input_size=64)
    s = _samples()[0]
    prep, _ = _prepare_one(s, pcfg, "ellipse", False, -1)
    clusters = ClusterModel.fit(np.random.default_rng(0).normal(size=(30, 7)), k=2)
    for seed in range(8):
        x, t, label = _augment(prep, np.random.default_rng(seed), cfg, pcfg, clusters)
        line = x[3] > 0.5
        assert x.shape == (4, 64, 64) and line.sum() > 20
        # (the axes end on the outline: allow one pixel of resampling at their tips)
        assert ndimage.binary_dilation(t)[line].mean() > 0.97, seed
        assert 0.1 < t.mean() < 0.6  # lesion about a quarter of a 2x crop
        assert label in (0, 1)
    # Without augmentation the target matches the inference crop of the ellipse.
    plain = _cfg(jitter=0.0, rotate_deg=0.0, scale_jitter=0.0, flips=False, colour_jitter=0.0, input_size=64)
    _, val = _prepare_one(s, pcfg, "ellipse", True, -1)
    x, t, _ = _augment(prep, np.random.default_rng(0), plain, pcfg, None)
    inter = np.logical_and(t, val.target).sum()
    assert 2 * inter / (t.sum() + val.target.sum()) > 0.95
    assert np.abs(x[:3] - val.x[:3]).mean() < 0.15  # same picture (resampled twice)


def test_split_is_by_image_and_seeded():
    groups = ["a", "a", "b", "c", "c", "d", "e", "f", "g", "h"]
    val = split_groups(groups, 0.25, seed=1)
    assert val == split_groups(list(reversed(groups)), 0.25, seed=1)
    assert len(val) == 2  # of 8 distinct images
    assert split_groups(["x"], 0.5, 0) == set() and split_groups(groups, 0.0, 0) == set()


def test_bad_settings_and_samples_are_reported(tmp_path):
    with pytest.raises(ValueError, match="target"):
        TrainConfig(target="circle")
    with pytest.raises(ValueError, match="no training samples"):
        train(_cfg(), [], tmp_path)
    bad = _samples()[:4]
    bad[0].gt_mask = np.zeros((10, 10), bool)  # wrong size: that sample is skipped
    bad[0].split = "val"
    for s in bad[1:]:
        s.split = "train"
    res = train(_cfg(epochs=1, mode="a1"), bad, tmp_path / "m")
    assert res.n_train == 3 and res.n_val == 0
    assert any("ground-truth mask has shape" in reason for _, reason in res.failures)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in STEMS[:8]:
        (root / "images" / f"{stem}.jpg").symlink_to(ISIC / "images" / f"{stem}.jpg")
        (root / "masks" / f"{stem}_segmentation.png").symlink_to(ISIC / "masks" / f"{stem}_segmentation.png")
    return root


def test_cli_train_job_on_a_dataset_folder(dataset, tmp_path):
    from napari_recist_seg.cli import build_parser
    from napari_recist_seg.jobs.train import run_train

    out = tmp_path / "model"
    args = build_parser().parse_args([
        "train", str(dataset), "--out", str(out), "--mode", "a1", "--epochs", "1",
        "--input-size", "32", "--batch-size", "4", "--val-fraction", "0.25", "--seed", "1",
    ])
    report = run_train(args)
    assert report.processed == 8 and not report.failures and not report.cancelled
    assert out / "config.json" in report.outputs
    log = json.loads((out / TRAIN_LOG).read_text())
    assert log["n_val"] == 2 and log["epochs"][0]["val_gt_dice"] is not None
    assert log["n_curated"] == 0  # the dataset's masks are never training targets
    assert log["train_config"]["input_size"] == 32 and log["train_config"]["seed"] == 1

    # Fine-tuning from it with a curated mask folder (keyword form).
    curated = tmp_path / "curated"
    curated.mkdir()
    (curated / f"{STEMS[0]}.png").symlink_to(ISIC / "masks" / f"{STEMS[0]}_segmentation.png")
    report2 = run_train(dataset, tmp_path / "ft", init=out, curated=curated, epochs=1,
                        batch_size=4, val_fraction=0.25, mode="a1", steps=5)
    assert report2.processed == 8
    assert json.loads((tmp_path / "ft" / TRAIN_LOG).read_text())["n_curated"] == 1


def test_cli_train_job_input_errors(dataset, tmp_path):
    from napari_recist_seg.jobs.train import run_train

    with pytest.raises(InputError, match="--init"):
        run_train(dataset, tmp_path / "m", curated=tmp_path)
    with pytest.raises(InputError, match="clusters"):
        run_train(dataset, tmp_path / "m", clusters="many")
    with pytest.raises(InputError, match="does not exist"):
        run_train(tmp_path / "nowhere", tmp_path / "m")


def test_seg_loss_value_on_a_hand_computed_input():
    from napari_recist_seg.training import _seg_loss

    # logits 0 -> p = 0.5 everywhere; target: 1 of 4 pixels.
    # BCE = log 2; soft Dice = 1 - (2 * 0.5 + 1) / ((4 * 0.5 + 1) + 1) = 1 - 2 / 4 = 0.5.
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert float(_seg_loss(logits, target)) == pytest.approx(np.log(2) + 0.5, abs=1e-6)
    # Saturated and right: BCE ~ 0, Dice = 1 - (2 * 1 + 1) / (1 + 1 + 1) = 0.
    good = torch.tensor([[[[30.0, -30.0], [-30.0, -30.0]]]])
    assert float(_seg_loss(good, target)) == pytest.approx(0.0, abs=1e-6)
    # Two samples: the Dice term is their mean (1 - 3/3 and 1 - 1/2 -> 0.25).
    empty = torch.full((1, 1, 2, 2), -30.0)
    both = _seg_loss(torch.cat([good, empty]), torch.cat([target, target]))
    bce_empty = 30.0 / 8  # one wrong pixel of 8 at logit -30
    assert float(both) == pytest.approx(bce_empty + 0.25, abs=1e-4)


def _record_mask_reads(monkeypatch) -> list[str]:
    from napari_recist_seg.data import masks

    reads: list[str] = []
    real = masks.read_mask

    def recording(path):
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(masks, "read_mask", recording)
    return reads


def test_train_job_reads_ground_truth_only_for_validation(dataset, tmp_path, monkeypatch):
    """Without --curated no mask is a training target: only validation images' masks
    are read (for val_gt_dice); with --curated, the curated masks of the training
    images are the only other masks read, and they are the targets (n_curated)."""
    from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
    from napari_recist_seg.jobs.train import run_train

    records = [RecistRecord(dataset / "images" / f"{s}.jpg", 1, recist_from_mask(_gt(s)))
               for s in STEMS[:8]]
    write_recist_csv(dataset / "recist.csv", records)  # RECIST need no mask read
    val = split_groups(STEMS[:8], 0.25, 1)
    assert len(val) == 2
    reads = _record_mask_reads(monkeypatch)
    opts = dict(mode="a1", epochs=1, input_size=32, batch_size=4, val_fraction=0.25, seed=1)
    run_train(dataset, tmp_path / "m", **opts)
    log = json.loads((tmp_path / "m" / TRAIN_LOG).read_text())
    assert log["n_curated"] == 0 and log["n_train"] == 6
    assert sorted(reads) == sorted(f"{s}_segmentation.png" for s in val)

    curated = tmp_path / "curated"
    curated.mkdir()
    train_stems = [s for s in STEMS[:8] if s not in val]
    for s in train_stems[:2]:
        (curated / f"{s}.png").symlink_to(ISIC / "masks" / f"{s}_segmentation.png")
    reads.clear()
    run_train(dataset, tmp_path / "ft", init=tmp_path / "m", curated=curated, steps=5, **opts)
    log = json.loads((tmp_path / "ft" / TRAIN_LOG).read_text())
    assert log["n_curated"] == 2
    # Fine-tuning (napari_recist_seg.finetune) reads the curated masks and no other.
    expected = [f"{s}.png" for s in train_stems[:2]]
    assert sorted(reads) == sorted(expected)
