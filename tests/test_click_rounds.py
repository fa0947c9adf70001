"""Click mode's RECIST rounds with the shipped default model, on real ISIC images.

One click at the lesion centre: the first RECIST round of the best candidates (chosen
by contrast and RECIST consistency) and the rounds after it must beat the single-pass
candidate; the iteration stops when the RECIST stops moving; a click on plain skin
gives a result or a clear "no lesion" error, never a crash. The rounds rule is
``chooser="rounds"`` (the default before ``click_rank``); the plain-skin click runs the
default chooser.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg import click as click_mod
from napari_recist_seg.click_check import click_problem
from napari_recist_seg.postprocess import LesionResult
from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor
from napari_recist_seg.recist import RecistError

# Validation ids of the default model (split.json; never trained on) where the one
# pass picks a poorer scale: 256 px single pass 0.87-0.92 Dice, rounds 0.91-0.96.
STEMS = ["ISIC_0000387", "ISIC_0000421", "ISIC_0000473", "ISIC_0000496"]


_ISIC: list = []


@pytest.fixture(scope="module")
def predictor(isic_dir) -> Predictor:
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    _ISIC[:] = [isic_dir]
    return Predictor.load(None, device="cpu")


def _case(stem: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    image = np.asarray(Image.open(_ISIC[0] / "images" / f"{stem}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(_ISIC[0] / "masks" / f"{stem}_segmentation.png")) > 0
    rows, cols = np.nonzero(mask)
    return image, mask, (float(rows.mean()), float(cols.mean()))


def _stems() -> list[str]:
    val = set(json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())["val"])
    assert set(STEMS) <= val  # held out from training
    return STEMS


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_iterated_click_beats_the_single_pass(predictor):
    single, iterated = [], []
    for stem in _stems():
        image, mask, centre = _case(stem)
        one = predictor.segment_click(image, centre, refine=False, chooser="rounds")
        many = predictor.segment_click(image, centre, chooser="rounds")
        single.append(_dice(one.full_mask(mask.shape), mask))
        iterated.append(_dice(many.full_mask(mask.shape), mask))
    # These four were picked as examples of the two-sided contrast rule (+0.05 here);
    # the ring-only rule (chosen on 80 other val ids, +0.04 there on the 3x clinic
    # proxy) gains 0.022 on them, one case -0.008.
    assert all(b > a - 0.02 for a, b in zip(single, iterated)), (single, iterated)
    assert np.mean(iterated) > np.mean(single) + 0.015, (single, iterated)


def test_first_round_is_judged_against_the_skin_around_it(predictor, monkeypatch):
    # A val lesion with a dark core inside a lighter rim: the two-sided contrast
    # (mean difference over inside + ring spreads) prefers the core, whose inside is
    # uniform; judged by the ring's spread alone the whole lesion wins.
    stem = "ISIC_0003728"
    assert stem in json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())["val"]
    image, mask, centre = _case(stem)
    new = _dice(predictor.segment_click(image, centre, chooser="rounds").full_mask(mask.shape), mask)
    monkeypatch.setattr(click_mod, "CLICK_RING_ONLY", False)
    monkeypatch.setattr(click_mod, "CLICK_SHIFT_WEIGHT", 2.0)
    old = _dice(predictor.segment_click(image, centre, chooser="rounds").full_mask(mask.shape), mask)
    assert old < 0.3 and new > 0.6, (old, new)  # 0.11 -> 0.68


def test_the_iteration_stops_when_the_recist_converges(predictor, monkeypatch):
    calls: list[list[LesionResult]] = []
    run = predictor._run

    def counting(*args, **kwargs):
        out = run(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(predictor, "_run", counting)
    for stem in _stems():
        image, mask, centre = _case(stem)
        calls.clear()
        res = predictor.segment_click(image, centre, rounds=10, chooser="rounds")
        # candidates, the first round's batch, then one crop per later round: it
        # stops (converged or no longer converging) well before 10 rounds.
        assert len(calls[1]) == click_mod.CLICK_TOP_K
        assert all(len(c) == 1 for c in calls[2:])
        assert 2 <= len(calls) <= 6, len(calls)
        assert _dice(res.full_mask(mask.shape), mask) > 0.85
        # The result is the most self-consistent round seen.
        shifts = [click_mod.recist_shift(c[0].recist, c[0].measured) for c in calls[2:]]
        final = [c[0] for c in calls[2:] if c[0].mask.shape == res.mask.shape
                 and np.array_equal(c[0].mask, res.mask)]
        if final:
            assert click_mod.recist_shift(final[0].recist, final[0].measured) <= min(shifts)


def test_a_click_on_plain_skin_is_a_result_or_a_clear_error(predictor):
    for stem in _stems()[:4]:
        image, mask, _ = _case(stem)
        # The image corner farthest from the lesion (plain skin).
        rows, cols = np.nonzero(~mask)
        far = np.argmax((rows - np.nonzero(mask)[0].mean()) ** 2 + (cols - np.nonzero(mask)[1].mean()) ** 2)
        point = (float(rows[far]), float(cols[far]))
        try:
            res = predictor.segment_click(image, point)
        except RecistError as exc:
            assert "no lesion found" in str(exc)
            continue
        full = res.full_mask(mask.shape)
        assert full[int(point[0]), int(point[1])]
        problem = click_problem(image, res, predictor.preprocess)
        assert problem is None or isinstance(problem, str)
