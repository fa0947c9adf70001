"""Weak targets from RECIST: the ellipse, and its GrabCut refinement.

Both work inside a box around the measurement only, so the cost and the memory depend
on the lesion, not on the image (a 3000x2000 photograph or a 512x512x300 volume is
never copied per lesion).

The ellipse has the two RECIST diameters as axes. A reader rarely bisects both axes, so
by default (``mode="quadrant"``) it is built from four quarter-ellipses centred at the
crossing, each with the two half-axis reaches of its quadrant as semi-axes: the outline
passes through all four endpoints, and it is the plain ellipse when the axes bisect each
other. ``mode="centred"`` is the plain ellipse: centred at the crossing, semi-axes L/2
and W/2, rotated with the long axis.

Examples
--------
>>> from napari_recist_seg.recist import Recist
>>> r = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]])
>>> m = ellipse_mask(r, (32, 64))
>>> m.shape, m.dtype.name, bool(m[10, 30]), bool(m[10, 10]), bool(m[10, 9])
((32, 64), 'bool', True, True, False)
>>> round(int(m.sum()) / (math.pi * 20 * 10), 2)  # area close to pi * a * b
1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, overload

import numpy as np
from scipy import ndimage

from napari_recist_seg.recist import Recist, RecistError

__all__ = [
    "EllipseMode",
    "GrabCutResult",
    "crop_box",
    "ellipse_crop",
    "ellipse_mask",
    "grabcut_mask",
    "to_uint8_rgb",
]

EllipseMode = Literal["quadrant", "centred"]

# Semi-axes shorter than this (px) are raised to it: a crossing at an axis' very end
# would otherwise give a quadrant of zero size and a division by zero.
_MIN_REACH = 0.5
# The seed of GrabCut's k-means initialisation (deterministic targets).
GRABCUT_SEED = 0


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


# -- GrabCut -------------------------------------------------------------------------------


@dataclass
class GrabCutResult:
    """What :func:`grabcut_mask` produced.

    Attributes
    ----------
    mask : ndarray of bool, shape (rows, cols)
        The lesion mask (GrabCut's, or the ellipse when GrabCut degenerated).
    method : {"grabcut", "ellipse"}
        Which mask was returned.
    reason : str
        Why GrabCut was not used (empty when it was).
    area_ratio : float
        GrabCut's area over the ellipse's (before any fallback; NaN if it did not run).
    """

    mask: np.ndarray
    method: str
    reason: str = ""
    area_ratio: float = float("nan")

    @property
    def fell_back(self) -> bool:
        return self.method != "grabcut"


def _plane(image: np.ndarray, recist: Recist) -> np.ndarray:
    """The 2D (grey) or RGB plane the RECIST lies on (a view, never a copy)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3]
    if image.ndim == 3:
        if recist.slice_index is None:
            raise RecistError(
                f"the image is a {'x'.join(map(str, image.shape))} volume but the RECIST "
                "has no slice index"
            )
        if not 0 <= recist.slice_index < image.shape[0]:
            raise RecistError(
                f"slice {recist.slice_index} is outside the volume (0..{image.shape[0] - 1})"
            )
        return image[recist.slice_index]
    raise ValueError(f"expected a 2D, RGB or (Z, H, W) image; got shape {image.shape}")


def to_uint8_rgb(
    crop: np.ndarray, window: tuple[float, float] | None = None
) -> np.ndarray:
    """A grey or RGB crop as contiguous 3-channel uint8 (what ``cv2.grabCut`` needs).

    Parameters
    ----------
    crop : ndarray
        ``(H, W)`` grey or ``(H, W, 3)`` RGB, any numeric dtype; NaNs become the lowest
        value.
    window : (level, width), optional
        Intensity window for grey images (e.g. CT in HU: ``(40, 400)``). Without it,
        uint8 is used as is and other dtypes are stretched between their 1st and 99th
        percentiles.

    Examples
    --------
    >>> to_uint8_rgb(np.array([[-160.0, 40.0, 240.0]]), window=(40, 400))[0, :, 0].tolist()
    [0, 128, 255]
    """
    crop = np.asarray(crop)
    if crop.ndim == 3 and crop.dtype == np.uint8 and window is None:
        return np.ascontiguousarray(crop[..., :3])
    x = crop.astype(np.float32)
    finite = np.isfinite(x)
    if window is not None:
        level, width = (float(v) for v in window)
        if not width > 0:
            raise ValueError(f"window width must be positive, got {width}")
        lo, hi = level - width / 2, level + width / 2
    elif crop.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    elif crop.dtype == np.bool_:
        lo, hi = 0.0, 1.0
    elif crop.ndim == 3 and crop.dtype == np.uint16:
        lo, hi = 0.0, 65535.0
    elif crop.ndim == 3 and np.issubdtype(crop.dtype, np.floating) and (
        not finite.any() or float(np.nanmax(np.where(finite, x, np.nan))) <= 1.0
    ):
        lo, hi = 0.0, 1.0  # float RGB in [0, 1]
    elif finite.any():
        lo, hi = (float(v) for v in np.percentile(x[finite], [1.0, 99.0]))
    else:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    x = np.where(finite, x, lo)
    y = np.clip((x - lo) * (255.0 / (hi - lo)), 0, 255)
    y = np.rint(y).astype(np.uint8)
    if y.ndim == 2:
        y = np.repeat(y[:, :, None], 3, axis=2)
    return np.ascontiguousarray(y)


