"""GrabCut refinement of the RECIST ellipse (a weak target that follows the image).

:func:`grabcut_mask` is a short pipeline of private steps (in the way of scikit-image's
``random_walker``): the crop box around the ellipse, the crop as small uint8 RGB, the
seeds from the ellipse's normalised radius, GrabCut, the connected cut at the crossing
checked against the ellipse, and the boundary pulled towards the ellipse's. A step that
finds GrabCut degenerate raises :class:`_Degenerate`, and the ellipse is returned with
its reason. Re-exported by :mod:`napari_recist_seg.targets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

from napari_recist_seg.ellipse import EllipseMode, _Frame, _frame, _rho_in_box, crop_box
from napari_recist_seg.mask_holes import fill_holes
from napari_recist_seg.recist import Recist, RecistError

__all__ = ["GRABCUT_SEED", "GrabCutResult", "grabcut_mask", "to_uint8_rgb"]

# The seed of GrabCut's k-means initialisation (deterministic targets).
GRABCUT_SEED = 0


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
    from scipy import ndimage  # slow to import (0.3-0.8 s): loaded when GrabCut runs

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
    from scipy import ndimage  # slow to import (0.3-0.8 s): loaded when GrabCut runs

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
    if not 0.0 <= prior <= 1.0:
        raise ValueError(f"prior must be in [0, 1], got {prior}")
    plane = _plane(np.asarray(image), recist)
    frame = _frame(recist, mode)
    crop = _crop_around(plane.shape[:2], recist, frame, margin, ring)
    try:
        small = _small_crop(plane[crop.box], crop, frame, window, max_side)
        seeds = _seeds(small, recist, crop, core, ring)
        fg = _grabcut(small.image, seeds, iterations)
        fg, ell_s, ratio = _cut_at_crossing(fg, small, crop, frame)
        mask = _blend_with_ellipse(fg, ell_s, prior, small.scale, crop, frame)
        method, reason = "grabcut", ""
    except _Degenerate as why:
        mask, method, reason, ratio = crop.ellipse, "ellipse", why.reason, why.ratio
    full = np.zeros(plane.shape[:2], bool)
    full[crop.box] = mask
    return GrabCutResult(full, method, reason, ratio) if return_info else full


class _Degenerate(Exception):
    """GrabCut cannot be used here: the ellipse is the target (``reason`` says why)."""

    def __init__(self, reason: str, ratio: float = math.nan) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ratio = ratio


@dataclass(frozen=True)
class _Crop:
    """The box around the ellipse, in image pixels, and the ellipse inside it."""

    box: tuple[slice, slice]
    off: np.ndarray  # (row, col) of the box's top-left corner, float
    rho: np.ndarray  # the ellipse's normalised radius at the box's pixel centres
    ellipse: np.ndarray  # rho <= 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.box[0].stop - self.box[0].start, self.box[1].stop - self.box[1].start


@dataclass(frozen=True)
class _Small:
    """The crop as GrabCut sees it: uint8 RGB, shrunk by ``scale``, with its rho."""

    image: np.ndarray
    rho: np.ndarray
    scale: float


def _crop_around(shape: tuple[int, int], recist: Recist, frame: _Frame, margin: float,
                 ring: float) -> _Crop:
    """The box around the ellipse's outer ring plus ``margin`` (of the long axis, >= 8 px)."""
    rows, cols = shape
    pad = max(8.0, margin * recist.long_length)
    box = crop_box(frame.outline(max(ring, 1.0)), (rows, cols), margin=pad + 1.0)
    h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
    if h == 0 or w == 0:
        raise RecistError(f"the RECIST lies outside the {rows}x{cols} image")
    off = np.array([box[0].start, box[1].start], float)
    rho = _rho_in_box(frame, box)
    return _Crop(box, off, rho, rho <= 1.0 + 1e-9)


