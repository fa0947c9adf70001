"""Pairing rules that forgive hands: stray lines, wrong partners, endpoints past the border.

Pure geometry on ``(2, 2)`` plane segments (``(row, col)`` endpoints); the annotator's
session (:mod:`napari_recist_seg.annotation`) calls these while it reconciles the
Shapes layer.

- a line shorter than a few *screen* pixels is a stray click, not an axis
  (:func:`stray_length`, :func:`is_stray`);
- a new line pairs with an open line only when the two form a valid RECIST
  (:func:`pair_problem` says why not);
- an endpoint dragged a little past the image border is pulled back onto it along its
  line (:func:`clip_segment`), instead of making the whole lesion invalid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_recist_seg.recist import Recist, RecistError, snap

__all__ = ["STRAY_SCREEN_PX", "clip_segment", "is_stray", "pair_problem", "stray_length"]

#: Lines shorter than this many screen pixels are stray clicks (a real axis, even of a
#: tiny lesion, is drawn zoomed in and spans more than this on screen).
STRAY_SCREEN_PX = 4.0


def stray_length(zoom: float, screen_px: float = STRAY_SCREEN_PX) -> float:
    """Shortest axis in data pixels at canvas ``zoom`` (screen px per data px).

    >>> stray_length(1.0), stray_length(4.0), stray_length(0.5)
    (4.0, 1.0, 8.0)
    """
    zoom = float(zoom)
    if not np.isfinite(zoom) or zoom <= 0:
        return float(screen_px)
    return float(screen_px) / zoom


def is_stray(segment: np.ndarray, min_length: float) -> bool:
    """``True`` when the segment is shorter than ``min_length`` (data px).

    >>> is_stray(np.array([[5.0, 5.0], [5.0, 6.0]]), 4.0)
    True
    >>> is_stray(np.array([[5.0, 5.0], [5.0, 15.0]]), 4.0)
    False
    """
    seg = np.asarray(segment, float)
    return float(np.linalg.norm(seg[1] - seg[0])) < float(min_length)


def clip_segment(segment: np.ndarray, plane_shape: Sequence[int]) -> np.ndarray:
    """Pull endpoints that lie outside the plane back onto its border, along the line.

    The image spans ``-0.5 .. rows - 0.5`` (pixel edges). A segment entirely outside is
    returned unchanged (the session then refuses it with its own message).

    >>> clip_segment(np.array([[10.0, -3.0], [10.0, 20.0]]), (64, 64)).tolist()
    [[10.0, -0.5], [10.0, 20.0]]
    >>> clip_segment(np.array([[0.0, 0.0], [70.0, 70.0]]), (64, 64)).tolist()
    [[0.0, 0.0], [63.5, 63.5]]
    """
    seg = np.asarray(segment, float).copy()
    lo = np.array([-0.5, -0.5])
    hi = np.array([float(plane_shape[0]) - 0.5, float(plane_shape[1]) - 0.5])
    p, d = seg[0], seg[1] - seg[0]
    t0, t1 = 0.0, 1.0
    # Liang-Barsky: intersect the parameter range [0, 1] with each slab.
    for k in range(2):
        if abs(d[k]) < 1e-12:
            if p[k] < lo[k] or p[k] > hi[k]:
                return seg
            continue
        a, b = (lo[k] - p[k]) / d[k], (hi[k] - p[k]) / d[k]
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    if t0 > t1:
        return seg
    out = np.vstack([p + t0 * d, p + t1 * d])
    return np.clip(out, lo, hi)  # rounding must not leave a hair outside


def pair_problem(
    first: np.ndarray,
    second: np.ndarray,
    plane_shape: Sequence[int],
    *,
    first_slice: int | None = None,
    second_slice: int | None = None,
) -> str | None:
    """Why two plane segments are not a RECIST pair, or ``None`` when they are.

    >>> pair_problem(np.array([[10.0, 0], [10, 20]]), np.array([[5.0, 10], [15, 10]]), (64, 64))
    >>> pair_problem(np.array([[10.0, 0], [10, 20]]), np.array([[30.0, 10], [40, 10]]), (64, 64))[:21]
    'the axes do not cross'
    """
    if first_slice != second_slice:
        return f"the lines are on slices {first_slice} and {second_slice}"
    try:
        snapped = snap(Recist(np.asarray(first, float), np.asarray(second, float)))
        snapped.validate(tuple(int(s) for s in plane_shape))
    except RecistError as exc:
        return str(exc)
    return None
