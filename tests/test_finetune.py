"""Fine-tuning on curated masks (napari_recist_seg.finetune): the mechanics.

Whether it *helps* is measured by benchmarks/finetune_gain.py, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg import finetune
from napari_recist_seg.finetune import FineTuneConfig, fine_tune, param_groups
from napari_recist_seg.recist import recist_from_mask
from napari_recist_seg.training import TrainSample

pytestmark = pytest.mark.usefixtures("one_thread")

STEMS = ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002")


def _real(isic_dir: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(Image.open(isic_dir / "images" / f"{stem}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0
    return img, gt


def test_param_groups_encoder_at_a_tenth_and_cluster_head_kept(tiny_ckpt):
    from napari_recist_seg.model import load_checkpoint

    model, _, _ = load_checkpoint(tiny_ckpt, device="cpu")
    groups = param_groups(model, FineTuneConfig(lr=2e-4))
    by = {g["name"]: g for g in groups}
    assert by["decoder"]["lr"] == pytest.approx(2e-4)
    assert by["encoder"]["lr"] == pytest.approx(2e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("net.encoder.") for p in by["encoder"]["params"])
    assert not any("encoder" in names[id(p)] for p in by["decoder"]["params"])
    head = [p for n, p in model.named_parameters() if "classification_head" in n]
    assert head and not any(p.requires_grad for p in head)
    trained = {id(p) for g in groups for p in g["params"]}
    assert not trained & {id(p) for p in head}

    model2, _, _ = load_checkpoint(tiny_ckpt, device="cpu")
    frozen = param_groups(model2, FineTuneConfig(encoder_lr_scale=0.0))
    assert [g["name"] for g in frozen] == ["decoder"]
    assert not any(p.requires_grad for n, p in model2.named_parameters() if n.startswith("net.encoder."))


def test_curated_mask_is_the_target_and_gt_of_replay_never_read(isic_dir, tmp_path):
    img, gt = _real(isic_dir, STEMS[0])
    r = recist_from_mask(gt)
    # A curated "correction" that differs from both the expert mask and the ellipse:
    # the expert mask with its left half removed.
    corrected = gt.copy()
    corrected[:, : int(r.centre[1])] = False
    img2, gt2 = _real(isic_dir, STEMS[1])
    missing = tmp_path / "expert_mask_that_must_not_be_read.png"  # does not exist
    samples = [
        TrainSample(image=img, recist=r, curated_mask=corrected, gt_mask=gt, name="cur"),
        TrainSample(image=img2, recist=recist_from_mask(gt2), gt_mask=missing, name="rep"),
    ]
    failures: list = []
    cfg = FineTuneConfig(steps=10, jitter=0.0, scale_jitter=0.0, flips=False, colour_jitter=0.0)
    cur, rep = finetune._prepare(samples, cfg, failures)
    assert failures == []  # reading ``missing`` would have failed
    assert [c.name for c in cur] == ["cur"] and [p.name for p in rep] == ["rep"]
    assert rep[0].target is None  # teacher target: no mask at all
    assert np.array_equal(cur[0].target, corrected)

    from napari_recist_seg.model import ModelConfig
    from napari_recist_seg.preprocess import crop_box, extract_crop

    pcfg = ModelConfig(input_size=64, n_clusters=2).preprocess
    x, t = finetune._augment(cur[0], np.random.default_rng(0), cfg, pcfg)
    box = crop_box(r, pcfg)
    want = extract_crop(corrected.astype(np.float32), box, 64, pad_mode="constant") > 0.5
    not_gt = extract_crop(gt.astype(np.float32), box, 64, pad_mode="constant") > 0.5
    assert x.shape == (4, 64, 64)
    assert np.array_equal(t, want) and not np.array_equal(t, not_gt)

    weak = FineTuneConfig(steps=10, replay_target="ellipse")
    _, rep_e = finetune._prepare(samples, weak, failures)
    assert failures == [] and rep_e[0].target is not None and rep_e[0].target.sum() > 0


def test_a_curated_mask_without_the_lesion_is_reported_not_learned(isic_dir):
    # An all-zero mask (or another image's) for an image whose RECIST says there is a
    # lesion would teach "no lesion" and pull the calibration's Dice down silently.
    img, gt = _real(isic_dir, STEMS[0])
    r = recist_from_mask(gt)
    other = np.zeros_like(gt)
    other[:20, :20] = True  # a mask far from this lesion
    samples = [TrainSample(image=img, recist=r, curated_mask=gt, name="good"),
               TrainSample(image=img, recist=r, curated_mask=np.zeros_like(gt), name="empty"),
               TrainSample(image=img, recist=r, curated_mask=other, name="elsewhere")]
    failures: list = []
    cur, _ = finetune._prepare(samples, FineTuneConfig(), failures)
    assert [c.name for c in cur] == ["good"]
    assert [(n, "no lesion pixel" in why) for n, why in failures] == [("empty", True), ("elsewhere", True)]


def test_every_batch_mixes_replay_crops(isic_dir):
    from napari_recist_seg.model import ModelConfig

    items = []
    for stem in STEMS:
        img, gt = _real(isic_dir, stem)
        items.append(finetune._Item(img, recist_from_mask(gt), gt, True, stem))
    rep = [finetune._Item(i.plane, i.recist, None, False, i.name) for i in items[:2]]
    pcfg = ModelConfig(input_size=32, n_clusters=2).preprocess
    rng = np.random.default_rng(0)
    for frac, n_cur in ((0.5, 4), (0.25, 6), (0.0, 8)):
        cfg = FineTuneConfig(batch_size=8, replay_fraction=frac)
        x, t, need, k = finetune._batch(items, rep, rng, cfg, pcfg)
        assert x.shape == (8, 4, 32, 32) and t.shape == (8, 1, 32, 32)
        assert k == n_cur and int(need.sum()) == 8 - n_cur
        assert t[~need].sum() > 0 and t[need].sum() == 0  # teacher fills those later
    # No replay images at all: the whole batch is curated.
    _, _, need, k = finetune._batch(items, [], rng, FineTuneConfig(batch_size=8), pcfg)
    assert k == 8 and not need.any()


def test_fine_tune_writes_a_loadable_model_and_keeps_bn_and_cluster_head(isic_dir, tiny_ckpt, tmp_path):
    import torch

    from napari_recist_seg.model import load_checkpoint
    from napari_recist_seg.predict import Predictor

    samples = []
    for k, stem in enumerate(STEMS):
        img, gt = _real(isic_dir, stem)
        samples.append(TrainSample(image=img, recist=recist_from_mask(gt),
                                   curated_mask=gt if k < 2 else None, name=stem))
    out = tmp_path / "ft"
    res = fine_tune(samples, tiny_ckpt, out, FineTuneConfig(steps=3, batch_size=4, device="cpu"))
    assert res.checkpoint is not None and not res.cancelled
    before, _, _ = load_checkpoint(tiny_ckpt, device="cpu")
    after, _, _ = load_checkpoint(out, device="cpu")
    sb, sa = before.state_dict(), after.state_dict()
    changed = {k for k in sb if not torch.equal(sb[k], sa[k])}
    assert any(k.startswith("net.decoder.") for k in changed)
    assert any(k.startswith("net.encoder.") and k.endswith("weight") for k in changed)
    assert not any("classification_head" in k or "running_" in k for k in changed)
    import json

    log = json.loads((out / "train_log.json").read_text())
    assert log["status"] == "finished" and log["kind"] == "finetune"
    assert log["n_curated"] == 2 and log["n_replay"] == 1 and log["replay_source"] == "dataset"
    img, gt = _real(isic_dir, STEMS[0])
    [r] = Predictor.load(out, device="cpu").segment(img, [recist_from_mask(gt)])
    assert r.full_mask(img.shape[:2]).shape == gt.shape


def test_no_curated_mask_is_refused(isic_dir, tiny_ckpt, tmp_path):
    img, gt = _real(isic_dir, STEMS[0])
    with pytest.raises(ValueError, match="curated mask"):
        fine_tune([TrainSample(image=img, recist=recist_from_mask(gt))], tiny_ckpt, tmp_path / "x",
                  FineTuneConfig(steps=1))


def _two_image_dataset(isic_dir: Path, ds: Path) -> Path:
    """A dataset folder with the first 2 of STEMS (real images, expert masks)."""
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    for stem in STEMS[:2]:
        Image.open(isic_dir / "images" / f"{stem}.jpg").save(ds / "images" / f"{stem}.jpg")
        Image.open(isic_dir / "masks" / f"{stem}_segmentation.png").save(ds / "masks" / f"{stem}_segmentation.png")
    return ds


def test_cli_lr_reaches_the_fine_tuning(monkeypatch, isic_dir, tiny_ckpt, tmp_path):
    from napari_recist_seg.cli import build_parser
    from napari_recist_seg.jobs.train import run_train

    ds = _two_image_dataset(isic_dir, tmp_path / "ds")
    seen = {}

    def fake(samples, init, out, cfg, **kw):
        seen["cfg"], seen["n_cur"] = cfg, sum(s.curated_mask is not None for s in samples)
        raise ValueError("stop here")

    monkeypatch.setattr(finetune, "fine_tune", fake)
    args = build_parser().parse_args(["train", str(ds), "--out", str(tmp_path / "o"), "--init", str(tiny_ckpt),
                                      "--curated", str(ds / "masks"), "--lr", "3e-5", "--device", "cpu"])
    from napari_recist_seg.jobs.common import InputError

    with pytest.raises(InputError, match="stop here"):
        run_train(args)
    assert seen["cfg"].lr == pytest.approx(3e-5) and seen["n_cur"] == 2
    assert seen["cfg"].steps == FineTuneConfig().steps
    with pytest.raises(InputError, match="--lr"):
        run_train(build_parser().parse_args(["train", str(ds), "--out", str(tmp_path / "o"), "--init",
                                             str(tiny_ckpt), "--curated", str(ds / "masks"), "--lr", "-1"]))


def test_a_starting_calibration_is_kept_when_the_curated_images_choose_none(isic_dir, tiny_ckpt, tmp_path):
    # The shipped default carries recist_fit 0.75: a fine-tune whose curated images give
    # no calibration (here: 1 image, nothing to cross-validate) must not drop it.
    import json
    import shutil

    start = tmp_path / "start"
    shutil.copytree(tiny_ckpt, start)
    doc = json.loads((start / "config.json").read_text())
    doc["model"].update(recist_fit=0.75, boundary_offset=-0.005)
    (start / "config.json").write_text(json.dumps(doc))
    img, gt = _real(isic_dir, STEMS[0])
    out = tmp_path / "ft"
    res = fine_tune([TrainSample(image=img, recist=recist_from_mask(gt), curated_mask=gt, name=STEMS[0])],
                    start, out, FineTuneConfig(steps=0, device="cpu"))
    assert res.checkpoint is not None
    log = json.loads((out / "train_log.json").read_text())
    assert log["calibration"]["applied"] is False
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["recist_fit"] == 0.75 and model["boundary_offset"] == -0.005


def test_init_default_names_the_shipped_model_unless_a_folder_of_that_name_is_here(
        isic_dir, tmp_path, monkeypatch):
    from napari_recist_seg import finetune
    from napari_recist_seg.cli import build_parser
    from napari_recist_seg.jobs.train import run_train
    from napari_recist_seg.predict import DEFAULT_MODEL_DIR

    ds = _two_image_dataset(isic_dir, tmp_path / "ds")
    seen = []

    def fake(samples, init, out, cfg, **kw):
        seen.append(Path(init))
        raise ValueError("stop here")

    monkeypatch.setattr(finetune, "fine_tune", fake)
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(ds), "--out", str(tmp_path / "o"), "--init", "default", "--curated", str(ds / "masks")]
    from napari_recist_seg.jobs.common import InputError

    with pytest.raises(InputError, match="stop here"):
        run_train(build_parser().parse_args(argv))
    assert seen[-1].resolve() == DEFAULT_MODEL_DIR.resolve()
    (tmp_path / "default").mkdir()  # the user's own folder called "default" wins
    with pytest.raises(InputError, match="stop here"):
        run_train(build_parser().parse_args(argv))
    assert seen[-1] == Path("default")


def test_a_calibration_only_fine_tune_of_the_default_keeps_its_int8_graph(isic_dir, tmp_path):
    # The fine-tuned folder holds the same float graph as the default (same weights):
    # the default's checked INT8 graph is valid for it, so CPU inference stays INT8.
    import json

    from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor

    start = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    if not start.get("int8_graph"):
        pytest.skip("the default model has no INT8 graph")
    img, gt = _real(isic_dir, STEMS[0])
    out = tmp_path / "ft"
    res = fine_tune([TrainSample(image=img, recist=recist_from_mask(gt), curated_mask=gt, name=STEMS[0])],
                    DEFAULT_MODEL_DIR, out, FineTuneConfig(steps=0, device="cpu"))
    assert res.checkpoint is not None
    doc = json.loads((out / "config.json").read_text())
    assert doc["weights_sha256"] == start["weights_sha256"] and doc["graph_sha256"] == start["graph_sha256"]
    assert doc["int8_graph_sha256"] == start["int8_graph_sha256"] and doc["int8_graph_of"] == doc["graph_sha256"]
    assert sorted(f.name for f in out.glob("*.onnx")) == sorted([doc["graph"], doc["int8_graph"]])
    r = recist_from_mask(gt)
    # precision "int8" refuses a folder without a valid INT8 graph (one-line error).
    tuned = Predictor.load(out, device="cpu", precision="int8")
    default = Predictor.load(None, device="cpu", precision="int8")
    for knob in ("logit_bias", "boundary_offset", "recist_fit", "grabcut_blend"):
        setattr(default, knob, getattr(tuned, knob))  # the fine-tune's calibration on both
    np.testing.assert_array_equal(tuned.segment(img, [r])[0].mask, default.segment(img, [r])[0].mask)