def _small_crop(pixels: np.ndarray, crop: _Crop, frame: _Frame,
                window: tuple[float, float] | None, max_side: int | None) -> _Small:
    """The crop as uint8 RGB, shrunk to ``max_side`` (GrabCut's cost grows with its size)."""
    import cv2

    if int(crop.ellipse.sum()) == 0:
        raise _Degenerate("the ellipse covers no pixel centre")
    img = to_uint8_rgb(pixels, window)
    if int(img.max()) - int(img.min()) < 2:
        raise _Degenerate("the image is flat around the lesion")
    h, w = crop.shape
    if max_side is None or max(h, w) <= max_side:
        return _Small(img, crop.rho, 1.0)
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2: (width, height)
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    sh, sw = img.shape[:2]
    # Centres of the small pixels, in image coordinates.
    rr = (np.arange(sh, dtype=float)[:, None] + 0.5) / scale - 0.5 + crop.off[0]
    cc = (np.arange(sw, dtype=float)[None, :] + 0.5) / scale - 0.5 + crop.off[1]
    return _Small(img, frame.rho(rr, cc), scale)


def _seeds(small: _Small, recist: Recist, crop: _Crop, core: float, ring: float) -> np.ndarray:
    """GrabCut's seed labels from rho (core, ellipse, ring, beyond) and the drawn axes."""
    import cv2

    rho_s, scale, off = small.rho, small.scale, crop.off
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
        raise _Degenerate("no background around the ellipse inside the image")
    return seeds


def _grabcut(img: np.ndarray, seeds: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut's foreground (definite or probable), seeded deterministically."""
    import cv2

    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    try:
        # GrabCut seeds its colour models with k-means on OpenCV's (per-thread) random
        # generator: reseed it so that a lesion's target never depends on what ran before.
        cv2.setRNGSeed(GRABCUT_SEED)
        cv2.grabCut(img, seeds, None, bgd, fgd, int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:  # e.g. a flat image: the colour models cannot be fitted
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise _Degenerate(f"GrabCut failed: {lines[-1] if lines else 'cv2 error'}") from None
    return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)


def _cut_at_crossing(fg: np.ndarray, small: _Small, crop: _Crop,
                     frame: _Frame) -> tuple[np.ndarray, np.ndarray, float]:
    """The cut's component at the crossing, holes filled, if its size is plausible.

    Returns the cut, the ellipse (both at GrabCut's scale) and their area ratio.
    """
    ell_s = small.rho <= 1.0 + 1e-9
    centre = (frame.centre - crop.off + 0.5) * small.scale - 0.5
    ci = (
        int(np.clip(round(centre[0]), 0, fg.shape[0] - 1)),
        int(np.clip(round(centre[1]), 0, fg.shape[1] - 1)),
    )
    fg = fill_holes(_keep_component_at(fg, ci))
    ell_area_s = max(int(ell_s.sum()), 1)
    area = int(fg.sum())
    ratio = area / ell_area_s
    if area == 0:
        raise _Degenerate("GrabCut found no lesion", ratio)
    if ratio < MIN_AREA_RATIO:
        raise _Degenerate(f"GrabCut's cut is tiny ({ratio:.0%} of the ellipse)", ratio)
    if ratio > MAX_AREA_RATIO:
        raise _Degenerate(f"GrabCut's cut is huge ({ratio:.0%} of the ellipse)", ratio)
    if area > MAX_BOX_FILL * fg.size and ell_area_s < 0.7 * fg.size:
        # Touching most of the box means the cut found no lesion boundary.
        raise _Degenerate("GrabCut's cut fills its box", ratio)
    return fg, ell_s, ratio


def _blend_with_ellipse(fg: np.ndarray, ell_s: np.ndarray, prior: float, scale: float,
                        crop: _Crop, frame: _Frame) -> np.ndarray:
    """The cut's boundary pulled towards the ellipse's by ``prior``, at full resolution."""
    import cv2

    if not (prior > 0 or scale != 1.0):
        return fg
    h, w = crop.shape
    # Distances in small pixels; the blend is resized as a smooth field so the
    # full-resolution outline is not blocky.
    sdf = (1.0 - prior) * _signed_distance(fg)
    if prior > 0:
        sdf += prior * _signed_distance(ell_s)
    if scale != 1.0:
        sdf = cv2.resize(sdf, (w, h), interpolation=cv2.INTER_LINEAR)
    fg = sdf <= 0
    ci = (
        int(np.clip(round(frame.centre[0] - crop.off[0]), 0, h - 1)),
        int(np.clip(round(frame.centre[1] - crop.off[1]), 0, w - 1)),
    )
    return fill_holes(_keep_component_at(fg, ci))
