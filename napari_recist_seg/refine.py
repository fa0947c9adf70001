"""Inference-side refinement of the model's lesion probability (no retraining).

The network sees a 128 x 128 crop; its probability is resized back to the image. On
full-resolution images from another camera the thresholded mask tends to be too
large (issue 10: median area 1.09x the expert's), and the drawn RECIST says how large
the lesion is. The refinements here use the probability, the image and the RECIST:

- ``"none"``: ``probability > threshold`` (the network as is);
- ``"recist"``: RECIST-consistent threshold per lesion: of the thresholds in
  :data:`THRESHOLDS`, the one whose mask's measured long and short axes best match the
  drawn ones (relative error), ties towards the fixed threshold;
- ``"fused"``: OpenCV GrabCut seeded by the probability (definite foreground where
  p > 0.9, probable foreground where p > threshold, probable background down to
  p > 0.05, definite background beyond), then the mean of its signed distance and the
  probability mask's (the image's edges, bounded by what the model believes);
- ``"recist_fused"``: ``"fused"`` then the RECIST-consistent choice between it
  and the thresholds;
- ``"recist_gc"``: as ``"recist_fused"``, with one more candidate: the mean of the
  signed distances of the probability mask and of GrabCut seeded by the RECIST
  ellipse (:func:`~napari_recist_seg.targets.grabcut_mask`, the no-training baseline).

Pure numpy / OpenCV; :class:`~napari_recist_seg.predict.Predictor` applies the one
named by its ``refine`` attribute.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from napari_recist_seg.grabcut_blend import blend_masks, grabcut_of
from napari_recist_seg.mask_holes import fill_holes
from napari_recist_seg.postprocess import measure_mask, postprocess_mask
from napari_recist_seg.recist import Recist, RecistError, recist_from_mask
from napari_recist_seg.recist_geometry import _component_axes, _long_axis
from napari_recist_seg.targets import grabcut_mask

__all__ = ["METHODS", "THRESHOLDS", "axis_gap", "offset_mask", "recist_error", "refine_mask", "refine_result"]

METHODS = ("none", "recist", "fused", "recist_fused", "recist_gc")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# GrabCut runs on the crop shrunk to this side (speed; the boundary is then smoothed).
_GRABCUT_SIDE = 160
_MEASURE_SIDE = 160
_MAX_GAP = 0.1  # axis_gap's bound, in long axes


def _keep_at(mask: np.ndarray, recist_local: Recist) -> np.ndarray:
    """The component of ``mask`` at the RECIST crossing (else the largest), holes filled."""
    # scipy.ndimage takes 0.3-0.8 s to import: only this fallback (and GrabCut) needs it.
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    keep = 0
    try:
        r, c = (int(round(v)) for v in recist_local.crossing)
    except RecistError:
        r, c = (int(round(v)) for v in recist_local.centre)
    if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
        keep = int(labels[r, c])
    if keep == 0:
        keep = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return fill_holes(labels == keep)


def recist_error(mask: np.ndarray, recist_local: Recist) -> float:
    """Relative mismatch of the mask's measured axes and the drawn ones.

    ``|L_m - L| / L + |W_m - W| / W``; ``inf`` for an empty or degenerate mask.

    Examples
    --------
    An ellipse with semi-axes 14 and 8 px measures L = 28, W = 16:

    >>> rows, cols = np.mgrid[:40, :40]
    >>> m = ((rows - 20) / 8.0) ** 2 + ((cols - 20) / 14.0) ** 2 <= 1
    >>> recist_error(m, Recist([[20, 6], [20, 34]], [[12, 20], [28, 20]]))
    0.0

    Drawn 10 % longer and 25 % wider than the mask: 2.8 / 30.8 + 4 / 20.

    >>> r = Recist([[20, 4.6], [20, 35.4]], [[10, 20], [30, 20]])
    >>> round(recist_error(m, r), 3)
    0.291
    """
    if not mask.any():
        return float("inf")
    try:
        m = recist_from_mask(mask)
    except RecistError:
        return float("inf")
    return abs(m.long_length - recist_local.long_length) / recist_local.long_length + abs(
        m.short_length - recist_local.short_length
    ) / recist_local.short_length


def _crossing_pixel(recist_local: Recist) -> tuple[int, int]:
    """The pixel ``_keep_at`` keeps the component of: the crossing, else the centre."""
    try:
        r, c = (int(round(v)) for v in recist_local.crossing)
    except RecistError:
        r, c = (int(round(v)) for v in recist_local.centre)
    return r, c


def _kept_component(mask: np.ndarray, at: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The 8-connected component of ``mask`` at pixel ``at`` (inside it), holes filled:
    ``(0/1 uint8 crop of its bounding box, the crop's corner)``."""
    work = mask.astype(np.uint8)
    _, _, _, (x, y, w, h) = cv2.floodFill(work, None, (at[1], at[0]), 2, flags=8)
    return fill_holes(work[y : y + h, x : x + w] == 2).view(np.uint8), (y, x)


