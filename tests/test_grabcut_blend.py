"""The ``grabcut_blend`` calibration knob (napari_recist_seg.grabcut_blend): stored in the
checkpoint, applied by the Predictor, chosen by ``calibrate`` where GrabCut is right.

The hand-made lesions have a dark core and a paler rim on light skin: the stand-in
network (``make_dark_predictor``: pixels darker than mid-grey) finds the core only, while
GrabCut from the RECIST drawn across the whole lesion finds the rim's outline too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.calibration import CalibrationCase, calibrate
from napari_recist_seg.grabcut_blend import blend_masks, grabcut_of
from napari_recist_seg.model import CheckpointError, ModelConfig, load_checkpoint
from napari_recist_seg.predict import Predictor
from napari_recist_seg.recist import recist_from_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _lesion(shape=(160, 176), centre=(80, 88), semi=(28, 40), seed=0):
    """``(image, whole lesion, dark core, RECIST of the whole lesion)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rho = np.sqrt(((yy - centre[0]) / semi[0]) ** 2 + ((xx - centre[1]) / semi[1]) ** 2)
    grey = np.where(rho <= 0.6, 60.0, np.where(rho <= 1.0, 160.0, 225.0))
    grey = grey + rng.normal(0, 6, shape)
    image = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    whole, core = rho <= 1.0, rho <= 0.6
    return image, whole, core, recist_from_mask(whole)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_the_model_finds_the_core_and_grabcut_the_whole_lesion(make_dark_predictor):
    image, whole, core, r = _lesion()
    p = make_dark_predictor()
    [res] = p.segment(image, [r])
    model = res.full_mask(image.shape[:2])
    assert _dice(model, core) > 0.9 and _dice(model, whole) < 0.75
    gc = grabcut_of(image, r)
    assert gc is not None and _dice(gc, whole) > 0.95


def test_the_predictor_applies_the_blend(make_dark_predictor):
    image, whole, core, r = _lesion()
    p = make_dark_predictor()
    areas, dices = [], []
    for w in (0.0, 0.5, 1.0):
        p.grabcut_blend = w
        [res] = p.segment(image, [r])
        m = res.full_mask(image.shape[:2])
        areas.append(int(m.sum()))
        dices.append(_dice(m, whole))
        assert res.measured is not None and res.measured.long_length > 0
    assert areas[0] < areas[1] < areas[2], areas  # the outline moves toward GrabCut's
    assert dices[0] < dices[1] < dices[2] and dices[2] > 0.95, dices
    p.grabcut_blend = 0.0
    # Click mode runs without it (a candidate's circle is not a drawn RECIST).
    p2 = make_dark_predictor()
    p2.grabcut_blend = 1.0
    point = tuple(float(v) for v in r.crossing)
    click = p2.segment_click(image, point).full_mask(image.shape[:2])
    p2.grabcut_blend = 0.0
    assert np.array_equal(click, p2.segment_click(image, point).full_mask(image.shape[:2]))


def test_a_blend_of_half_lies_between_the_two_outlines():
    image, whole, core, r = _lesion()
    half = blend_masks(core, whole, 0.5, r)
    assert core.sum() < half.sum() < whole.sum()
    assert np.all(half[core]) and not np.any(half[~whole])
    assert blend_masks(core, None, 0.5, r) is core  # GrabCut degenerate: the model's mask
    with pytest.raises(ValueError, match="grabcut_blend"):
        blend_masks(core, whole, 1.5, r)


def _with_model_keys(src: Path, dst: Path, **keys) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "config.json").read_text())
    for k, v in keys.items():
        if v is None:
            doc["model"].pop(k, None)
        else:
            doc["model"][k] = v
    (dst / "config.json").write_text(json.dumps(doc))
    return dst


def test_the_key_round_trips_and_is_optional(trained_ckpt, tmp_path):
    cfg = ModelConfig(mode="a1", grabcut_blend=0.25)
    assert ModelConfig.from_dict(cfg.to_dict()).grabcut_blend == 0.25
    old = _with_model_keys(trained_ckpt, tmp_path / "old", grabcut_blend=None)
    assert "grabcut_blend" not in json.loads((old / "config.json").read_text())["model"]
    assert load_checkpoint(old, device="cpu")[1].grabcut_blend == 0.0
    assert Predictor.load(old, device="cpu").grabcut_blend == 0.0
    new = _with_model_keys(trained_ckpt, tmp_path / "new", grabcut_blend=0.75)
    assert load_checkpoint(new, device="cpu")[1].grabcut_blend == 0.75
    for bad in (1.5, -0.25, "0.5"):
        with pytest.raises(CheckpointError, match="grabcut_blend"):
            Predictor.load(_with_model_keys(trained_ckpt, tmp_path / f"bad{bad}", grabcut_blend=bad),
                           device="cpu")


