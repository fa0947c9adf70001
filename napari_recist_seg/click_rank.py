"""Click mode with a learned chooser: every step of a few RECIST chains, one linear score.

The circular candidates of :mod:`~napari_recist_seg.click` are segmented as there; the
:data:`RANK_TOP_K` best (fitting their crop first, then by image contrast) each start a
chain: the RECIST measured on its mask is segmented again, :data:`RANK_ROUNDS` times, in
one batch per round. Every step of every chain (the candidate itself included) is then
scored by a linear function of figures segment_click has without ground truth (contrast
with the ring of image around the mask, the network's confidence along the outline,
size over the image side, shape, RECIST shift, round, the chain's rank) and the best
step is returned. The weights (:data:`RANK_WEIGHTS`) were fitted offline on validation
ids only (``benchmarks/click_rank_fit.py``, a softmax over each click's steps towards the
steps of highest Dice); numpy and OpenCV only at run time. :func:`segment_click` (what
:meth:`~napari_recist_seg.predict.Predictor.segment_click` calls) runs it for the shipped
model and the rule of :func:`napari_recist_seg.click.segment_click` for other models
(:func:`default_chooser`); ``chooser`` picks either.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from napari_recist_seg.click import (
    _CLICK_BORDER_LIMIT,
    _border_leak,
    _click_features,
    _holds,
    click_candidates,
    click_predictor,
    recist_shift,
)
from napari_recist_seg.click import segment_click as _rounds_click
from napari_recist_seg.postprocess import LesionResult
from napari_recist_seg.recist import RecistError, snap

__all__ = ["CLICK_CHOOSERS", "FITTED_MODEL_DIR", "RANK_FEATURES", "RANK_ROUNDS", "RANK_TOP_K", "RANK_WEIGHTS",
           "choose_step", "default_chooser", "segment_click", "segment_click_ranked", "step_vector"]

#: Chains started (the best candidates).
RANK_TOP_K = 6
#: RECIST rounds per chain (each one batch over the chains still alive).
RANK_ROUNDS = 2
#: The score of a step: ``sum(weight * feature)`` (features: :func:`step_vector`), fitted
#: on the 4 validation dumps of docs/RESULTS.md (``benchmarks/click_rank_fit.py``, lam 0.3,
#: tau 0.02): the outline confidence, the contrast and a full, round shape weigh most.
RANK_WEIGHTS: dict[str, float] = {
    "r0": -0.0602, "r1": -0.0498, "rank": -0.6356, "logL": 0.1044, "logW": 0.0866, "fill": 0.6218,
    "aspect": -1.3255, "contrast": 0.8997, "ring": 0.1113, "band": 0.5013, "conf": 5.0647,
    "mean_prob": 1.3719, "shift": -0.219, "logd": 0.0891, "prevshift": -0.0225, "bigarea": -0.3172,
}
RANK_FEATURES: tuple[str, ...] = tuple(RANK_WEIGHTS)


def step_vector(step: Mapping[str, float], *, round_index: int, rank: int, diameter: float,
                prev_shift: float | None, plane_shape: Sequence[int]) -> np.ndarray:
    """The features of one step, in :data:`RANK_FEATURES` order.

    Parameters
    ----------
    step : mapping
        The step's figures (:func:`step_figures`): ``L``, ``W``, ``area``, ``contrast``,
        ``ring``, ``band``, ``conf``, ``mean_prob``, ``shift``.
    round_index : int
        0 for the circular candidate, then 1, 2, ... for its RECIST rounds.
    rank : int
        The chain's place among the :data:`RANK_TOP_K` candidates (0 = best).
    diameter : float
        The candidate circle's diameter (px).
    prev_shift : float or None
        The previous round's RECIST shift (``None`` for the candidate and round 1).
    plane_shape : (rows, cols)
        Sizes are over the longer image side.

    Returns
    -------
    np.ndarray
        ``float64`` vector of :data:`RANK_FEATURES`.
    """
    h, w = int(plane_shape[0]), int(plane_shape[1])
    side = float(max(h, w))
    length, width = float(step["L"]), max(float(step["W"]), 1e-3)
    f = {
        "r0": float(round_index == 0), "r1": float(round_index == 1),
        "rank": rank / max(1, RANK_TOP_K - 1),
        "logL": np.log(max(length, 1e-3) / side), "logW": np.log(width / side),
        "fill": float(step["area"]) / (np.pi / 4.0 * max(length, 1e-3) * width),
        "aspect": width / max(length, 1e-3),
        "contrast": step["contrast"], "ring": step["ring"], "band": step["band"],
        "conf": step["conf"], "mean_prob": step["mean_prob"],
        "shift": min(float(step["shift"]), 1.0) if round_index > 0 else 0.0,
        "logd": np.log(max(diameter, 1e-3) / side),
        "prevshift": min(float(prev_shift), 1.0) if prev_shift is not None else 0.0,
        "bigarea": float(float(step["area"]) > 0.6 * h * w),
    }
    return np.array([float(f[n]) for n in RANK_FEATURES])


def choose_step(table: np.ndarray, weights: Mapping[str, float] | None = None) -> int:
    """Index of the row of ``table`` (steps x :data:`RANK_FEATURES`) with the highest
    score (the first of equal ones).

    >>> t = np.zeros((2, len(RANK_FEATURES))); t[1, RANK_FEATURES.index("conf")] = 1.0
    >>> choose_step(t, {"conf": 1.0})
    1
    """
    w = RANK_WEIGHTS if weights is None else weights
    coef = np.array([float(w.get(n, 0.0)) for n in RANK_FEATURES])
    return int(np.argmax(np.asarray(table, dtype=float) @ coef))


def _stats(win: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean vector and summed-variance spread (``sqrt(sum var)``) of ``win`` on ``where``."""
    mean, sd = cv2.meanStdDev(win, mask=where.astype(np.uint8))
    return mean.ravel(), float(np.sqrt((sd.ravel() ** 2).sum()))


