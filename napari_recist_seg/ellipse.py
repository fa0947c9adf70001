"""The RECIST ellipse: the weak target from the two diameters alone.

It works inside a box around the measurement only, so the cost and the memory depend
on the lesion, not on the image (a 3000x2000 photograph or a 512x512x300 volume is
never copied per lesion).

The ellipse has the two RECIST diameters as axes. A reader rarely bisects both axes, so
by default (``mode="quadrant"``) it is built from four quarter-ellipses centred at the
crossing, each with the two half-axis reaches of its quadrant as semi-axes: the outline
passes through all four endpoints, and it is the plain ellipse when the axes bisect each
other. ``mode="centred"`` is the plain ellipse: centred at the crossing, semi-axes L/2
and W/2, rotated with the long axis.

Its GrabCut refinement is :mod:`napari_recist_seg.grabcut`; both are re-exported by
:mod:`napari_recist_seg.targets`.

Examples
--------
>>> import math
>>> from napari_recist_seg.recist import Recist
>>> r = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]])
>>> m = ellipse_mask(r, (32, 64))
>>> m.shape, m.dtype.name, bool(m[10, 30]), bool(m[10, 10]), bool(m[10, 9])
((32, 64), 'bool', True, True, False)
>>> round(int(m.sum()) / (math.pi * 20 * 10), 2)  # area close to pi * a * b
1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from napari_recist_seg.recist import Recist, RecistError

__all__ = [
    "EllipseMode",
    "crop_box",
    "ellipse_crop",
    "ellipse_mask",
]

EllipseMode = Literal["quadrant", "centred"]

# Semi-axes shorter than this (px) are raised to it: a crossing at an axis' very end
# would otherwise give a quadrant of zero size and a division by zero.
_MIN_REACH = 0.5


@dataclass(frozen=True)
class _Frame:
    """An ellipse as ``centre + s * e1 + t * e2`` with per-side semi-axes."""

    centre: np.ndarray
    e1: np.ndarray  # long-axis direction (unit)
    e2: np.ndarray  # short-axis direction (unit; perpendicular in "centred" mode)
    a_neg: float  # reach along -e1
    a_pos: float  # reach along +e1
    b_neg: float
    b_pos: float

    def outline(self, scale: float = 1.0, n: int = 256) -> np.ndarray:
        """``n`` points on the outline of the ellipse scaled by ``scale``, shape (n, 2).

        Consecutive points are 2 pi / n apart in angle: for n = 256 a chord is within
        1e-4 of the radius of the arc, so their bounding box plus one pixel contains
        the ellipse.
        """
        phi = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        cos, sin = np.cos(phi), np.sin(phi)
        a = np.where(cos >= 0, self.a_pos, self.a_neg) * cos
        b = np.where(sin >= 0, self.b_pos, self.b_neg) * sin
        return self.centre + scale * (a[:, None] * self.e1 + b[:, None] * self.e2)

    def rho(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Normalised radius at ``(rows, cols)`` (broadcast): <= 1 inside, 1 on the outline."""
        dr = rows - self.centre[0]
        dc = cols - self.centre[1]
        # Solve d = s * e1 + t * e2 (the frame may be skewed when the axes are not
        # perpendicular: the axes are then conjugate diameters of the ellipse).
        det = self.e1[0] * self.e2[1] - self.e1[1] * self.e2[0]
        s = (dr * self.e2[1] - dc * self.e2[0]) / det
        t = (self.e1[0] * dc - self.e1[1] * dr) / det
        a = np.where(s >= 0, self.a_pos, self.a_neg)
        b = np.where(t >= 0, self.b_pos, self.b_neg)
        return np.sqrt((s / a) ** 2 + (t / b) ** 2)


