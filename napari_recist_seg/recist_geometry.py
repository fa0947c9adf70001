"""RECIST geometry on plain arrays: crossing, in-image checks and clamps, mask axes.

The pure numpy (and OpenCV contour) helpers behind :mod:`napari_recist_seg.recist`; they
take and return ``(2, 2)`` axis arrays, never a :class:`~napari_recist_seg.recist.Recist`,
so that module can build on them. :class:`RecistError` and the thresholds live here
(the lowest module that raises or uses them); ``recist`` re-exports them.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

__all__ = [
    "CROSSING_TOLERANCE",
    "MAX_COORDINATE_PX",
    "MIN_AXIS_LENGTH_PX",
    "MIN_CROSSING_ANGLE_DEG",
    "RecistError",
    "plane_shape",
]

# Below this length (px) an axis is a click, not a measurement.
MIN_AXIS_LENGTH_PX = 1.0
# Axes closer than this to parallel (degrees) cannot define a crossing.
MIN_CROSSING_ANGLE_DEG = 10.0
# No image is this large (px); bigger coordinates are typos or hostile (1e308 overflows).
MAX_COORDINATE_PX = 1e9
# Slack (fraction of each axis) allowed when deciding whether two axes cross: hand-drawn
# lines end a little short of each other.
CROSSING_TOLERANCE = 0.05
_SQUARE3 = np.ones((3, 3), np.uint8)


class RecistError(ValueError):
    """A RECIST measurement that cannot be used; the message says why."""


# Named by its public home (tracebacks, doctests, pickles), where users import it from.
RecistError.__module__ = "napari_recist_seg.recist"


def _crossing_parameters(long_axis: np.ndarray, short_axis: np.ndarray) -> tuple[float, float]:
    """``(t, u)`` where the two axis lines meet (see :meth:`Recist.crossing_parameters`)."""
    p, q = long_axis
    a, b = short_axis
    d1, d2 = q - p, b - a
    n1, n2 = np.linalg.norm(d1), np.linalg.norm(d2)
    if n1 < 1e-9 or n2 < 1e-9:
        raise RecistError("an axis has zero length")
    cross = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(cross) / (n1 * n2) < math.sin(math.radians(MIN_CROSSING_ANGLE_DEG)):
        raise RecistError(
            "the axes are (nearly) parallel; the short axis must cross the long axis"
        )
    w = a - p
    t = (w[0] * d2[1] - w[1] * d2[0]) / cross
    u = (w[0] * d1[1] - w[1] * d1[0]) / cross
    return float(t), float(u)


def _check_inside(
    endpoints: np.ndarray, image_shape: Sequence[int], slice_index: int | None
) -> None:
    """Refuse endpoints (or a slice) outside the image; see :meth:`Recist.validate`."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) >= 3 and shape[-1] not in (3, 4):
        # A volume: the plane is the last two axes, the slice must be given.
        if slice_index is None:
            raise RecistError(
                f"the image is a {'x'.join(map(str, shape))} volume but the "
                "RECIST has no slice index"
            )
        if not 0 <= slice_index < shape[0]:
            raise RecistError(
                f"slice {slice_index} is outside the volume (0..{shape[0] - 1})"
            )
        rows, cols = shape[1], shape[2]
    else:
        rows, cols = shape[0], shape[1]
    pts = endpoints
    if (
        pts[:, 0].min() < -0.5
        or pts[:, 1].min() < -0.5
        or pts[:, 0].max() > rows - 0.5
        or pts[:, 1].max() > cols - 0.5
    ):
        raise RecistError(
            f"an endpoint lies outside the {rows}x{cols} image"
        )


def plane_shape(image_shape: Sequence[int]) -> tuple[int, int]:
    """``(rows, cols)`` of the plane a RECIST lies in (volume ``(Z, H, W)`` or image).

    Examples
    --------
    >>> plane_shape((40, 512, 512)), plane_shape((576, 768, 3)), plane_shape((5, 6))
    ((512, 512), (576, 768), (5, 6))
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) >= 3 and shape[-1] not in (3, 4):
        return shape[1], shape[2]
    return shape[0], shape[1]


def _keep_inside(
    centre: np.ndarray, reach: np.ndarray, normal: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Shorten each side of the rotated short axis so its endpoint stays in the image.

    Rotating a short axis drawn at the border about the crossing can swing an endpoint
    out of the image; the point is pulled back along the perpendicular (towards the
    crossing, which lies on the long axis and so inside), never refused.
    """
    eps = 1e-6  # a hair inside, so that rounding never puts the end back outside
    lo = np.array([-0.5 + eps, -0.5 + eps])
    hi = np.array([shape[0] - 0.5 - eps, shape[1] - 0.5 - eps])
    out = reach.astype(float).copy()
    for i, s in enumerate(out):
        step = s * normal
        scale = 1.0
        for k in range(2):
            end = centre[k] + step[k]
            if end < lo[k] and step[k] < 0:
                scale = min(scale, max(0.0, (lo[k] - centre[k]) / step[k]))
            elif end > hi[k] and step[k] > 0:
                scale = min(scale, max(0.0, (hi[k] - centre[k]) / step[k]))
        out[i] = s * scale
    return out