def _at_in(mask: np.ndarray, at: tuple[int, int]) -> bool:
    r, c = at
    return 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and bool(mask[r, c])


def _kept_recist(mask: np.ndarray, recist_local: Recist,
                 at: tuple[int, int] | None = None) -> Recist | None:
    """``recist_from_mask(_keep_at(mask, r))`` computed on the kept component alone
    (``None`` where that raises: too small or degenerate).

    The component at the crossing is flood-filled (8-connected, as ``_keep_at``
    labels) and measured in its bounding box, where ``recist_from_mask`` of the kept
    mask would measure it (same crop, same offset: the same axes to the last bit);
    when the crossing misses the mask the general path picks the largest component.
    ``at``: :func:`_crossing_pixel` of ``recist_local``, when the caller has it.
    """
    at = _crossing_pixel(recist_local) if at is None else at
    if not _at_in(mask, at):
        try:
            return recist_from_mask(_keep_at(mask, recist_local))
        except RecistError:
            return None
    comp, corner = _kept_component(mask, at)
    if int(np.count_nonzero(comp)) < 4:  # recist_from_mask's min_area
        return None
    try:
        return Recist(*_component_axes(comp, corner))
    except RecistError:
        return None


def _threshold_error(mask: np.ndarray, recist_local: Recist,
                     at: tuple[int, int] | None = None, bound: float = float("inf"),
                     seen: dict[str, Any] | None = None) -> float:
    """``recist_error(_keep_at(mask, r), r)``, from :func:`_kept_recist`; or, where the
    long axis alone already puts it at or above ``bound``, that part of it (a lower
    bound not below ``bound``: the short axis is then not measured).

    ``seen`` (when given) gets ``"long"``: the kept component's long axis when the
    crossing is inside ``mask`` (else absent), and ``"axes"``: its measured
    :class:`Recist` (``None`` when not measured or degenerate)."""
    at = _crossing_pixel(recist_local) if at is None else at
    L, W = recist_local.long_length, recist_local.short_length
    seen = {} if seen is None else seen
    seen["axes"] = None
    if bound < float("inf") and _at_in(mask, at):
        comp, corner = _kept_component(mask, at)
        if int(np.count_nonzero(comp)) < 4:
            return float("inf")
        try:
            long = _long_axis(comp)
            seen["long"] = long[2]
            # The same float as abs(m.long_length - L) / L below (integer endpoints).
            long_part = abs(long[2] - L) / L
            if long_part >= bound:
                return long_part
            m = Recist(*_component_axes(comp, corner, long))
        except RecistError:
            return float("inf")
    else:
        m = _kept_recist(mask, recist_local, at)
        if m is None:
            return float("inf")
        if _at_in(mask, at):
            seen["long"] = m.long_length
    seen["axes"] = m
    return abs(m.long_length - L) / L + abs(m.short_length - W) / W


def _long_part_bound(longs: dict[float, float], t: float, L: float) -> float:
    """A lower bound of threshold ``t``'s long-axis error ``|L_m(t) - L| / L`` from the
    long axes ``longs`` measured at other thresholds, all with the crossing inside
    their masks (as it must be inside ``t``'s).

    The masks are nested (a higher threshold keeps a subset), so are the components at
    the crossing and their filled holes, and the long axis (the largest distance
    between two pixels) can only shrink as the threshold rises: below a measured
    ``L_0 <= L`` it stays at most ``L_0``, above one ``>= L`` at least ``L_0``. Float
    subtraction and division keep that order, so the bound never exceeds the error.
    """
    bound = 0.0
    for t0, long0 in longs.items():
        if t0 < t and long0 <= L:
            bound = max(bound, (L - long0) / L)
        elif t0 > t and long0 >= L:
            bound = max(bound, (long0 - L) / L)
    return bound