def _frame(recist: Recist, mode: str) -> _Frame:
    """The ellipse's frame; raises :class:`RecistError` for an unusable measurement."""
    if not (np.all(np.isfinite(recist.long_axis)) and np.all(np.isfinite(recist.short_axis))):
        raise RecistError("coordinates contain NaN or infinity")
    L, W = recist.long_length, recist.short_length
    t, u = recist.crossing_parameters()  # raises for zero length / parallel axes
    p, q = recist.long_axis
    a, b = recist.short_axis
    e1 = (q - p) / L
    if mode == "centred":
        centre = p + t * (q - p)
        e2 = np.array([-e1[1], e1[0]])
        half_l, half_w = max(L / 2, _MIN_REACH), max(W / 2, _MIN_REACH)
        return _Frame(centre, e1, e2, half_l, half_l, half_w, half_w)
    if mode != "quadrant":
        raise ValueError(f"mode must be 'quadrant' or 'centred', got {mode!r}")
    # Axes that end a little short of each other still define the quadrants.
    t = min(max(t, 0.0), 1.0)
    u = min(max(u, 0.0), 1.0)
    centre = p + t * (q - p)
    e2 = (b - a) / W
    return _Frame(
        centre,
        e1,
        e2,
        max(t * L, _MIN_REACH),
        max((1 - t) * L, _MIN_REACH),
        max(u * W, _MIN_REACH),
        max((1 - u) * W, _MIN_REACH),
    )


def _plane_shape(shape: Sequence[int]) -> tuple[int, int]:
    """``(rows, cols)`` of an image shape: 2D, RGB(A) ``(H, W, C)`` or volume ``(Z, H, W)``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape  # type: ignore[return-value]
    if len(shape) == 3:
        return (shape[0], shape[1]) if shape[-1] in (3, 4) else (shape[1], shape[2])
    raise ValueError(f"expected a 2D image, RGB image or volume shape; got {shape}")


def crop_box(
    points: np.ndarray, shape: Sequence[int], margin: float = 0.0
) -> tuple[slice, slice]:
    """The pixel box (clipped to ``shape``) containing ``points`` plus ``margin`` px.

    Examples
    --------
    >>> crop_box(np.array([[2.5, 3.0], [7.2, 9.9]]), (8, 20), margin=1)
    (slice(1, 8, None), slice(2, 12, None))
    """
    rows, cols = _plane_shape(shape)
    lo = np.floor(points.min(axis=0) - margin).astype(int)
    hi = np.ceil(points.max(axis=0) + margin).astype(int) + 1
    r0, c0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    r1, c1 = min(int(hi[0]), rows), min(int(hi[1]), cols)
    return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))


def _rho_in_box(frame: _Frame, box: tuple[slice, slice]) -> np.ndarray:
    rr = np.arange(box[0].start, box[0].stop, dtype=float)[:, None]
    cc = np.arange(box[1].start, box[1].stop, dtype=float)[None, :]
    return frame.rho(rr, cc)


def ellipse_crop(
    recist: Recist, shape: Sequence[int], *, mode: EllipseMode = "quadrant"
) -> tuple[tuple[int, int], np.ndarray]:
    """The ellipse rasterised in its own bounding box only.

    Returns
    -------
    offset : (int, int)
        Top-left ``(row, col)`` of the crop in the image.
    mask : ndarray of bool
        The ellipse inside the box (clipped to the image; may be empty in size when the
        ellipse lies outside it).
    """
    frame = _frame(recist, mode)
    box = crop_box(frame.outline(), shape, margin=1.0)
    # A pixel belongs to the ellipse when its centre does (endpoints on pixel centres
    # are kept despite rounding).
    inside = _rho_in_box(frame, box) <= 1.0 + 1e-9
    return (box[0].start, box[1].start), inside


def ellipse_mask(
    recist: Recist, shape: Sequence[int], *, mode: EllipseMode = "quadrant"
) -> np.ndarray:
    """The ellipse whose axes are the two RECIST diameters, as a full-size mask.

    Parameters
    ----------
    recist : Recist
        The measurement; a short axis that is not perpendicular to the long one is
        used as drawn (the axes become conjugate diameters) in ``"quadrant"`` mode.
    shape : sequence of int
        Image shape: ``(rows, cols)``, ``(rows, cols, 3)`` or a volume ``(Z, rows,
        cols)`` (the mask is then the 2D plane of the RECIST's slice).
    mode : {"quadrant", "centred"}
        ``"quadrant"``: four quarter-ellipses centred at the crossing, the outline
        through all four endpoints. ``"centred"``: the plain ellipse centred at the
        crossing with semi-axes L/2 and W/2.

    Returns
    -------
    ndarray of bool, shape (rows, cols)

    Raises
    ------
    RecistError
        If an axis has zero length, NaNs, or the axes are parallel.
    """
    rows, cols = _plane_shape(shape)
    (r0, c0), crop = ellipse_crop(recist, shape, mode=mode)
    out = np.zeros((rows, cols), bool)
    out[r0 : r0 + crop.shape[0], c0 : c0 + crop.shape[1]] = crop
    return out
