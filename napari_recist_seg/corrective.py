"""Corrective clicks: positive / negative clicks on a lesion refine its mask.

As in interactive tools such as micro-sam and nnInteractive, after the model has
segmented a lesion the user clicks where it is wrong: a *positive* click on lesion the
mask missed, a *negative* click on skin / tissue the mask wrongly covers. Here a click
re-runs OpenCV GrabCut on the lesion's crop, seeded by

- the current mask (probable foreground inside, probable background outside),
- the model's probability where it is sure (``p > 0.95`` definite foreground,
  ``p < 0.02`` definite background) except near a click that contradicts it,
- the clicks themselves as hard seeds (a small disc of definite foreground /
  background),
- the crop's border as definite background,

and then keeps the change **local**: only the connected regions of change that touch a
click are applied, so a click fixes the error it was placed on without redrawing the
rest of a boundary the user was happy with. The clicked disc itself always follows the
click (a positive click is always inside the result, a negative one always outside).

Pure numpy / OpenCV over plain arrays; the annotator calls :func:`correct_lesion` with
the image plane and the lesion's mask, ``benchmarks/corrective_clicks.py`` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

from napari_recist_seg.mask_holes import fill_holes

__all__ = ["Click", "correct_lesion", "correct_mask", "correction_box", "error_click"]

# GrabCut runs on the crop shrunk to this side (speed: ~20-60 ms per click).
_SIDE = 160
# Crop margin around the mask and the clicks, as a fraction of their extent.
_MARGIN = 0.3


@dataclass(frozen=True)
class Click:
    """One corrective click in image-plane pixel coordinates."""

    row: float
    col: float
    positive: bool = True


def correction_box(
    mask: np.ndarray, clicks: Sequence[Click], margin: float = _MARGIN
) -> tuple[slice, slice]:
    """The crop (row, col slices) holding the mask and the clicks, with a margin.

    >>> m = np.zeros((100, 100), bool); m[40:60, 40:60] = True
    >>> correction_box(m, [Click(50, 80)])
    (slice(32, 68, None), slice(28, 93, None))
    """
    rows, cols = np.nonzero(mask)
    rs = [*rows.tolist(), *(c.row for c in clicks)]
    cs = [*cols.tolist(), *(c.col for c in clicks)]
    if not rs:
        raise ValueError("no mask and no click: nothing to correct")
    r0, r1, c0, c1 = min(rs), max(rs) + 1, min(cs), max(cs) + 1
    pad_r = max(8, int(round((r1 - r0) * margin)))
    pad_c = max(8, int(round((c1 - c0) * margin)))
    h, w = mask.shape
    return (
        slice(max(0, int(r0) - pad_r), min(h, int(np.ceil(r1)) + pad_r)),
        slice(max(0, int(c0) - pad_c), min(w, int(np.ceil(c1)) + pad_c)),
    )


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        lo, hi = np.percentile(img, (1, 99))
        img = np.clip((img.astype(np.float32) - lo) / max(float(hi - lo), 1e-6) * 255, 0, 255)
        img = img.astype(np.uint8)
    return np.ascontiguousarray(img)


def _disc(shape: tuple[int, int], row: float, col: float, radius: float) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - row) ** 2 + (cc - col) ** 2 <= radius**2


def _seeds(
    mask: np.ndarray, prob: np.ndarray | None, clicks: Sequence[Click], radius: float
) -> np.ndarray:
    """GrabCut labels: mask / probability priors, clicks as hard seeds, border background."""
    shape = mask.shape
    seeds = np.where(mask, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    if prob is not None:
        # The model's certainty, except within reach of a click that says otherwise.
        reach = 6 * radius
        near_pos = np.zeros(shape, bool)
        near_neg = np.zeros(shape, bool)
        for c in clicks:
            (near_pos if c.positive else near_neg)[_disc(shape, c.row, c.col, reach)] = True
        seeds[(prob > 0.95) & mask & ~near_neg] = cv2.GC_FGD
        seeds[(prob < 0.02) & ~mask & ~near_pos] = cv2.GC_BGD
    seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = cv2.GC_BGD
    for c in clicks:
        seeds[_disc(shape, c.row, c.col, radius)] = cv2.GC_FGD if c.positive else cv2.GC_BGD
    return seeds


def _grabcut(img: np.ndarray, seeds: np.ndarray, iterations: int = 4) -> np.ndarray | None:
    fg = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    bg = (seeds == cv2.GC_BGD) | (seeds == cv2.GC_PR_BGD)
    if not fg.any() or not bg.any():
        return None
    work = seeds.copy()
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(img, work, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return (work == cv2.GC_FGD) | (work == cv2.GC_PR_FGD)


def correct_mask(
    image: np.ndarray,
    mask: np.ndarray,
    clicks: Sequence[Click],
    probability: np.ndarray | None = None,
    *,
    local: bool = True,
) -> np.ndarray:
    """The mask of one crop after corrective clicks (see the module notes).

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` or ``(H, W, 3)`` crop of the image (any dtype).
    mask : np.ndarray
        bool ``(H, W)``: the lesion's current mask on the crop.
    clicks : sequence of Click
        In crop coordinates; all clicks so far on this lesion (later ones win where
        their discs overlap).
    probability : np.ndarray, optional
        float ``(H, W)`` model probability on the crop (its certain regions become
        hard seeds).
    local : bool
        Apply only the regions of change that touch a click (default) rather than the
        whole GrabCut result.

    Returns
    -------
    np.ndarray
        bool ``(H, W)``, the corrected mask.
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    if not clicks:
        return mask.copy()
    scale = min(1.0, _SIDE / max(h, w))
    size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
    img = _as_uint8_rgb(image)
    small_mask, small_prob, small_clicks = mask, probability, list(clicks)
    if scale < 1.0:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5
        if probability is not None:
            small_prob = cv2.resize(np.asarray(probability, np.float32), size, interpolation=cv2.INTER_LINEAR)
        small_clicks = [Click(c.row * size[1] / h, c.col * size[0] / w, c.positive) for c in clicks]
    # Seed disc: ~2 % of the crop, at least 2 px (the click is sure about its spot).
    radius = max(2.0, 0.02 * max(small_mask.shape))
    cut = _grabcut(img, _seeds(small_mask, small_prob, small_clicks, radius))
    if cut is None:
        cut = small_mask.copy()
    if scale < 1.0:
        cut = cv2.resize(cut.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    full_radius = radius / scale
    out = _apply_locally(mask, cut, clicks, full_radius) if local else cut
    for c in clicks:  # the clicked spot follows the click, whatever GrabCut did
        out[_disc(out.shape, c.row, c.col, full_radius)] = c.positive
    return _tidy(out, mask, clicks)


def _apply_locally(
    mask: np.ndarray, cut: np.ndarray, clicks: Sequence[Click], radius: float
) -> np.ndarray:
    """``mask`` with the regions where ``cut`` differs applied only if they touch a click."""
    out = mask.copy()
    touch = np.zeros(mask.shape, bool)
    for c in clicks:
        touch |= _disc(mask.shape, c.row, c.col, 2 * radius)
    for changed, value in ((cut & ~mask, True), (~cut & mask, False)):
        labels, n = ndimage.label(changed)
        if n == 0:
            continue
        hit = np.unique(labels[touch & changed])
        hit = hit[hit > 0]
        if hit.size:
            out[np.isin(labels, hit)] = value
    return out


def _tidy(mask: np.ndarray, before: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
    """Drop new islands that hold no positive click; fill new holes that hold no
    negative click (islands and holes the mask had before are the user's: kept)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    keep = {int(v) for v in np.unique(labels[before & mask]) if v}
    inside = lambda r, c: 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]  # noqa: E731
    for c in clicks:
        r, col = int(round(c.row)), int(round(c.col))
        if c.positive and inside(r, col) and labels[r, col]:
            keep.add(int(labels[r, col]))
    if not keep:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep.add(int(np.argmax(sizes)))
    out = np.isin(labels, sorted(keep))
    holes, nh = ndimage.label(fill_holes(out) & ~out)
    fill = np.zeros(nh + 1, bool)
    fill[1:] = True
    fill[np.unique(holes[~before & holes.astype(bool) & ~_new_hole_ok(before)])] = False
    for c in clicks:
        r, col = int(round(c.row)), int(round(c.col))
        if not c.positive and inside(r, col):
            fill[holes[r, col]] = False
    fill[0] = False
    return out | fill[holes]


def _new_hole_ok(before: np.ndarray) -> np.ndarray:
    """Pixels where a hole may be filled: not inside a hole the mask already had."""
    return ~(fill_holes(before) & ~before)


def correct_lesion(
    plane: np.ndarray,
    mask: np.ndarray,
    clicks: Sequence[Click],
    probability: np.ndarray | None = None,
    **kwargs: object,
) -> np.ndarray:
    """:func:`correct_mask` on the crop around the lesion, pasted back into the plane.

    Parameters
    ----------
    plane : np.ndarray
        The image plane ``(H, W)`` / ``(H, W, 3)``.
    mask : np.ndarray
        bool ``(H, W)``: the lesion's full-plane mask.
    clicks : sequence of Click
        Plane coordinates.
    probability : np.ndarray, optional
        Full-plane model probability (``None`` where unknown).

    Returns
    -------
    np.ndarray
        bool ``(H, W)``: the corrected full-plane mask (nothing changes outside the crop).
    """
    mask = np.asarray(mask, bool)
    rs, cs = correction_box(mask, clicks)
    local = [Click(c.row - rs.start, c.col - cs.start, c.positive) for c in clicks]
    prob = None if probability is None else np.asarray(probability)[rs, cs]
    out = mask.copy()
    out[rs, cs] = correct_mask(np.asarray(plane)[rs, cs], mask[rs, cs], local, prob, **kwargs)
    return out


def error_click(mask: np.ndarray, truth: np.ndarray) -> Click | None:
    """The simulated user's next click: the point deepest inside the largest error region.

    Positive if that region is lesion the mask missed, negative if it is wrongly covered;
    ``None`` when the mask is already exact.

    >>> t = np.zeros((30, 30), bool); t[5:25, 5:25] = True
    >>> m = t.copy(); m[14:25, 14:25] = False
    >>> error_click(m, t)
    Click(row=19.0, col=19.0, positive=True)
    """
    err = np.asarray(mask, bool) ^ np.asarray(truth, bool)
    labels, n = ndimage.label(err)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = labels == int(np.argmax(sizes))
    # Distance to the region's edge, padded so the image border counts as an edge.
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Click(float(r), float(c), bool(truth[r, c]))