def mask_in_window(shape: tuple[int, int], mask: np.ndarray, offset: tuple[int, int],
                   width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``mask`` (placed at ``offset`` in an image of ``shape``) inside the window of the
    image ``width`` px around its box: the window's boolean mask and ``(r0, c0, r1, c1)``."""
    fh, fw = shape
    r0, c0 = offset
    a0, b0 = max(0, r0 - width), max(0, c0 - width)
    a1, b1 = min(fh, r0 + mask.shape[0] + width), min(fw, c0 + mask.shape[1] + width)
    local = np.zeros((a1 - a0, b1 - b0), np.uint8)
    mr0, mc0 = r0 - a0, c0 - b0
    sub = mask[max(0, -mr0): local.shape[0] - mr0, max(0, -mc0): local.shape[1] - mc0]
    local[max(0, mr0): max(0, mr0) + sub.shape[0], max(0, mc0): max(0, mc0) + sub.shape[1]] = sub
    return local.astype(bool), (a0, b0, a1, b1)


def _contrasts(feats: np.ndarray, mask: np.ndarray, offset: tuple[int, int], width: int) -> dict[str, float]:
    """How a mask stands out from the ``width`` px ring of image around it: ``contrast``
    (:func:`click._region_contrast`: mean difference over both spreads), ``ring`` (over
    the ring's spread only) and ``band`` (the band just inside the outline against the
    ring), in one pass (OpenCV statistics: as fast at 768 px as the network's crops)."""
    inside, (a0, b0, a1, b1) = mask_in_window(feats.shape[:2], mask, offset, width)
    zero = {"contrast": 0.0, "ring": 0.0, "band": 0.0}
    if not inside.any():
        return zero
    win = np.ascontiguousarray(feats[a0:a1, b0:b1])
    outside = (~inside).astype(np.uint8)
    precise = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ring_p = (precise > 0) & (precise <= width)
    dout = cv2.distanceTransform(outside, cv2.DIST_L2, 3)
    din = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
    ring, band = (dout > 0) & (dout <= width), inside & (din <= width)
    m_in, sd_in = _stats(win, inside)
    out = dict(zero)
    if ring_p.any():
        m_rp, sd_rp = _stats(win, ring_p)
        out["contrast"] = float(np.linalg.norm(m_in - m_rp)) / (sd_rp + sd_in + 1e-6)
    if ring.any() and band.any():
        m_out, sd_out = _stats(win, ring)
        m_band, sd_band = _stats(win, band)
        out["ring"] = float(np.linalg.norm(m_in - m_out)) / (sd_out + 1e-6)
        out["band"] = float(np.linalg.norm(m_band - m_out)) / (sd_band + sd_out + 1e-6)
    return out


def outline_confidence(res: LesionResult, width: int) -> float:
    """Mean ``|2p - 1|`` of the probability within ``width`` px of the mask outline."""
    inside = res.mask.astype(np.uint8)
    din = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    dout = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3)
    band = ((inside > 0) & (din <= width)) | ((inside == 0) & (dout <= width))
    if not band.any():
        return 0.0
    return float(np.abs(2.0 * res.probability[band] - 1.0).mean())


