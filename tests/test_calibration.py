"""Calibration to a clinic's annotation style (napari_recist_seg.calibration): chosen on
curated masks, stored in the checkpoint, applied by the Predictor.

Whether it *helps* on other images is measured by benchmarks/finetune_gain.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_recist_seg.calibration import CalibrationCase, calibrate, choose
from napari_recist_seg.model import CheckpointError
from napari_recist_seg.predict import Predictor
from napari_recist_seg.recist import Recist, recist_from_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _cases(isic_dir: Path, stems) -> list[tuple[str, np.ndarray, object]]:
    out = []
    for stem in stems:
        img = np.asarray(Image.open(isic_dir / "images" / f"{stem}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0
        out.append((stem, img, recist_from_mask(gt)))
    return out


def _with_model_keys(src: Path, dst: Path, **keys) -> Path:
    """A copy of checkpoint ``src`` whose config.json model section has ``keys`` set
    (value None: removed, as in a checkpoint written before the keys existed)."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "config.json").read_text())
    for k, v in keys.items():
        if v is None:
            doc["model"].pop(k, None)
        else:
            doc["model"][k] = v
    (dst / "config.json").write_text(json.dumps(doc))
    return dst


def _masks(predictor, cases) -> list[np.ndarray]:
    return [predictor.segment(img, [r])[0].full_mask(img.shape[:2]) for _, img, r in cases]


def test_a_known_logit_bias_is_recovered(trained_ckpt, trained_eval_stems, isic_dir):
    cases = _cases(isic_dir, trained_eval_stems[:4])
    p = Predictor.load(trained_ckpt, device="cpu")
    p.refine = "none"
    p.logit_bias = 1.0
    styled = _masks(p, cases)  # a "clinic" whose masks are the model's at bias +1
    p.logit_bias = 0.0
    plain = _masks(p, cases)
    assert sum(m.sum() for m in styled) > sum(m.sum() for m in plain)
    cc = [CalibrationCase(s, img, [r], m) for (s, img, r), m in zip(cases, styled)]
    rep = calibrate(p, cc, offsets=(0.0,), fits=(0.0,), shrink=0.0)
    assert rep.applied and rep.calibration.logit_bias == pytest.approx(1.0)
    assert rep.dice_in_sample == pytest.approx(1.0) and rep.dice_cv > rep.dice_before
    assert p.logit_bias == 0.0  # the predictor is left as it was
    # Shrunk toward 0 for a small set: 4 images, shrink 4 -> half of it.
    half = calibrate(p, cc, offsets=(0.0,), fits=(0.0,), shrink=4.0)
    assert half.calibration.logit_bias == pytest.approx(0.5)


def test_a_known_boundary_offset_is_recovered(trained, trained_eval_stems, isic_dir):
    cases = _cases(isic_dir, trained_eval_stems[:4])
    plain = _masks(trained, cases)
    # A clinic that draws 4% of the long axis outside the model's outline (exact
    # Euclidean dilation, not the calibration's own code).
    styled = [ndimage.distance_transform_edt(~m) <= 0.04 * r.long_length
              for m, (_, _, r) in zip(plain, cases)]
    cc = [CalibrationCase(s, img, [r], m) for (s, img, r), m in zip(cases, styled)]
    rep = calibrate(trained, cc, biases=(0.0,), fits=(0.0,), shrink=0.0)
    assert rep.applied and rep.calibration.boundary_offset == pytest.approx(0.04, abs=0.0051)
    assert rep.dice_cv > rep.dice_before + 0.02


def _fitted(mask: np.ndarray, recist) -> np.ndarray:
    """``mask`` with its outline moved until its axes match ``recist`` (full-resolution
    axes, exact Euclidean distances: not the calibration's own code)."""
    m = recist_from_mask(mask)
    px = ((recist.long_length - m.long_length) + (recist.short_length - m.short_length)) / 4
    if px >= 0:
        return ndimage.distance_transform_edt(~mask) <= px
    return ndimage.distance_transform_edt(mask) > -px