def _keep_component_at(fg: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    if n == 0:
        return fg
    lab = labels[point]
    if lab == 0:
        # The crossing fell outside (can happen after resizing): keep the largest.
        lab = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return labels == lab


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance to the mask's boundary (px): negative inside, positive outside."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return (outside - inside).astype(np.float32)


# Degeneracy limits: GrabCut's area relative to the ellipse's, and to its box.
MIN_AREA_RATIO = 0.35
MAX_AREA_RATIO = 2.5
MAX_BOX_FILL = 0.9


@overload
def grabcut_mask(
    image: np.ndarray, recist: Recist, *, window: tuple[float, float] | None = ...,
    margin: float = ..., iterations: int = ..., core: float = ..., ring: float = ...,
    prior: float = ..., max_side: int | None = ..., mode: EllipseMode = ...,
    return_info: Literal[False] = ...,
) -> np.ndarray: ...


@overload
def grabcut_mask(
    image: np.ndarray, recist: Recist, *, window: tuple[float, float] | None = ...,
    margin: float = ..., iterations: int = ..., core: float = ..., ring: float = ...,
    prior: float = ..., max_side: int | None = ..., mode: EllipseMode = ...,
    return_info: Literal[True],
) -> GrabCutResult: ...


def grabcut_mask(
    image: np.ndarray,
    recist: Recist,
    *,
    window: tuple[float, float] | None = None,
    margin: float = 0.25,
    iterations: int = 5,
    core: float = 0.4,
    ring: float = 1.15,
    prior: float = 0.5,
    max_side: int | None = 112,
    mode: EllipseMode = "quadrant",
    return_info: bool = False,
) -> np.ndarray | GrabCutResult:
    """Refine the RECIST ellipse with OpenCV GrabCut in a box around it.

    Seeds, from the ellipse's normalised radius ``rho`` (1 on its outline): definite
    foreground for ``rho <= core`` and on the RECIST lines, probable foreground inside
    the ellipse, probable background for ``1 < rho <= ring``, definite background
    beyond. Only the box around the ellipse plus ``margin`` is processed (shrunk to
    ``max_side`` for speed). GrabCut's cut keeps the connected component at the
    crossing, with holes filled; its boundary is then pulled towards the ellipse's by
    ``prior`` (a weighted mean of the two signed distance maps: 0 = GrabCut as is,
    1 = the ellipse). Raw GrabCut follows colour edges too eagerly on dermoscopy (it
    keeps the dark core of a lesion and drops its paler rim); the mean keeps what the
    image says while the measurement bounds it (see ``benchmarks/targets_accuracy.py``).
    When GrabCut degenerates (no usable background, a cut much smaller or much larger
    than the ellipse, or one that fills its box) the ellipse is returned instead.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` grey (uint8, uint16, float, e.g. CT in HU), ``(H, W, 3|4)`` RGB(A)
        (uint8 used as is), or a ``(Z, H, W)`` volume (the RECIST's slice is used).
    recist : Recist
        The measurement, in pixel coordinates of the image plane.
    window : (level, width), optional
        Grey-level window (CT: e.g. ``(40, 400)``); default: uint8 as is, other
        dtypes stretched between the crop's 1st and 99th percentiles.
    margin : float
        Context around the ellipse's box, as a fraction of the long axis (at least 8
        px).
    iterations : int
        GrabCut iterations.
    core, ring : float
        Normalised radii of the definite-foreground core and of the outer edge of the
        probable-background ring.
    prior : float in [0, 1]
        Weight of the ellipse in the final boundary.
    max_side : int, optional
        Larger crops are shrunk to this side for GrabCut and the result is scaled
        back; ``None`` keeps full resolution.
    mode : {"quadrant", "centred"}
        Which ellipse seeds GrabCut, serves as the prior and as the fallback.
    return_info : bool
        Return a :class:`GrabCutResult` (mask, method, reason) instead of the mask.

    Returns
    -------
    ndarray of bool, shape (rows, cols), or GrabCutResult

    Raises
    ------
    RecistError
        If the RECIST is degenerate, outside the image, or its slice is outside the
        volume.

    Examples
    --------
    >>> from napari_recist_seg.recist import Recist
    >>> img = np.full((64, 64), 50, np.uint8)
    >>> img[20:44, 12:52] = 200  # a bright 24 x 40 rectangle
    >>> res = grabcut_mask(img, Recist([[32, 12], [32, 51]], [[20, 32], [43, 32]]),
    ...                    return_info=True)
    >>> res.method, res.mask.shape
    ('grabcut', (64, 64))
    """
    import cv2

    if not 0.0 <= prior <= 1.0:
        raise ValueError(f"prior must be in [0, 1], got {prior}")
    plane = _plane(np.asarray(image), recist)
    rows, cols = plane.shape[:2]
    frame = _frame(recist, mode)
    pad = max(8.0, margin * recist.long_length)
    box = crop_box(frame.outline(max(ring, 1.0)), (rows, cols), margin=pad + 1.0)
    h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
    if h == 0 or w == 0:
        raise RecistError(f"the RECIST lies outside the {rows}x{cols} image")
    off = np.array([box[0].start, box[1].start], float)
    full = np.zeros((rows, cols), bool)

    rho = _rho_in_box(frame, box)
    ellipse = rho <= 1.0 + 1e-9
    ell_area = int(ellipse.sum())

    def result(mask_crop: np.ndarray, method: str, reason: str = "", ratio: float = math.nan):
        full[box] = mask_crop
        if return_info:
            return GrabCutResult(full, method, reason, ratio)
        return full

    if ell_area == 0:
        return result(ellipse, "ellipse", "the ellipse covers no pixel centre")

    img = to_uint8_rgb(plane[box], window)
    if int(img.max()) - int(img.min()) < 2:
        return result(ellipse, "ellipse", "the image is flat around the lesion")
    scale = 1.0
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2: (width, height)
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        sh, sw = img.shape[:2]
        # Centres of the small pixels, in image coordinates.
        rr = (np.arange(sh, dtype=float)[:, None] + 0.5) / scale - 0.5 + off[0]
        cc = (np.arange(sw, dtype=float)[None, :] + 0.5) / scale - 0.5 + off[1]
        rho_s = frame.rho(rr, cc)
    else:
        rho_s = rho

    seeds = np.full(rho_s.shape, cv2.GC_BGD, np.uint8)
    seeds[rho_s <= ring] = cv2.GC_PR_BGD
    seeds[rho_s <= 1.0] = cv2.GC_PR_FGD
    seeds[rho_s <= core] = cv2.GC_FGD
    # The drawn axes are lesion by definition (a reader measures across the lesion).
    for seg in (recist.long_axis, recist.short_axis):
        p0, p1 = ((seg - off + 0.5) * scale - 0.5)[:, ::-1]  # (x, y) for cv2
        cv2.line(
            seeds,
            (int(round(p0[0])), int(round(p0[1]))),
            (int(round(p1[0])), int(round(p1[1]))),
            int(cv2.GC_FGD),
            1,
        )
    n_bg = int(np.count_nonzero((seeds == cv2.GC_BGD) | (seeds == cv2.GC_PR_BGD)))
    if n_bg < 16:
        return result(ellipse, "ellipse", "no background around the ellipse inside the image")

    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    try:
        # GrabCut seeds its colour models with k-means on OpenCV's (per-thread) random
        # generator: reseed it so that a lesion's target never depends on what ran before.
        cv2.setRNGSeed(GRABCUT_SEED)
        cv2.grabCut(img, seeds, None, bgd, fgd, int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:  # e.g. a flat image: the colour models cannot be fitted
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        return result(ellipse, "ellipse", f"GrabCut failed: {lines[-1] if lines else 'cv2 error'}")
    fg = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    ell_s = rho_s <= 1.0 + 1e-9
    centre = (frame.centre - off + 0.5) * scale - 0.5
    ci = (
        int(np.clip(round(centre[0]), 0, fg.shape[0] - 1)),
        int(np.clip(round(centre[1]), 0, fg.shape[1] - 1)),
    )
    fg = ndimage.binary_fill_holes(_keep_component_at(fg, ci))
    ell_area_s = max(int(ell_s.sum()), 1)
    area = int(fg.sum())
    ratio = area / ell_area_s
    if area == 0:
        return result(ellipse, "ellipse", "GrabCut found no lesion", ratio)
    if ratio < MIN_AREA_RATIO:
        return result(
            ellipse, "ellipse", f"GrabCut's cut is tiny ({ratio:.0%} of the ellipse)", ratio
        )
    if ratio > MAX_AREA_RATIO:
        return result(
            ellipse, "ellipse", f"GrabCut's cut is huge ({ratio:.0%} of the ellipse)", ratio
        )
    if area > MAX_BOX_FILL * fg.size and ell_area_s < 0.7 * fg.size:
        # Touching most of the box means the cut found no lesion boundary.
        return result(ellipse, "ellipse", "GrabCut's cut fills its box", ratio)

    if prior > 0 or scale != 1.0:
        # Distances in small pixels; the blend is resized as a smooth field so the
        # full-resolution outline is not blocky.
        sdf = (1.0 - prior) * _signed_distance(fg)
        if prior > 0:
            sdf += prior * _signed_distance(ell_s)
        if scale != 1.0:
            sdf = cv2.resize(sdf, (w, h), interpolation=cv2.INTER_LINEAR)
        fg = sdf <= 0
        ci = (
            int(np.clip(round(frame.centre[0] - off[0]), 0, h - 1)),
            int(np.clip(round(frame.centre[1] - off[1]), 0, w - 1)),
        )
        fg = ndimage.binary_fill_holes(_keep_component_at(fg, ci))
    return result(fg, "grabcut", "", ratio)