def _best_threshold(prob: np.ndarray, recist_local: Recist, threshold: float
                    ) -> tuple[np.ndarray, float, Recist | None, bool]:
    """The ``"recist"`` choice: of ``threshold`` and :data:`THRESHOLDS`, the full-size
    mask whose kept component's axes best match the drawn ones, and its error; then the
    chosen component's measured axes (``None`` if not measured) and whether they were
    measured on ``prob`` itself (not shrunk: :func:`axis_gap` of the mask would measure
    the same).

    The thresholds are compared on the probability shrunk to at most _MEASURE_SIDE
    (the relative axis error does not depend on scale; full resolution costs ~180 ms
    per lesion at 768 x 576, shrunk ~10 ms). The masks of the thresholds are nested,
    so two with the same pixel count are the same mask: it is measured once (same
    error, and a tie never replaces the earlier choice). A threshold whose long-axis
    error is bounded below by those measured (:func:`_long_part_bound`) at or above
    the best error so far is not measured at all (it cannot win).
    """
    f = min(1.0, _MEASURE_SIDE / max(prob.shape))
    small, r_small = prob, recist_local
    if f < 1.0:
        size = (max(2, int(round(prob.shape[1] * f))), max(2, int(round(prob.shape[0] * f))))
        small = cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)
        r_small = recist_local.transformed((0.0, 0.0), (size[1] / prob.shape[0], size[0] / prob.shape[1]))
    base = small > threshold
    at = _crossing_pixel(r_small)  # (computed once: 15 us a time)
    L = r_small.long_length
    seen: dict[str, Any] = {}
    best_t, best_err = threshold, (_threshold_error(base, r_small, at, seen=seen) if base.any() else float("inf"))
    best_axes = seen.get("axes")
    longs = {threshold: seen["long"]} if "long" in seen else {}
    counts = {int(np.count_nonzero(base))}
    for t in THRESHOLDS:
        cand = small > t
        n = int(np.count_nonzero(cand))
        if n == 0 or n in counts:
            continue
        counts.add(n)
        # Only an error below best_err - 1e-9 can win: at or above it, a bound will do.
        bound = best_err - 1e-9
        if _at_in(cand, at) and _long_part_bound(longs, t, L) >= bound:
            continue
        seen = {}
        err = _threshold_error(cand, r_small, at, bound=bound, seen=seen)
        if "long" in seen:
            longs[t] = seen["long"]
        if err < bound:
            best_t, best_err, best_axes = t, err, seen["axes"]
    return prob > best_t, best_err, best_axes, f == 1.0


