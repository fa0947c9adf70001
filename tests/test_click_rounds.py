"""Click mode's RECIST rounds with the shipped default model, on real ISIC images.

One click at the lesion centre: the RECIST chains of the best candidates (two batched
rounds, the one that stands out most run on) must beat the single-pass candidate; the
chosen chain stops when its RECIST stops moving; a mask covering most of the image is
not chosen; a click on plain skin gives a result or a clear "no lesion" error, never a
crash.
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
        one = predictor.segment_click(image, centre, refine=False)
        many = predictor.segment_click(image, centre)
        single.append(_dice(one.full_mask(mask.shape), mask))
        iterated.append(_dice(many.full_mask(mask.shape), mask))
    # These four were picked as examples of the two-sided contrast rule (+0.05 here);
    # the ring-only rule (chosen on 80 other val ids, +0.04 there on the 3x clinic
    # proxy) gained 0.022 on them, one case -0.008; the chains (two rounds of six,
    # chosen on val ids 120:200) gain 0.047: 0.894 -> 0.942.
    assert all(b > a - 0.02 for a, b in zip(single, iterated)), (single, iterated)
    assert np.mean(iterated) > np.mean(single) + 0.015, (single, iterated)


def test_the_chains_find_the_whole_lesion_not_its_dark_core(predictor, monkeypatch):
    # A val lesion with a dark core inside a lighter rim. The one-round rules chose
    # the core (two-sided contrast - 2 x shift: 0.11) or half the lesion (ring-only:
    # 0.68); after two rounds of six chains the two-sided contrast finds the whole
    # lesion, and the ring-only judgement of the same chains does not.
    stem = "ISIC_0003728"
    assert stem in json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())["val"]
    image, mask, centre = _case(stem)
    new = _dice(predictor.segment_click(image, centre).full_mask(mask.shape), mask)
    monkeypatch.setattr(click_mod, "CLICK_RING_ONLY", True)
    ring = _dice(predictor.segment_click(image, centre).full_mask(mask.shape), mask)
    assert new > 0.8 and ring < new - 0.1, (new, ring)  # 0.865, 0.687


def test_a_chain_covering_most_of_the_image_is_not_chosen(predictor, monkeypatch):
    # A faint val lesion: one chain grows to ~90 % of the 256 px image and stands out
    # most (its ring is the image border); such a mask found no lesion border.
    stem = "ISIC_0013567"
    assert stem in json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())["val"]
    image, mask, centre = _case(stem)
    res = predictor.segment_click(image, centre)
    assert res.mask.sum() <= click_mod.CLICK_AREA_LIMIT * mask.size
    capped = _dice(res.full_mask(mask.shape), mask)
    monkeypatch.setattr(click_mod, "CLICK_AREA_LIMIT", 1.0)
    big = predictor.segment_click(image, centre)
    assert big.mask.sum() > 0.6 * mask.size
    uncapped = _dice(big.full_mask(mask.shape), mask)
    assert capped > 0.5 and uncapped < 0.3, (capped, uncapped)  # 0.63 vs 0.09


def test_the_chosen_chain_runs_until_its_recist_converges(predictor, monkeypatch):
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
        res = predictor.segment_click(image, centre, rounds=10)
        # candidates, a batch per chain round, then one crop per later round of the
        # chosen chain: it stops (converged) well before 10 rounds.
        n = click_mod.CLICK_SELECT_ROUND
        assert len(calls[0]) == len(click_mod.click_scales(image.shape[:2]))
        assert all(1 < len(c) <= click_mod.CLICK_TOP_K for c in calls[1 : 1 + n])
        assert all(len(c) == 1 for c in calls[1 + n :])
        assert 1 + n <= len(calls) < 1 + 10, len(calls)
        assert _dice(res.full_mask(mask.shape), mask) > 0.9
        # The result is the last round, and its RECIST no longer moves (or the round
        # after it lost the click).
        def same(r: LesionResult) -> bool:
            return r.mask.shape == res.mask.shape and np.array_equal(r.mask, res.mask)

        if any(same(r) for r in calls[-1]):
            mine = next(r for r in calls[-1] if same(r))
            assert click_mod.recist_shift(mine.recist, mine.measured) < click_mod.CLICK_RECIST_TOLERANCE
        else:
            assert len(calls) > 1 + n and any(same(r) for r in calls[-2])
            assert not click_mod._holds(calls[-1][0], (int(round(centre[0])), int(round(centre[1]))))


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