def test_a_known_recist_fit_is_recovered(trained, trained_eval_stems, isic_dir):
    # A clinic whose outlines pass where its RECIST says: each curated mask is the
    # model's own outline moved until the measured axes match the drawn ones (by a
    # different amount per lesion, which no single offset in units of L reproduces).
    cases = _cases(isic_dir, trained_eval_stems[:6])
    plain = _masks(trained, cases)
    styled = [_fitted(m, r) for m, (_, _, r) in zip(plain, cases)]
    moved = sum(abs(int(a.sum()) - int(b.sum())) for a, b in zip(plain, styled))
    assert moved > 0.03 * sum(m.sum() for m in plain)
    cc = [CalibrationCase(s, img, [r], m) for (s, img, r), m in zip(cases, styled)]
    rep = calibrate(trained, cc, biases=(0.0,), shrink=0.0)
    assert rep.applied and rep.calibration.recist_fit == 1.0
    assert abs(rep.calibration.boundary_offset) <= 0.005
    offset_only = calibrate(trained, cc, biases=(0.0,), fits=(0.0,), shrink=0.0)
    assert rep.dice_cv > offset_only.dice_cv + 0.005 and rep.dice_in_sample > 0.97


def test_no_gain_no_calibration(trained, trained_eval_stems, isic_dir):
    cases = _cases(isic_dir, trained_eval_stems[:3])
    own = _masks(trained, cases)  # the curated masks are the model's own: nothing to fix
    cc = [CalibrationCase(s, img, [r], m) for (s, img, r), m in zip(cases, own)]
    rep = calibrate(trained, cc)
    assert not rep.applied and rep.calibration.is_identity and rep.dice_before == pytest.approx(1.0)
    one = calibrate(trained, cc[:1])
    assert not one.applied and "fewer than 2" in one.reason


def test_choose_ties_go_to_no_change():
    table = np.ones((3, 3, 2, 3))
    assert choose(table, (-1.0, 0.0, 1.0), (-0.01, 0.0, 0.01), fits=(0.0, 0.5)) == (1, 0, 1)


def test_choose_shrinks_every_knob():
    table = np.zeros((4, 1, 5, 3))
    table[:, 0, 4, 2] = 1.0  # best: fit 1.0, offset +0.02
    fits, offsets = (0.0, 0.25, 0.5, 0.75, 1.0), (-0.02, 0.0, 0.02)
    # x 0.5: fit 0.5; offset 0.01 lies halfway between 0 and 0.02 (the tie goes to 0)
    assert choose(table, (0.0,), offsets, shrink=4.0, fits=fits) == (0, 2, 1)
    assert choose(table, (0.0,), offsets, shrink=0.0, fits=fits) == (0, 4, 2)


def test_predictor_applies_a_stored_recist_fit(trained_ckpt, trained_eval_stems, isic_dir, tmp_path):
    def gap(mask, r):  # drawn minus measured, both axes (full resolution)
        m = recist_from_mask(mask)
        return (r.long_length - m.long_length) + (r.short_length - m.short_length)

    cases = _cases(isic_dir, trained_eval_stems[:4])
    base = Predictor.load(trained_ckpt, device="cpu")
    ckpt = _with_model_keys(trained_ckpt, tmp_path / "fit", recist_fit=1.0)
    for kw in ({}, {"optimize": False}):  # the stored ONNX graph, and eager PyTorch
        p = Predictor.load(ckpt, device="cpu", **kw)
        assert p.recist_fit == 1.0
        before, after = [], []
        for _, img, r in cases:
            [a], [b] = base.segment(img, [r]), p.segment(img, [r])
            before.append(gap(a.full_mask(img.shape[:2]), r))
            after.append(gap(b.full_mask(img.shape[:2]), r))
        # The outlines move until the measured axes add up to the drawn ones.
        assert np.abs(after).mean() < 0.3 * np.abs(before).mean(), (kw, before, after)