def _hull_points(comp: np.ndarray) -> np.ndarray:
    """Convex hull vertices ``(N, 2)`` (row, col) of one 8-connected component.

    The hull of a pixel set is the hull of its outer contour, so tracing the contour
    (OpenCV, 8-connected) and taking its integer hull is exact and needs no
    per-pixel work beyond the trace.
    """
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    xy = np.vstack([c.reshape(-1, 2) for c in contours])
    if len(xy) > 2:
        xy = cv2.convexHull(xy).reshape(-1, 2)
    return xy[:, ::-1].astype(float)


def _max_feret_pair(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two hull points farthest apart (exact: all pairs of hull vertices)."""
    # Hulls of pixel masks are small (a few hundred vertices): all pairs is exact and fast.
    # Rows and columns apart (two 2D arrays, not an (N, N, 2) one: a third of the time);
    # integer coordinates, so the squared distances and their first maximum are exact.
    r, c = points[:, 0], points[:, 1]
    dr = r[:, None] - r[None, :]
    dc = c[:, None] - c[None, :]
    d2 = dr * dr + dc * dc
    i, j = divmod(int(np.argmax(d2)), len(points))
    a, b = points[i], points[j]
    # A stable orientation: first endpoint is the upper (then left) one.
    if (float(b[0]), float(b[1])) < (float(a[0]), float(a[1])):
        a, b = b, a
    return a, b


def _long_axis(comp: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(a, b, length)``: the long axis of one component (``uint8`` 0/1), in its crop."""
    a, b = _max_feret_pair(_hull_points(comp))
    length = float(np.linalg.norm(b - a))
    if length < MIN_AXIS_LENGTH_PX:
        raise RecistError("the lesion is a single pixel; it has no measurable axes")
    return a, b, length


def _component_axes(
    comp: np.ndarray, offset: tuple[int, int],
    long: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(long_axis, short_axis)`` of one component (``uint8`` 0/1 crop whose corner is at
    ``offset``); ``long``: its :func:`_long_axis`, when the caller has it already."""
    a, b, length = _long_axis(comp) if long is None else long
    d = (b - a) / length
    normal = np.array([-d[1], d[0]])
    # Only the border pixels (an 8-neighbour outside) can be a slab's extreme: every
    # other pixel has a neighbour in its slab further out on either side (each
    # direction has one, whatever the angle). The same slabs, a tenth of the pixels.
    inner = cv2.erode(comp, _SQUARE3, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    # The flat indices (np.nonzero of a 2D mask is about 5x slower), in the same order.
    rows, cols = np.divmod(np.flatnonzero(comp > inner), comp.shape[1])
    # Coordinates along (s) and across (p) the long axis, without an (N, 2) matrix.
    rr = rows - a[0]
    cc = cols - a[1]
    s = rr * d[0] + cc * d[1]
    p = rr * normal[0] + cc * normal[1]
    # Slabs one pixel wide across the long axis; the widest slab gives the short axis.
    bins = np.round(s).astype(np.int64)
    bin0 = int(bins.min())
    bins -= bin0
    n_bins = int(bins.max()) + 1
    pmin = np.full(n_bins, np.inf)
    pmax = np.full(n_bins, -np.inf)
    np.minimum.at(pmin, bins, p)
    np.maximum.at(pmax, bins, p)
    width = pmax - pmin
    # The short axis must cross the long one: only slabs reaching the long axis (to half
    # a pixel) count; the widest slab of a crescent can lie beside it. (An empty slab,
    # inf / -inf, crosses nothing.)
    crosses = (pmin <= 0.5) & (pmax >= -0.5)
    width[~crosses] = -1
    k = int(np.argmax(width))
    # Below the minimum axis length the result would fail ``validate``: a line, not a lesion.
    if width[k] < MIN_AXIS_LENGTH_PX:
        raise RecistError("the lesion is a thin line; it has no measurable short axis")
    s_k = float(min(max(k + bin0, 0.0), length))  # np.clip's value, without its overhead
    base = a + s_k * d
    lo, hi = min(float(pmin[k]), 0.0), max(float(pmax[k]), 0.0)
    short = np.array([base + lo * normal, base + hi * normal])
    shift = np.asarray(offset, dtype=float)
    return np.array([a, b]) + shift, short + shift


def _mask_axes(
    mask: np.ndarray, *, per_component: bool, min_area: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(long_axis, short_axis)`` of the mask's largest component (all, largest first,
    with ``per_component``); see :func:`~napari_recist_seg.recist.recist_from_mask`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RecistError(f"mask must be 2D (rows, cols); got shape {mask.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        (mask != 0).view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    if n <= 1:
        raise RecistError("the mask is empty")
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = [int(i) + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area]
    if not order:
        raise RecistError(f"the mask has no component of at least {min_area} pixels")
    if not per_component:
        order = order[:1]
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for lab in order:
        c0, r0, w, h = (int(v) for v in stats[lab, :4])
        comp = (labels[r0 : r0 + h, c0 : c0 + w] == lab).view(np.uint8)
        try:
            results.append(_component_axes(comp, (r0, c0)))
        except RecistError:
            if not per_component:
                raise
    return results