def offset_mask(mask: np.ndarray, pixels: float) -> np.ndarray:
    """``mask`` with its outline moved outwards by ``pixels`` (inwards when negative).

    The calibration's ``boundary_offset`` (a clinic that draws looser or tighter
    outlines): pixels whose Euclidean distance to the mask is at most ``pixels`` are
    added, or those within ``-pixels`` of the background removed.

    Examples
    --------
    >>> m = np.zeros((21, 21), bool); m[5:16, 5:16] = True
    >>> int(offset_mask(m, 2).sum()), int(offset_mask(m, -2).sum()), int(offset_mask(m, 0).sum())
    (213, 49, 121)
    """
    if pixels == 0 or not mask.any():
        return mask
    # Only the mask's bounding box, grown by the move (at least one pixel), can change,
    # and the distances there are the whole crop's: the nearest pixel of the other kind
    # is inside it, or beyond the grown box's ring of background, which is nearer (the
    # chamfer distance is a path length, at least the L-inf distance).
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=bool).view(np.uint8))
    grow = int(math.ceil(max(pixels, 0.0))) + 1
    r0, c0 = max(0, y - grow), max(0, x - grow)
    r1, c1 = min(mask.shape[0], y + h + grow), min(mask.shape[1], x + w + grow)
    box = mask[r0:r1, c0:c1]
    out = np.zeros_like(mask)
    if pixels > 0:
        out[r0:r1, c0:c1] = cv2.distanceTransform((~box).astype(np.uint8), cv2.DIST_L2, 5) <= pixels
        return out
    grown = np.pad(box, 1, mode="edge")  # the crop's edge is not the lesion's edge
    inside = cv2.distanceTransform(grown.astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    out[r0:r1, c0:c1] = inside > -pixels
    return out


def axis_gap(mask: np.ndarray, recist_local: Recist) -> float:
    """How far (pixels) the outline of ``mask`` must move for its axes to match the drawn
    RECIST: ``((L - L_m) + (W - W_m)) / 4`` (moving the outline by ``d`` changes both
    measured axes by ``2 d``), at most ``_MAX_GAP`` x L either way; 0 for an empty or
    degenerate mask.

    Measured on the mask shrunk to at most ``_MEASURE_SIDE`` (as the thresholds are
    compared), the component at the RECIST crossing. The calibration's ``recist_fit``
    moves the outline by that fraction of it. The bound keeps a measurement gone wrong
    (a fragment at the crossing, the rest of the mask elsewhere) from moving the whole
    outline far (on the proxy clinic, 200 ids, no gap reached it: at most 0.07 L with
    exact RECIST, 0.099 L with jittered ones).

    Examples
    --------
    >>> yy, xx = np.mgrid[:60, :60]
    >>> m = (yy - 30) ** 2 + (xx - 30) ** 2 <= 10 ** 2  # measured 20 x 20, drawn 25 x 25
    >>> r = Recist([[30, 17.5], [30, 42.5]], [[17.5, 30], [42.5, 30]])
    >>> round(axis_gap(m, r), 1)
    2.5
    """
    if not mask.any():
        return 0.0
    f = min(1.0, _MEASURE_SIDE / max(mask.shape))
    small, r_small = mask, recist_local
    if f < 1.0:
        size = (max(2, int(round(mask.shape[1] * f))), max(2, int(round(mask.shape[0] * f))))
        small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
        r_small = recist_local.transformed((0.0, 0.0), (size[1] / mask.shape[0], size[0] / mask.shape[1]))
        f = size[0] / mask.shape[1]
    return _gap_of(_kept_recist(small, r_small) if small.any() else None, r_small, recist_local, f)


def _gap_of(m: Recist | None, r_small: Recist, recist_local: Recist, f: float) -> float:
    """:func:`axis_gap` from the kept component's axes ``m`` measured at scale ``f``."""
    if m is None:
        return 0.0
    gap = (r_small.long_length - m.long_length) + (r_small.short_length - m.short_length)
    bound = _MAX_GAP * recist_local.long_length
    return float(np.clip(gap / (4.0 * f), -bound, bound))


def _signed(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    return inside - outside


def _grabcut(image: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray | None:
    """GrabCut seeded by the probability, on the crop (``None`` when it degenerates)."""
    h, w = prob.shape
    img = image
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3])
    if img.dtype != np.uint8:
        lo, hi = np.percentile(img, (1, 99))
        img = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    scale = min(1.0, _GRABCUT_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        p = cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)
    else:
        p = prob
    seeds = np.full(p.shape, cv2.GC_BGD, np.uint8)
    seeds[p > 0.05] = cv2.GC_PR_BGD
    seeds[p > threshold] = cv2.GC_PR_FGD
    seeds[p > 0.9] = cv2.GC_FGD
    if not (seeds == cv2.GC_BGD).any() and not (seeds == cv2.GC_PR_BGD).any():
        return None
    if not ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).any():
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(img, seeds, None, bgd, fgd, 4, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    cut = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.float32)
    if scale < 1.0:
        cut = cv2.resize(cut, (w, h), interpolation=cv2.INTER_LINEAR)
    return cut > 0.5


