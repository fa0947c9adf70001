"""RECIST geometry: the measurement, its validation, snapping and derivation from masks.

Pure numpy, no Qt. Points are ``(row, col)`` in pixel coordinates of the image array
(napari order); files use ``x = col, y = row`` (DeepLesion order) and the conversion
helpers here do the swap.

Examples
--------
>>> import numpy as np
>>> r = Recist(long_axis=[[10, 10], [10, 50]], short_axis=[[0, 30], [20, 30]])
>>> r.long_length, r.short_length
(40.0, 20.0)
>>> tuple(float(v) for v in r.crossing)
(10.0, 30.0)
>>> r.to_deeplesion()
[10.0, 10.0, 50.0, 10.0, 30.0, 0.0, 30.0, 20.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

# The thresholds and RecistError are re-exported: ``from napari_recist_seg.recist import``
# keeps working for them.
from napari_recist_seg.recist_geometry import (  # noqa: F401 - re-exported
    CROSSING_TOLERANCE,
    MAX_COORDINATE_PX,
    MIN_AXIS_LENGTH_PX,
    MIN_CROSSING_ANGLE_DEG,
    RecistError,
    _check_inside,
    _crossing_parameters,
    _keep_inside,
    _mask_axes,
    plane_shape,
)

__all__ = [
    "FEATURE_NAMES",
    "Recist",
    "RecistError",
    "plane_shape",
    "recist_from_mask",
    "shape_features",
    "snap",
]

def _check_range(recist: "Recist") -> None:
    """Refuse coordinates beyond any image: lengths and the crossing would overflow to
    inf / NaN and the message would read "crossing at nan%"."""
    largest = float(np.abs(recist.endpoints).max())
    if largest > MAX_COORDINATE_PX:
        raise RecistError(
            f"a coordinate is out of range ({largest:.3g} px; at most {MAX_COORDINATE_PX:.0e})"
        )


def _as_segment(points: object, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.shape != (2, 2):
        raise RecistError(
            f"{name} must be two (row, col) endpoints, shape (2, 2); got shape {arr.shape}"
        )
    return arr


@dataclass(frozen=True, eq=False)
class Recist:
    """One RECIST measurement: a long axis and a short axis on one image plane.

    Parameters
    ----------
    long_axis, short_axis : array-like, shape (2, 2)
        Endpoints ``[[row1, col1], [row2, col2]]`` in pixels.
    slice_index : int, optional
        Index of the axial slice for volumes; ``None`` for 2D images.
    spacing : (float, float), optional
        Pixel size in mm as ``(row_mm, col_mm)``; ``None`` when unknown.

    Notes
    -----
    Construction does not validate (so that bad input can be held and reported);
    call :meth:`validate` or :func:`snap` before use.
    """

    long_axis: np.ndarray
    short_axis: np.ndarray
    slice_index: int | None = None
    spacing: tuple[float, float] | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "long_axis", _as_segment(self.long_axis, "long axis"))
        object.__setattr__(self, "short_axis", _as_segment(self.short_axis, "short axis"))
        if self.spacing is not None:
            sr, sc = (float(v) for v in self.spacing)
            object.__setattr__(self, "spacing", (sr, sc))
        if self.slice_index is not None:
            object.__setattr__(self, "slice_index", int(self.slice_index))

    # -- lengths -------------------------------------------------------------------
    @property
    def long_length(self) -> float:
        """Long-axis length in pixels."""
        return float(np.linalg.norm(self.long_axis[1] - self.long_axis[0]))

    @property
    def short_length(self) -> float:
        """Short-axis length in pixels."""
        return float(np.linalg.norm(self.short_axis[1] - self.short_axis[0]))

    def _length_mm(self, seg: np.ndarray) -> float | None:
        if self.spacing is None:
            return None
        d = (seg[1] - seg[0]) * np.asarray(self.spacing)
        return float(np.hypot(d[0], d[1]))

    @property
    def long_length_mm(self) -> float | None:
        """Long-axis length in mm (anisotropic spacing respected), ``None`` if unknown."""
        return self._length_mm(self.long_axis)

    @property
    def short_length_mm(self) -> float | None:
        """Short-axis length in mm, ``None`` if the spacing is unknown."""
        return self._length_mm(self.short_axis)

    # -- positions -----------------------------------------------------------------
    @property
    def endpoints(self) -> np.ndarray:
        """The four endpoints, shape (4, 2): long axis then short axis."""
        return np.vstack([self.long_axis, self.short_axis])

    @property
    def angle(self) -> float:
        """Angle of the long axis in radians, ``atan2(d_row, d_col)``, in (-pi/2, pi/2]."""
        d = self.long_axis[1] - self.long_axis[0]
        a = math.atan2(d[0], d[1])
        if a <= -math.pi / 2:
            a += math.pi
        elif a > math.pi / 2:
            a -= math.pi
        return a

    def crossing_parameters(self) -> tuple[float, float]:
        """Where the two axis lines meet, as fractions ``(t, u)`` along each axis.

        ``t = 0`` is the first long-axis endpoint, ``t = 1`` the second; likewise ``u``
        for the short axis. Both lie in [0, 1] when the segments cross.

        Raises
        ------
        RecistError
            If an axis has zero length or the axes are (nearly) parallel.
        """
        return _crossing_parameters(self.long_axis, self.short_axis)

    @property
    def crossing(self) -> np.ndarray:
        """The point ``(row, col)`` where the two axis lines meet."""
        t, _ = self.crossing_parameters()
        return self.long_axis[0] + t * (self.long_axis[1] - self.long_axis[0])

    @property
    def centre(self) -> np.ndarray:
        """Centre of the bounding box of the four endpoints, ``(row, col)``.

        This is the natural crop centre: it stays inside the lesion's extent even when
        the axes cross off-centre.
        """
        pts = self.endpoints
        return (pts.min(axis=0) + pts.max(axis=0)) / 2.0

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min_rc, max_rc)`` of the four endpoints."""
        pts = self.endpoints
        return pts.min(axis=0), pts.max(axis=0)

    # -- checks --------------------------------------------------------------------
    def validate(
        self,
        image_shape: Sequence[int] | None = None,
        *,
        tolerance: float = CROSSING_TOLERANCE,
    ) -> "Recist":
        """Check the measurement and return it unchanged.

        Parameters
        ----------
        image_shape : sequence of int, optional
            ``(rows, cols)`` (extra trailing channel dimensions are ignored; for
            volumes pass the ``(slices, rows, cols)`` shape and ``slice_index`` is
            checked too). Endpoints must lie inside the image.
        tolerance : float
            Fraction of each axis by which the crossing may fall outside it.

        Raises
        ------
        RecistError
            With the specific reason: NaN coordinates, zero-length axis, parallel or
            non-crossing axes, or endpoints / slice outside the image.
        """
        if not (np.all(np.isfinite(self.long_axis)) and np.all(np.isfinite(self.short_axis))):
            raise RecistError("coordinates contain NaN or infinity")
        _check_range(self)
        if self.long_length < MIN_AXIS_LENGTH_PX:
            raise RecistError(
                f"long axis has (near) zero length ({self.long_length:.2f} px)"
            )
        if self.short_length < MIN_AXIS_LENGTH_PX:
            raise RecistError(
                f"short axis has (near) zero length ({self.short_length:.2f} px)"
            )
        t, u = self.crossing_parameters()
        if not (-tolerance <= t <= 1 + tolerance and -tolerance <= u <= 1 + tolerance):
            raise RecistError(
                "the axes do not cross: the short axis must intersect the long axis "
                f"(crossing at {t:.0%} of the long axis and {u:.0%} of the short axis)"
            )
        if image_shape is not None:
            _check_inside(self.endpoints, image_shape, self.slice_index)
        return self

    # -- conversions ---------------------------------------------------------------
    def to_deeplesion(self) -> list[float]:
        """DeepLesion's 8 numbers: ``x1 y1 x2 y2`` (long) then ``x3 y3 x4 y4`` (short)."""
        out: list[float] = []
        for seg in (self.long_axis, self.short_axis):
            for r, c in seg:
                out += [float(c), float(r)]
        return out

    @classmethod
    def from_deeplesion(
        cls,
        values: Sequence[float],
        *,
        slice_index: int | None = None,
        spacing: tuple[float, float] | None = None,
    ) -> "Recist":
        """Build from DeepLesion's ``Measurement_coordinates`` (8 numbers, x/y order)."""
        v = np.asarray(values, dtype=float).ravel()
        if v.size != 8:
            raise RecistError(f"DeepLesion RECIST needs 8 numbers, got {v.size}")
        xy = v.reshape(4, 2)
        rc = xy[:, ::-1]
        return cls(rc[:2], rc[2:], slice_index=slice_index, spacing=spacing)

    @classmethod
    def from_lines(
        cls,
        line_a: np.ndarray,
        line_b: np.ndarray,
        *,
        spacing: tuple[float, float] | None = None,
    ) -> "Recist":
        """Build from two napari line shapes (each shape (2, 2) or (2, 3)).

        The longer line becomes the long axis. For 3D lines the first coordinate is
        the slice; both lines must lie on one slice.
        """
        a = np.asarray(line_a, dtype=float)
        b = np.asarray(line_b, dtype=float)
        if a.shape != b.shape or a.shape[0] != 2 or a.shape[1] not in (2, 3):
            raise RecistError(
                f"expected two lines of shape (2, 2) or (2, 3); got {a.shape} and {b.shape}"
            )
        slice_index = None
        if a.shape[1] == 3:
            slices = np.concatenate([a[:, 0], b[:, 0]])
            if np.ptp(slices) > 0.5:
                raise RecistError(
                    "the two lines lie on different slices; draw both axes on one slice"
                )
            slice_index = int(round(float(slices[0])))
            a, b = a[:, 1:], b[:, 1:]
        la = float(np.linalg.norm(a[1] - a[0]))
        lb = float(np.linalg.norm(b[1] - b[0]))
        long_axis, short_axis = (a, b) if la >= lb else (b, a)
        return cls(long_axis, short_axis, slice_index=slice_index, spacing=spacing)

    def to_lines(self, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """``(long_line, short_line)`` as napari line data of dimension ``ndim`` (2 or 3)."""
        if ndim == 2:
            return self.long_axis.copy(), self.short_axis.copy()
        if ndim == 3:
            z = float(self.slice_index or 0)
            return (
                np.column_stack([[z, z], self.long_axis]),
                np.column_stack([[z, z], self.short_axis]),
            )
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")

    def transformed(self, offset: Sequence[float], scale: float | Sequence[float]) -> "Recist":
        """Map points ``p -> (p - offset) * scale`` (e.g. into a resized crop)."""
        off = np.asarray(offset, dtype=float)
        sc = np.broadcast_to(np.asarray(scale, dtype=float), (2,))
        return replace(
            self,
            long_axis=(self.long_axis - off) * sc,
            short_axis=(self.short_axis - off) * sc,
        )

    def with_spacing(self, spacing: tuple[float, float] | None) -> "Recist":
        return replace(self, spacing=spacing)

    def __repr__(self) -> str:
        def fmt(seg: np.ndarray) -> str:
            return "[" + ", ".join(f"({r:.1f}, {c:.1f})" for r, c in seg) + "]"

        extra = f", slice={self.slice_index}" if self.slice_index is not None else ""
        return (
            f"Recist(long={fmt(self.long_axis)}, short={fmt(self.short_axis)}, "
            f"L={self.long_length:.1f}px, W={self.short_length:.1f}px{extra})"
        )


def snap(
    recist: Recist,
    *,
    tolerance: float = CROSSING_TOLERANCE,
    image_shape: Sequence[int] | None = None,
) -> Recist:
    """Apply the Bidirectional-tool rules to a drawn pair.

    The short axis is rotated to be perpendicular to the long axis, through the point
    where the two lines cross, keeping how far each short endpoint reaches on its side;
    if the short axis is then the longer one, the two swap. With ``image_shape``, a
    rotated short endpoint that would leave the image is pulled back inside along the
    perpendicular (its side of the short axis is shortened), so a RECIST drawn inside
    the image stays inside.

    Parameters
    ----------
    recist : Recist
        The drawn measurement (first axis treated as the long one).
    tolerance : float
        Fraction of each axis by which the crossing may fall outside it.
    image_shape : sequence of int, optional
        Image (or volume) shape, as for :meth:`Recist.validate`; keeps the snapped
        endpoints inside it.

    Raises
    ------
    RecistError
        If an axis has zero length or NaNs, the axes are parallel, or they do not cross.

    Examples
    --------
    >>> r = snap(Recist([[0, 0], [0, 10]], [[-3, 4], [2, 6]]))
    >>> r.short_axis.round(3).tolist()  # perpendicular, through the crossing at col 5.2
    [[-3.0, 5.2], [2.0, 5.2]]
    """
    if not (np.all(np.isfinite(recist.long_axis)) and np.all(np.isfinite(recist.short_axis))):
        raise RecistError("coordinates contain NaN or infinity")
    _check_range(recist)
    if recist.long_length < MIN_AXIS_LENGTH_PX or recist.short_length < MIN_AXIS_LENGTH_PX:
        raise RecistError("an axis has (near) zero length")
    t, u = recist.crossing_parameters()
    if not (-tolerance <= t <= 1 + tolerance and -tolerance <= u <= 1 + tolerance):
        raise RecistError(
            "the axes do not cross: draw the short axis across the long axis"
        )
    p, q = recist.long_axis
    d = (q - p) / recist.long_length
    normal = np.array([-d[1], d[0]])
    centre = p + float(np.clip(t, 0.0, 1.0)) * (q - p)
    reach = (recist.short_axis - centre) @ normal
    if image_shape is not None:
        reach = _keep_inside(centre, reach, normal, plane_shape(image_shape))
    short = centre + np.outer(reach, normal)
    out = replace(recist, short_axis=short)
    if out.short_length > out.long_length:
        out = replace(out, long_axis=out.short_axis, short_axis=out.long_axis)
    return out


def recist_from_mask(
    mask: np.ndarray,
    *,
    spacing: tuple[float, float] | None = None,
    per_component: bool = False,
    min_area: int = 4,
    slice_index: int | None = None,
) -> Recist | list[Recist]:
    """Derive RECIST from a binary lesion mask, as a reader would measure it.

    The long axis is the longest diameter (maximum Feret diameter, between pixel
    centres); the short axis is the longest extent perpendicular to it, measured in
    one-pixel slabs across the long axis.

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, cols)
        Lesion mask (non-zero = lesion).
    spacing : (float, float), optional
        Pixel size in mm ``(row_mm, col_mm)``, stored on the result.
    per_component : bool
        If True, return one RECIST per 8-connected component (largest first); else
        only the largest component's RECIST.
    min_area : int
        Components with fewer pixels are ignored.
    slice_index : int, optional
        Stored on the result (for a slice of a volume).

    Returns
    -------
    Recist or list of Recist

    Raises
    ------
    RecistError
        If the mask is empty (no component of ``min_area`` pixels) or the largest
        component is a point or a line.

    Examples
    --------
    >>> m = np.zeros((20, 30), bool)
    >>> m[5:10, 3:25] = True
    >>> r = recist_from_mask(m)
    >>> round(r.long_length, 2), round(r.short_length, 2)
    (21.38, 4.12)
    """
    axes = _mask_axes(mask, per_component=per_component, min_area=min_area)
    results = [
        Recist(long, short, slice_index=slice_index, spacing=spacing) for long, short in axes
    ]
    return results if per_component else results[0]


FEATURE_NAMES: tuple[str, ...] = (
    "log_long",
    "log_short",
    "aspect",
    "crossing_offset_long",
    "crossing_offset_short",
    "cos_2angle",
    "sin_2angle",
)


def shape_features(recist: Recist, *, use_mm: bool = False) -> np.ndarray:
    """Location-independent shape features of a RECIST, for clustering.

    The features (see ``FEATURE_NAMES``) are the log lengths, the aspect ratio W/L,
    how far off-centre the axes cross along each axis (0 = bisecting, 0.5 = at an end;
    the sign is dropped because an axis has no direction), and the orientation of the
    long axis doubled (an axis at 0 and at 180 degrees is the same axis).

    Examples
    --------
    >>> f = shape_features(Recist([[0, 0], [0, 40]], [[-10, 20], [10, 20]]))
    >>> dict(zip(FEATURE_NAMES, f.round(3).tolist()))["aspect"]
    0.5
    """
    if use_mm and recist.spacing is not None:
        L = recist.long_length_mm or 0.0
        W = recist.short_length_mm or 0.0
    else:
        L, W = recist.long_length, recist.short_length
    L = max(L, 1e-6)
    W = max(W, 1e-6)
    try:
        t, u = recist.crossing_parameters()
    except RecistError:
        t, u = 0.5, 0.5
    a = recist.angle
    return np.array(
        [
            math.log(L),
            math.log(W),
            W / L,
            abs(t - 0.5),
            abs(u - 0.5),
            math.cos(2 * a),
            math.sin(2 * a),
        ],
        dtype=float,
    )
