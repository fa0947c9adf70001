"""Calibration of a model to a clinic's annotation style, learned from its curated masks.

A clinic whose experts draw tighter or looser outlines than the training data (issue
#10: the default model's masks were 1.09x the area of one clinic's expert masks, 82%
of them larger) is systematically mis-segmented, and re-training the weights on 20
curated images did not fix it (-0.013 .. +0.001 Dice). Two numbers do, without
touching the weights (so nothing can be forgotten):

- ``logit_bias``: added to the network's logits before the threshold (a global
  threshold shift; :data:`BIASES`);
- ``boundary_offset``: the final mask's outline moved outwards (> 0) or inwards by
  this fraction of the lesion's RECIST long axis (:data:`OFFSETS`);
- ``grabcut_blend``: the refined mask blended with GrabCut from the same RECIST, by
  the mean of their signed distances with this weight on GrabCut's
  (:mod:`~napari_recist_seg.grabcut_blend`, :data:`~napari_recist_seg.grabcut_blend.BLENDS`):
  on one clinic GrabCut beat the model, on another the model beats GrabCut;
- ``recist_fit``: the outline moved, per lesion, by this fraction of the gap between
  the mask's measured axes and the drawn RECIST (:func:`~napari_recist_seg.refine.axis_gap`,
  :data:`FITS`; 1 = the axes match). The RECIST is drawn on the clinic's own outline:
  how far the model's outline is from it varies per lesion, which one offset in units
  of L cannot follow (on the proxy a tight style wanted -0.015 L on small lesions and
  none on others); the per-lesion RECIST threshold of ``refine="recist"`` moves in
  steps of 0.1 of probability and leaves part of the gap.

Both outline moves are applied together, after the refinement: ``boundary_offset x L
+ recist_fit x gap`` pixels, then the GrabCut blend (of the moved outline's signed
distance). :func:`calibrate` segments the curated images with the starting model once
per bias (GrabCut once per lesion) and scores every (bias, blend, fit, offset) against
the curated masks (a Dice table). The calibration is the setting of best mean Dice, each
moved from the starting model's own calibration (0 for most checkpoints; the default
model ships a fit) by ``n / (n + shrink)`` of the way for ``n`` curated images (small
sets move less), rounded to the grid; "before" is the starting model as it is. Whether it
helps is estimated by leave-one-image-out cross-validation of that whole rule (each
image scored with the calibration chosen on the others); a calibration whose
cross-validated gain is not positive is not applied. The knobs are stored in the
checkpoint's ``config.json["model"]`` (optional keys, 0 when absent) and applied by
:class:`~napari_recist_seg.predict.Predictor` (also on the ONNX path).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.grabcut_blend import BLENDS, blend_masks, grabcut_of, signed_distance
from napari_recist_seg.progress import CancelToken, ProgressCallback, ProgressTracker
from napari_recist_seg.recist import Recist
from napari_recist_seg.refine import axis_gap

__all__ = ["BIASES", "BLENDS", "FITS", "OFFSETS", "Calibration", "CalibrationCase", "CalibrationReport",
           "calibrate", "choose", "choose_grid", "dice_grid", "dice_table"]

#: Logit biases searched (0.25 steps; +-2 moves the 0.5 threshold to 0.12 / 0.88).
BIASES: tuple[float, ...] = tuple(round(float(b), 2) for b in np.arange(-2.0, 2.001, 0.25))
#: Boundary offsets searched, in fractions of the long axis (0.5% steps, +-6%).
OFFSETS: tuple[float, ...] = tuple(round(float(o), 3) for o in np.arange(-0.06, 0.0601, 0.005))
#: RECIST fits searched, in fractions of the axis gap.
FITS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Shrinkage toward no calibration: the chosen values times n / (n + SHRINK).
SHRINK = 10.0


@dataclass(frozen=True)
class Calibration:
    """What :class:`~napari_recist_seg.predict.Predictor` applies (all 0 = nothing)."""

    logit_bias: float = 0.0
    boundary_offset: float = 0.0
    recist_fit: float = 0.0
    grabcut_blend: float = 0.0

    @property
    def is_identity(self) -> bool:
        return not (self.logit_bias or self.boundary_offset or self.recist_fit or self.grabcut_blend)


@dataclass
class CalibrationCase:
    """One curated image (plane): its RECIST and its curated mask (all lesions)."""

    name: str
    image: np.ndarray
    recists: list[Recist]
    mask: np.ndarray


@dataclass
class CalibrationReport:
    """The chosen calibration and the before / after figures on the curated images.

    ``dice_before``: the starting model as is; ``dice_cv``: leave-one-image-out (each
    image with the calibration chosen without it: the honest "after");
    ``dice_in_sample``: the final calibration on all of them (optimistic).
    """

    calibration: Calibration
    chosen: Calibration
    applied: bool
    reason: str
    n_images: int
    dice_before: float
    dice_cv: float
    dice_in_sample: float
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("dice_before", "dice_cv", "dice_in_sample"):
            d[k] = round(d[k], 4) if math.isfinite(d[k]) else None
        return d

    def summary(self) -> str:
        """Two lines for the CLI and the dock."""
        c = self.calibration
        head = (f"calibration on {self.n_images} curated image(s): "
                + (f"logit bias {c.logit_bias:+.2f}, boundary offset {c.boundary_offset:+.3f} x long axis"
                   f", RECIST fit {c.recist_fit:.2f} x axis gap, GrabCut blend {c.grabcut_blend:.2f}"
                   if self.applied else f"none ({self.reason})"))
        tail = "" if self.applied else "; not applied"
        return (f"{head}\n  Dice on the curated images, leave-one-image-out: before "
                f"{self.dice_before:.4f}, after {self.dice_cv:.4f} "
                f"({self.dice_cv - self.dice_before:+.4f}{tail})")


def _window(results: Sequence[Any]) -> tuple[slice, slice]:
    """The box (rows, cols) that holds every lesion's crop of one plane."""
    r0 = min(res.offset[0] for res in results)
    c0 = min(res.offset[1] for res in results)
    r1 = max(res.offset[0] + res.mask.shape[0] for res in results)
    c1 = max(res.offset[1] + res.mask.shape[1] for res in results)
    return slice(r0, r1), slice(c0, c1)