def test_old_checkpoint_without_the_keys_predicts_identically(trained_ckpt, trained_eval_stems, isic_dir,
                                                               tmp_path):
    cases = _cases(isic_dir, trained_eval_stems[:3])
    old = _with_model_keys(trained_ckpt, tmp_path / "old", logit_bias=None, boundary_offset=None,
                           recist_fit=None)
    assert "logit_bias" not in json.loads((old / "config.json").read_text())["model"]
    p_old = Predictor.load(old, device="cpu")
    p_new = Predictor.load(_with_model_keys(trained_ckpt, tmp_path / "zero", logit_bias=0.0,
                                            boundary_offset=0.0, recist_fit=0.0), device="cpu")
    assert p_old.logit_bias == 0.0 and p_old.boundary_offset == 0.0 and p_old.recist_fit == 0.0
    for _, img, r in cases:
        [a], [b] = p_old.segment(img, [r]), p_new.segment(img, [r])
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.probability, b.probability)


@pytest.mark.parametrize("key, value", [("logit_bias", 9.0), ("boundary_offset", -0.5),
                                        ("logit_bias", "1"), ("boundary_offset", float("nan")),
                                        ("recist_fit", -0.5), ("recist_fit", 3.0)])
def test_checkpoint_checks_refuse_an_out_of_range_calibration(trained_ckpt, tmp_path, key, value):
    bad = _with_model_keys(trained_ckpt, tmp_path / "bad", **{key: value})
    with pytest.raises(CheckpointError, match=key):
        Predictor.load(bad, device="cpu")


def test_cli_fine_tune_on_a_tiny_curated_set_writes_the_calibration_and_report(
        trained_ckpt, trained_eval_stems, isic_dir, tmp_path, capsys):
    from napari_recist_seg.cli import main

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    p = Predictor.load(trained_ckpt, device="cpu")
    rows = ["image,lesion,slice,long_x1,long_y1,long_x2,long_y2,short_x1,short_y1,short_x2,short_y2"]
    for stem, img, r in _cases(isic_dir, trained_eval_stems[:3]):
        # The user drew the RECIST on the lesion, then corrected the model's masks to
        # outlines 5% of L looser (the clinic's style).
        m = _masks(p, [(stem, img, r)])[0]
        loose = ndimage.distance_transform_edt(~m) <= 0.05 * r.long_length
        shutil.copy(isic_dir / "images" / f"{stem}.jpg", ds / "images")
        Image.fromarray(loose.astype(np.uint8) * 255).save(ds / "masks" / f"{stem}_segmentation.png")
        (a, b), (c, d) = r.long_axis, r.short_axis
        rows.append(f"{stem}.jpg,1,,{a[1]},{a[0]},{b[1]},{b[0]},{c[1]},{c[0]},{d[1]},{d[0]}")
    (ds / "recist.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "ft"
    code = main(["train", str(ds), "--init", str(trained_ckpt), "--curated", str(ds / "masks"),
                 "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "calibration on 3 curated image(s)" in err and "leave-one-image-out" in err, err
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["boundary_offset"] >= 0.01 and "logit_bias" in model, err
    log = json.loads((out / "train_log.json").read_text())
    cal = log["calibration"]
    assert cal["applied"] and cal["n_images"] == 3 and len(cal["per_image"]) == 3
    assert cal["dice_cv"] > cal["dice_before"]
    assert cal["calibration"]["boundary_offset"] == pytest.approx(model["boundary_offset"])


def test_the_fit_moves_an_outline_at_most_a_tenth_of_the_long_axis():
    from napari_recist_seg.refine import axis_gap

    # A 4 px fragment under a 160 px RECIST (a measurement gone wrong): the whole
    # outline would move about 68 px; it moves 0.1 L = 16 px.
    m = np.zeros((200, 200), bool)
    m[98:102, 98:102] = True
    r = Recist([[100, 20], [100, 180]], [[40, 100], [160, 100]])
    assert axis_gap(m, r) == pytest.approx(16.0)
    assert axis_gap(np.zeros_like(m), r) == 0.0  # nothing to measure: no move