def step_figures(feats: np.ndarray, res: LesionResult, prompt: Any, cfg: Any,
                 plane_shape: tuple[int, int]) -> dict[str, float]:
    """The figures :func:`step_vector` reads, of one result that holds the click
    (``feats``: :func:`click._click_features` of the whole plane; ``prompt``: the RECIST
    it was prompted with)."""
    length = float(res.measured.long_length)
    width = max(2, int(round(0.1 * length)))
    return {
        "L": length, "W": float(res.measured.short_length), "area": float(res.mask.sum()),
        **_contrasts(feats, res.mask, res.offset, width), "conf": outline_confidence(res, max(1, width // 2)),
        "mean_prob": float(res.probability[res.mask].mean()),
        "shift": recist_shift(prompt, res.measured),
        "leak": _border_leak(res.probability, res.recist, cfg, plane_shape),
    }


def _rank_figures(feats: np.ndarray, res: LesionResult, cfg: Any, plane_shape: tuple[int, int]) -> dict:
    """The figures a candidate is ranked by (those of :func:`step_figures`)."""
    width = max(2, int(round(0.1 * float(res.measured.long_length))))
    return {"contrast": _contrasts(feats, res.mask, res.offset, width)["contrast"],
            "leak": _border_leak(res.probability, res.recist, cfg, plane_shape)}


def _ranked_chains(figures: Sequence[dict | None]) -> list[int]:
    """The :data:`RANK_TOP_K` candidates that hold the click, best first: fitting their
    crop first, then by contrast (then the smaller circle)."""
    idx = [i for i, f in enumerate(figures) if f is not None]
    idx.sort(key=lambda i: (figures[i]["leak"] <= _CLICK_BORDER_LIMIT, figures[i]["contrast"], -i),
             reverse=True)
    return idx[:RANK_TOP_K]


def _run_chains(predictor: Any, arr: np.ndarray, feats: np.ndarray, click: tuple[int, int],
                starts: Sequence[LesionResult], rounds: int, plane_shape: tuple[int, int]) -> list[list]:
    """Each start's chain of ``(result, figures)``: its RECIST segmented again ``rounds``
    times (one batch a round) until a round does not cross or loses the click."""
    cfg = predictor.preprocess
    chains = [[(res, step_figures(feats, res, res.recist, cfg, plane_shape))] for res in starts]
    alive = list(range(len(chains)))
    for _ in range(rounds):
        idx, prompts = [], []
        for i in alive:
            try:
                prompts.append(snap(chains[i][-1][0].measured))
                idx.append(i)
            except RecistError:  # a derived RECIST of an odd shape may not cross
                continue
        if not prompts:
            break
        outs = predictor._run(arr, prompts, batch_size=len(prompts), tta=predictor.tta, timings=None,
                              postprocess=True)
        alive = []
        for i, prompt, res in zip(idx, prompts, outs):
            if _holds(res, click):
                chains[i].append((res, step_figures(feats, res, prompt, cfg, plane_shape)))
                alive.append(i)
    return chains


def segment_click_ranked(predictor: Any, image: np.ndarray, point: Sequence[float], *,
                         slice_index: int | None = None, spacing: tuple[float, float] | None = None,
                         scales: Sequence[float] | None = None, rounds: int | None = None) -> LesionResult:
    """Segment the lesion under one click: the best-scored step of the RECIST chains.

    Same parameters, return value and errors as :func:`~napari_recist_seg.click.segment_click`
    (``rounds``: RECIST rounds per chain, default :data:`RANK_ROUNDS`; the predictor's
    ``recist_fit``, ``grabcut_blend`` and test-time augmentation are off here too). The
    :data:`RANK_TOP_K` best circular candidates each start a chain; every step (the
    candidate and each round) is scored by :data:`RANK_WEIGHTS` over :func:`step_vector`
    and the best one is returned.
    """
    predictor = click_predictor(predictor)  # the weights were fitted on such single passes
    arr, slice_index, plane, click, diameters, candidates = click_candidates(
        predictor, image, point, slice_index, spacing, scales)
    shape = plane.shape[:2]
    feats = _click_features(plane, predictor.preprocess)
    top = _ranked_chains([_rank_figures(feats, res, predictor.preprocess, shape)
                          if _holds(res, click) else None for res in candidates])
    if not top:
        raise RecistError(f"no lesion found at {click}; draw the RECIST axes instead")
    chains = _run_chains(predictor, arr, feats, click, [candidates[i] for i in top],
                         RANK_ROUNDS if rounds is None else max(0, int(rounds)), shape)
    steps, table = [], []
    for rank, (i, chain) in enumerate(zip(top, chains)):
        for k, (res, fig) in enumerate(chain):
            prev = chain[k - 1][1]["shift"] if k >= 2 else None
            table.append(step_vector(fig, round_index=k, rank=rank, diameter=diameters[i],
                                     prev_shift=prev, plane_shape=shape))
            steps.append(res)
    chosen = steps[choose_step(np.array(table))]
    measured = replace(chosen.measured, spacing=spacing, slice_index=slice_index)
    return replace(chosen, recist=measured, measured=measured)


#: The model the weights were fitted on (its confidence and probability figures): the
#: shipped default. :func:`default_chooser` runs ``"ranked"`` for it, ``"rounds"`` for other
#: models (with a small model trained in the test session ``"ranked"`` lost: 0.75 vs 0.78).
FITTED_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
CLICK_CHOOSERS = ("rounds", "ranked")


def default_chooser(predictor: Any) -> str:
    """``"ranked"`` when ``predictor`` runs the model :data:`RANK_WEIGHTS` were fitted on
    (:data:`FITTED_MODEL_DIR`; on the test proxy 0.909 / 0.915 Dice from a centre click,
    clinic 3x / 256 px, against 0.900 / 0.913 with ``"rounds"`` in the same run, ``docs/RESULTS.md``),
    else ``"rounds"`` (the rule of :func:`napari_recist_seg.click.segment_click`)."""
    path = getattr(predictor, "path", None)
    try:
        same = path is not None and Path(path).resolve() == FITTED_MODEL_DIR
    except (TypeError, OSError):
        same = False
    return "ranked" if same else "rounds"


def segment_click(predictor: Any, image: np.ndarray, point: Sequence[float], *,
                  slice_index: int | None = None, spacing: tuple[float, float] | None = None,
                  scales: Sequence[float] | None = None, refine: bool = True, rounds: int | None = None,
                  chooser: str | None = None) -> LesionResult:
    """One click's lesion by ``chooser`` (default :func:`default_chooser`): ``"rounds"``
    :func:`napari_recist_seg.click.segment_click`, ``"ranked"`` :func:`segment_click_ranked`
    (without ``refine`` both return the best circular candidate as is)."""
    chooser = default_chooser(predictor) if chooser is None else str(chooser)
    if chooser not in CLICK_CHOOSERS:
        raise ValueError(f"chooser must be one of {CLICK_CHOOSERS}; got {chooser!r}")
    if chooser == "rounds" or not refine:
        return _rounds_click(predictor, image, point, slice_index=slice_index, spacing=spacing,
                             scales=scales, refine=refine, rounds=rounds)
    return segment_click_ranked(predictor, image, point, slice_index=slice_index, spacing=spacing,
                                scales=scales, rounds=rounds)