def refine_mask(
    method: str,
    prob: np.ndarray,
    recist_local: Recist,
    image_crop: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
) -> np.ndarray:
    """The lesion mask of one crop under a refinement ``method`` (see module notes).

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.
    prob : np.ndarray
        float32 probability of the crop box (image resolution).
    recist_local : Recist
        The prompt in the crop's pixel coordinates.
    image_crop : np.ndarray, optional
        The image under ``prob`` (same rows / cols); needed by the GrabCut methods
        (without it they fall back to the thresholds).
    threshold : float
        The model's fixed threshold.

    Returns
    -------
    np.ndarray
        bool mask, same shape as ``prob``.
    """
    return _refine_mask(method, prob, recist_local, image_crop, threshold)[0]


def _refine_mask(method: str, prob: np.ndarray, recist_local: Recist, image_crop: np.ndarray | None,
                 threshold: float) -> tuple[np.ndarray, tuple[Recist | None] | None]:
    """:func:`refine_mask`, and the ``(axes,)`` :func:`axis_gap` of the mask would measure
    where the ``"recist"`` choice measured them already (a crop not shrunk), else ``None``."""
    if method not in METHODS:
        raise ValueError(f"unknown refinement {method!r}; choose one of {', '.join(METHODS)}")
    base = prob > threshold
    if method == "none" or not base.any():
        return base, None
    candidates: list[np.ndarray] = []
    if method == "recist_gc" and image_crop is not None:
        try:
            gc = grabcut_mask(image_crop, recist_local)
        except (RecistError, ValueError, cv2.error):
            gc = None
        if gc is not None and gc.any():
            candidates.append(_keep_at((_signed(gc) + _signed(base)) / 2 > 0, recist_local))
    if method in ("fused", "recist_fused", "recist_gc") and image_crop is not None:
        cut = _grabcut(image_crop, prob, threshold)
        if cut is not None and cut.any():
            fused = (_signed(cut) + _signed(base)) / 2 > 0
            fused = _keep_at(fused, recist_local)
            if method == "fused":
                return fused, None
            candidates.append(fused)
        elif method == "fused":
            return base, None
    if method == "fused":
        return base, None
    best, best_err, axes, unshrunk = _best_threshold(prob, recist_local, threshold)
    known = (axes,) if unshrunk else None
    for cand in candidates:  # full-resolution GrabCut candidates
        err = recist_error(_keep_at(cand, recist_local), recist_local)
        if err < best_err - 1e-9:
            best, best_err, known = cand, err, None
    return best, known


def refine_result(res: Any, plane: np.ndarray, method: str, *, threshold: float = 0.5,
                  boundary_offset: float = 0.0, recist_fit: float = 0.0,
                  grabcut_blend: float = 0.0, postprocess: bool = False) -> Any:
    """A :class:`~napari_recist_seg.postprocess.LesionResult` refined by ``method``, its
    outline then moved by ``boundary_offset`` x the long axis + ``recist_fit`` x
    :func:`axis_gap` pixels (:func:`offset_mask`) and blended with GrabCut from its
    RECIST by ``grabcut_blend`` (:func:`~napari_recist_seg.grabcut_blend.blend_masks`;
    these three are the calibration), then post-processed; measured again.

    ``plane`` is the image plane the result's offset refers to.
    """
    (r0, c0), (h, w) = res.offset, res.mask.shape
    local = res.recist.transformed(res.offset, 1.0)
    crop = plane[r0 : r0 + h, c0 : c0 + w]
    mask, known = _refine_mask(method, res.probability, local, crop, threshold)
    if (boundary_offset or recist_fit or grabcut_blend) and mask.any():
        px = boundary_offset * local.long_length
        if recist_fit:  # (the choice's own measurement where it is axis_gap's: same value)
            px = px + recist_fit * (axis_gap(mask, local) if known is None else _gap_of(known[0], local, local, 1.0))
        gc = grabcut_of(crop, local) if grabcut_blend else None
        mask = offset_mask(mask, px) if gc is None else blend_masks(mask, gc, grabcut_blend, local, shift=px)
    if postprocess and mask.any():
        mask = postprocess_mask(mask, local)
    if res.measured is not None and mask.shape == res.mask.shape and np.array_equal(mask, res.mask):
        return replace(res, mask=mask)  # the fixed threshold kept: already measured
    return replace(res, mask=mask, measured=measure_mask(mask, res.offset, res.recist))