def _distances(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each pixel to the mask (outside) and to the background (inside):
    :func:`~napari_recist_seg.refine.offset_mask` for every offset at once."""
    import cv2

    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    inside = cv2.distanceTransform(np.pad(mask, 1, mode="edge").astype(np.uint8), cv2.DIST_L2, 5)
    return outside, inside[1:-1, 1:-1]


def _dice_at(results: Sequence[Any], gt: np.ndarray, gt_sum: float, fits: Sequence[float],
             offsets: Sequence[float], blends: Sequence[float] = (0.0,),
             gcs: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """Dice ``(n_blends, n_fits, n_offsets)`` of the union of the lesions' masks, each
    outline moved by ``offset x L + fit x axis gap`` pixels, then blended with its
    GrabCut mask (``gcs``, crop coordinates; ``None``: none), as
    :func:`~napari_recist_seg.refine.refine_result` does.

    Computed inside the window of the crops (nothing is predicted outside it);
    ``gt_sum`` is the curated mask's whole area.
    """
    if not results:
        return np.full((len(blends), len(fits), len(offsets)), 1.0 if gt_sum == 0 else 0.0)
    rows, cols = _window(results)
    g = gt[rows, cols]
    local = [res.recist.transformed(res.offset, 1.0) for res in results]
    gcs = list(gcs) if gcs is not None else [None] * len(results)
    dist = [_distances(res.mask) if res.mask.any() else None for res in results]
    gaps = [axis_gap(res.mask, r) if any(fits) and res.mask.any() else 0.0 for res, r in zip(results, local)]
    mixed = any(0 < w < 1 for w in blends)
    sds = [(signed_distance(res.mask), signed_distance(gc)) if mixed and gc is not None and res.mask.any()
           else (None, None) for res, gc in zip(results, gcs)]
    whole = [blend_masks(res.mask, gc, 1.0, r) if 1.0 in blends and gc is not None else None
             for res, gc, r in zip(results, gcs, local)]  # weight 1: GrabCut's, whatever the move
    out = np.zeros((len(blends), len(fits), len(offsets)))
    for a_b, w in enumerate(blends):
        for a_f, fit in enumerate(fits):
            for a_o, o in enumerate(offsets):
                pred = np.zeros(g.shape, bool)
                for r, res, d, gap, gc, sd, gc1 in zip(local, results, dist, gaps, gcs, sds, whole):
                    px = o * r.long_length + (fit * gap if fit else 0.0)
                    if w == 1 and gc1 is not None and d is not None:
                        m = gc1
                    elif w and gc is not None and d is not None:
                        m = blend_masks(res.mask, gc, float(w), r, *sd, shift=px)
                    else:
                        m = res.mask if d is None or px == 0 else (d[0] <= px if px > 0 else d[1] > -px)
                    a, b = res.offset[0] - rows.start, res.offset[1] - cols.start
                    pred[a:a + m.shape[0], b:b + m.shape[1]] |= m
                denom = float(pred.sum()) + gt_sum
                out[a_b, a_f, a_o] = 1.0 if denom == 0 else 2.0 * float(np.logical_and(pred, g).sum()) / denom
    return out


class _SameInputs:
    """The predictor's network, remembering its outputs: every bias of an image sends
    the same crops (the bias acts on the logits after the network)."""

    def __init__(self, runner: Any) -> None:
        self.runner, self.backend = runner, getattr(runner, "backend", "")
        self.key: bytes | None = None
        self.out: Any = None

    def __call__(self, x: np.ndarray) -> Any:
        key = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()
        key += str(x.shape).encode()
        if key != self.key:
            self.key, self.out = key, self.runner(x)
        return self.out


def dice_grid(
    predictor: Any,
    cases: Sequence[CalibrationCase],
    biases: Sequence[float] = BIASES,
    blends: Sequence[float] = BLENDS,
    fits: Sequence[float] = FITS,
    offsets: Sequence[float] = OFFSETS,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Dice ``(n_cases, n_biases, n_blends, n_fits, n_offsets)`` of the predictor on each
    curated image: the network once per bias, GrabCut once per lesion (when a blend is
    searched), every (blend, fit, offset) scored on the same refined masks.

    The predictor's own calibration is replaced while scoring, then restored.
    """
    keys = ("logit_bias", "boundary_offset", "recist_fit", "grabcut_blend")
    saved = tuple(getattr(predictor, k, 0.0) for k in keys) + (predictor._runner,)
    table = np.zeros((len(cases), len(biases), len(blends), len(fits), len(offsets)))
    tracker = ProgressTracker(len(cases) * len(biases), progress)
    predictor._runner = _SameInputs(predictor._runner)
    try:
        predictor.boundary_offset = predictor.recist_fit = predictor.grabcut_blend = 0.0
        for i, case in enumerate(cases):
            gt = np.asarray(case.mask, bool)
            gt_sum = float(gt.sum())
            gcs = None
            for j, b in enumerate(biases):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                predictor.logit_bias = float(b)
                results = predictor.segment(case.image, case.recists)
                if gcs is None and any(blends):  # the crop boxes depend on the RECIST alone
                    gcs = [_grabcut_of(case.image, res) for res in results]
                table[i, j] = _dice_at(results, gt, gt_sum, fits, offsets, blends, gcs)
                tracker.step(f"calibrating on {case.name}")
    finally:
        for k, v in zip(keys, saved):
            setattr(predictor, k, v)
        predictor._runner = saved[-1]
    return table


def _grabcut_of(plane: np.ndarray, res: Any) -> np.ndarray | None:
    """GrabCut of one result's lesion on its crop box (as the Predictor runs it)."""
    (r0, c0), (h, w) = res.offset, res.mask.shape
    return grabcut_of(plane[r0:r0 + h, c0:c0 + w], res.recist.transformed(res.offset, 1.0))


def dice_table(
    predictor: Any,
    cases: Sequence[CalibrationCase],
    biases: Sequence[float] = BIASES,
    offsets: Sequence[float] = OFFSETS,
    *,
    fits: Sequence[float] = (0.0,),
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Dice ``(n_cases, n_biases, n_fits, n_offsets)``: :func:`dice_grid` without the blend."""
    return dice_grid(predictor, cases, biases, (0.0,), fits, offsets, progress=progress, cancel=cancel)[:, :, 0]


def _nearest(values: Sequence[float], v: float) -> int:
    return int(np.argmin(np.abs(np.asarray(values, float) - v)))


def choose_grid(table: np.ndarray, grids: Sequence[Sequence[float]], shrink: float = SHRINK,
                origin: Sequence[int] | None = None) -> tuple[int, ...]:
    """Grid indices of the calibration for the images of ``table`` (``(n, *grid sizes)``).

    The best mean Dice (ties: the smaller change, each knob's change in units of its
    grid's range), every value moved from the ``origin`` (grid indices of the starting
    calibration; default: 0 for every knob) by ``n / (n + shrink)`` of the way,
    rounded to the grid.

    Examples
    --------
    >>> t = np.zeros((10, 1, 3, 2)); t[:, 0, 2, 1] = 1.0     # best: the grids' last values
    >>> choose_grid(t, [(0.0,), (0.0, 0.5, 1.0), (0.0, 1.0)], shrink=10.0)  # half-way
    (0, 1, 0)
    """
    n, dims = table.shape[0], len(grids)
    arrays = [np.asarray(g, float) for g in grids]
    start = [g[i] for g, i in zip(arrays, origin)] if origin is not None else [0.0] * dims
    size = sum(np.abs(g - s0).reshape([-1 if a == i else 1 for a in range(dims)]) / max(1e-9, np.ptp(g))
               for i, (g, s0) in enumerate(zip(arrays, start)))
    score = table.mean(axis=0) - 1e-7 * size  # a tie goes to the smaller change
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    f = n / (n + shrink) if shrink > 0 else 1.0
    return tuple(_nearest(g, s0 + (g[i] - s0) * f) for g, i, s0 in zip(arrays, best, start))


def choose(table: np.ndarray, biases: Sequence[float] = BIASES, offsets: Sequence[float] = OFFSETS,
           shrink: float = SHRINK, fits: Sequence[float] = (0.0,),
           origin: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """Grid indices ``(bias, fit, offset)`` for a ``(n, n_biases, n_fits, n_offsets)``
    table: :func:`choose_grid` on those three knobs.

    Examples
    --------
    >>> choose(np.ones((3, 3, 1, 3)), (-1.0, 0.0, 1.0), (-0.01, 0.0, 0.01))  # a tie: no change
    (1, 0, 1)
    """
    j, m, k = choose_grid(table, (biases, fits, offsets), shrink, origin)
    return j, m, k


def _with_start(grid: Sequence[float], value: float) -> tuple[float, ...]:
    """``grid`` with the starting ``value`` in it; a knob that is off keeps ``value``."""
    value = float(value) + 0.0
    if len(grid) == 1:
        return (value,)
    return tuple(sorted({float(g) for g in grid} | {value}))


def calibrate(
    predictor: Any,
    cases: Sequence[CalibrationCase],
    *,
    biases: Sequence[float] = BIASES,
    offsets: Sequence[float] = OFFSETS,
    fits: Sequence[float] = FITS,
    blends: Sequence[float] = BLENDS,
    shrink: float = SHRINK,
    start: Calibration | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> CalibrationReport:
    """Choose the calibration of ``predictor`` on curated images, with its LOO estimate.

    Parameters
    ----------
    predictor : Predictor
        The starting model (its ``refine`` as it will be used).
    cases : sequence of CalibrationCase
        Curated images; at least 2 for any calibration (1 cannot be cross-validated).
    biases, offsets, fits, blends : sequence of float
        The grid (each must contain 0); a one-value grid ``(0.0,)`` turns a knob off.
    shrink : float
        See :func:`choose_grid`.
    start : Calibration, optional
        The starting model's own calibration (default: the predictor's). "Before" is
        the model with it, the choice shrinks toward it, and it stays when nothing
        better is found (a default model may ship one). A knob that is off (a grid of
        0 alone) keeps its starting value.
    """
    if not all(0.0 in g for g in (biases, offsets, fits, blends)):
        raise ValueError("the calibration grid must contain 0 (no change)")
    start = start if start is not None else Calibration(
        predictor.logit_bias, predictor.boundary_offset, getattr(predictor, "recist_fit", 0.0),
        getattr(predictor, "grabcut_blend", 0.0))
    biases, blends, fits, offsets = (_with_start(g, v) for g, v in (
        (biases, start.logit_bias), (blends, start.grabcut_blend), (fits, start.recist_fit),
        (offsets, start.boundary_offset)))
    grids = (biases, blends, fits, offsets)
    table = dice_grid(predictor, cases, *grids, progress=progress, cancel=cancel)
    n = len(cases)
    idx0 = tuple(g.index(v) for g, v in zip(grids, (start.logit_bias, start.grabcut_blend,
                                                     start.recist_fit, start.boundary_offset)))
    before = table[(slice(None), *idx0)]
    cv = before.copy()
    if n >= 2:
        for i in range(n):
            cv[i] = table[(i, *choose_grid(np.delete(table, i, axis=0), grids, shrink, idx0))]
    best = choose_grid(table, grids, shrink, idx0) if n >= 1 else idx0
    j, q, m, k = best
    chosen = Calibration(float(biases[j]) + 0.0, float(offsets[k]) + 0.0, float(fits[m]) + 0.0,  # no -0.0
                         float(blends[q]) + 0.0)
    gain = float(cv.mean() - before.mean()) if n else 0.0
    if n < 2:
        applied, reason = False, "fewer than 2 curated images: nothing to cross-validate"
    elif chosen == start:
        applied, reason = False, "the starting model is already best on the curated images"
    elif gain <= 0:
        applied, reason = False, f"no cross-validated gain ({gain:+.4f} Dice)"
    else:
        applied, reason = True, f"cross-validated gain {gain:+.4f} Dice"
    rows = [{"case": c.name, "dice_before": round(float(before[i]), 4),
             "dice_cv": round(float(cv[i]), 4)} for i, c in enumerate(cases)]
    nan = float("nan")
    return CalibrationReport(
        calibration=chosen if applied else start, chosen=chosen, applied=applied,
        reason=reason, n_images=n,
        dice_before=float(before.mean()) if n else nan,
        dice_cv=float(cv.mean()) if n else nan,
        dice_in_sample=float(table[(slice(None), *best)].mean()) if n else nan, per_image=rows,
    )