def test_a_stored_blend_is_applied_on_the_onnx_and_torch_paths(trained_ckpt, trained_eval_stems,
                                                                isic_dir, tmp_path):
    base = Predictor.load(trained_ckpt, device="cpu")
    ckpt = _with_model_keys(trained_ckpt, tmp_path / "gc", grabcut_blend=1.0)
    stems = trained_eval_stems[:3]
    for kw in ({}, {"optimize": False}):
        p = Predictor.load(ckpt, device="cpu", **kw)
        assert p.grabcut_blend == 1.0
        closer = 0
        for stem in stems:
            img = np.asarray(Image.open(isic_dir / "images" / f"{stem}.jpg").convert("RGB"))
            gt = np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0
            r = recist_from_mask(gt)
            gc = grabcut_of(img, r)
            [a], [b] = base.segment(img, [r]), p.segment(img, [r])
            ma, mb = a.full_mask(img.shape[:2]), b.full_mask(img.shape[:2])
            if gc is not None:
                closer += _dice(mb, gc) > max(_dice(ma, gc), 0.97)
        assert closer >= 2, (kw, closer)


def _cases(truth: str) -> list[CalibrationCase]:
    out = []
    for i, (centre, semi) in enumerate((((80, 88), (28, 40)), ((70, 90), (22, 36)),
                                        ((84, 80), (30, 34)), ((78, 92), (20, 44)))):
        image, whole, core, r = _lesion(centre=centre, semi=semi, seed=i)
        out.append(CalibrationCase(f"c{i}", image, [r], whole if truth == "whole" else core))
    return out


def test_calibrate_chooses_grabcut_where_it_is_right_and_not_where_it_is_wrong(make_dark_predictor):
    p = make_dark_predictor()
    right = calibrate(p, _cases("whole"), biases=(0.0,), shrink=0.0)
    assert right.applied and right.calibration.grabcut_blend >= 0.75, right
    assert right.dice_cv > right.dice_before + 0.1
    shrunk = calibrate(p, _cases("whole"), biases=(0.0,), offsets=(0.0,), fits=(0.0,))
    assert shrunk.applied and shrunk.calibration.grabcut_blend == 0.25  # 4 images: 4/14 of the way
    wrong = calibrate(p, _cases("core"), biases=(0.0,), shrink=0.0)
    assert wrong.calibration.grabcut_blend == 0.0 and wrong.chosen.grabcut_blend == 0.0, wrong
    assert p.grabcut_blend == 0.0  # the predictor is left as it was
    # A start that carries a blend keeps it as "before" and is moved from it.
    p.grabcut_blend = 0.5
    start = calibrate(p, _cases("whole"), biases=(0.0,), offsets=(0.0,), fits=(0.0,), shrink=0.0)
    assert start.applied and start.calibration.grabcut_blend == 1.0
    assert start.dice_before > right.dice_before  # "before" is the start's own blend of 0.5
    assert p.grabcut_blend == 0.5


def test_cli_fine_tune_stores_a_blend_when_the_curated_masks_follow_grabcut(
        trained_ckpt, trained_eval_stems, isic_dir, tmp_path, capsys):
    from napari_recist_seg.cli import main

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    rows = ["image,lesion,slice,long_x1,long_y1,long_x2,long_y2,short_x1,short_y1,short_x2,short_y2"]
    n = 0
    for stem in trained_eval_stems:
        img = np.asarray(Image.open(isic_dir / "images" / f"{stem}.jpg").convert("RGB"))
        r = recist_from_mask(np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0)
        gc = grabcut_of(img, r)  # a clinic whose outlines are GrabCut's from its RECIST
        if gc is None:
            continue
        r = recist_from_mask(gc)
        shutil.copy(isic_dir / "images" / f"{stem}.jpg", ds / "images")
        Image.fromarray(gc.astype(np.uint8) * 255).save(ds / "masks" / f"{stem}_segmentation.png")
        (a, b), (c, d) = r.long_axis, r.short_axis
        rows.append(f"{stem}.jpg,1,,{a[1]},{a[0]},{b[1]},{b[0]},{c[1]},{c[0]},{d[1]},{d[0]}")
        n += 1
        if n == 4:
            break
    (ds / "recist.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "ft"
    code = main(["train", str(ds), "--init", str(trained_ckpt), "--curated", str(ds / "masks"),
                 "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "GrabCut blend" in err, err
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["grabcut_blend"] > 0, err
    assert Predictor.load(out, device="cpu").grabcut_blend == model["grabcut_blend"]


def test_the_calibration_table_scores_what_the_predictor_gives(make_dark_predictor):
    from napari_recist_seg.calibration import dice_grid

    p = make_dark_predictor()
    cases = _cases("whole")[:2]
    blends, fits, offsets = (0.0, 0.5, 1.0), (0.0, 1.0), (-0.02, 0.0, 0.02)
    table = dice_grid(p, cases, (0.0,), blends, fits, offsets)
    for q, w in enumerate(blends):
        for m, fit in ((0, 0.0), (1, 1.0)):
            for k, o in ((0, -0.02), (2, 0.02)):
                p.grabcut_blend, p.recist_fit, p.boundary_offset = w, fit, o
                for i, c in enumerate(cases):
                    [res] = p.segment(c.image, c.recists)
                    got = _dice(res.full_mask(c.image.shape[:2]), c.mask)
                    assert table[i, 0, q, m, k] == pytest.approx(got, abs=1e-9), (w, fit, o, i)
    p.grabcut_blend = p.recist_fit = p.boundary_offset = 0.0
