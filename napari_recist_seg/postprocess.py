"""Post-processing of a crop's probability, and the lesion it gives: :class:`LesionResult`,
:func:`postprocess_mask` (the component a RECIST points at, holes filled),
:func:`measure_mask` (a RECIST measured on the mask) and the cluster probabilities."""

from __future__ import annotations

import importlib
import math
import threading
from dataclasses import dataclass, replace
from typing import Any, Sequence

import cv2
import numpy as np

from napari_recist_seg.mask_holes import fill_holes as _fill_holes
from napari_recist_seg.recist import Recist, RecistError, recist_from_mask, shape_features


class _LazyModule:
    """A module imported on first attribute access, safely from any thread.

    (importlib's ``LazyLoader`` is not: it puts a half-loaded module in
    ``sys.modules``, and two segmenter threads reaching ``ndimage.label`` at once saw
    an empty ``scipy.ndimage``.) Nothing goes into ``sys.modules`` until the real,
    ordinary import, which holds Python's import lock.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            with self._lock:
                if self._module is None:
                    self._module = importlib.import_module(self._name)
                module = self._module
        return getattr(module, attr)


# scipy.ndimage takes about 0.8 s to import on the 2-core CPU, a third of a cold
# `recist-seg segment`, and only post-processing (off by default) needs it.
ndimage: Any = _LazyModule("scipy.ndimage")

#: Masks with more pixels are measured on a decimated grid (see ``measure_mask``).
MEASURE_MAX_PIXELS = 1 << 20

_STRUCT8 = np.ones((3, 3), bool)


@dataclass
class LesionResult:
    """One segmented lesion; arrays cover only its crop box (clipped to the image).

    Attributes
    ----------
    recist : Recist
        The (snapped) prompt; for click mode the RECIST derived from the mask.
    offset : (int, int)
        Top-left ``(row, col)`` of ``mask`` in the image plane.
    mask : np.ndarray
        bool, the lesion inside the crop box.
    probability : np.ndarray
        float32 lesion probability, same shape as ``mask``.
    cluster : int or None
        RECIST shape cluster predicted by the auxiliary head (A1+L); ``None`` for A1.
    confidence : float or None
        Softmax probability of that cluster.
    measured : Recist or None
        RECIST measured on the predicted mask (image coordinates); ``None`` if the
        mask is empty or degenerate.
    """

    recist: Recist
    offset: tuple[int, int]
    mask: np.ndarray
    probability: np.ndarray
    cluster: int | None = None
    confidence: float | None = None
    measured: Recist | None = None

    @property
    def area_px(self) -> int:
        """Mask area in pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def area_mm2(self) -> float | None:
        """Mask area in mm² (``None`` when the spacing is unknown)."""
        sp = self.recist.spacing
        return None if sp is None else self.area_px * sp[0] * sp[1]

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of the crop box in the image plane."""
        r0, c0 = self.offset
        h, w = self.mask.shape
        return slice(r0, r0 + h), slice(c0, c0 + w)

    def _plane(self, target: np.ndarray) -> np.ndarray:
        # (Z, H, W) targets: paste on the RECIST's slice (a view, written in place).
        if target.ndim == 3 and self.recist.slice_index is not None:
            return target[self.recist.slice_index]
        if target.ndim != 2:
            raise ValueError(
                f"expected a (rows, cols) array or a (z, rows, cols) volume with a RECIST "
                f"slice index; got shape {target.shape}"
            )
        return target

    def paste_into(self, labels: np.ndarray, value: int) -> None:
        """Set ``labels`` to ``value`` where this lesion's mask is, in place.

        ``labels`` is the image plane ``(rows, cols)`` or, for a lesion on a volume
        slice, the ``(z, rows, cols)`` volume. Pixels outside the mask are untouched.
        """
        plane = self._plane(labels)
        rs, cs = self.slices
        if rs.stop > plane.shape[0] or cs.stop > plane.shape[1]:
            raise ValueError(
                f"the lesion's box {rs.start}:{rs.stop}, {cs.start}:{cs.stop} does not fit "
                f"an array of shape {plane.shape}"
            )
        plane[rs, cs][self.mask] = value

    def full_mask(self, shape: Sequence[int]) -> np.ndarray:
        """The mask as a bool array of the image (plane) ``shape``.

        ``shape`` may be the image shape itself: ``(H, W)``, ``(H, W, 3)`` (the colour
        axis is dropped) or ``(Z, H, W)`` (the mask is placed on the RECIST's slice).
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3 and self.recist.slice_index is None and shape[-1] in (3, 4):
            shape = shape[:2]
        out = np.zeros(shape, dtype=bool)
        self.paste_into(out, True)
        return out


def _largest(labels: np.ndarray, n: int, among: np.ndarray | None = None) -> int:
    """Label (1..n) of the largest component, optionally only among ``among`` labels."""
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    if among is not None:
        keep = np.zeros(n + 1, bool)
        keep[among] = True
        areas[~keep] = 0
    return int(np.argmax(areas)) if areas.max() > 0 else 0


def postprocess_mask(
    mask: np.ndarray, recist_local: Recist | None, *, fill_holes: bool = True
) -> np.ndarray:
    """Keep the lesion a RECIST points at and fill its holes.

    Parameters
    ----------
    mask : np.ndarray
        bool, the thresholded probability in a crop.
    recist_local : Recist or None
        The RECIST in the crop's pixel coordinates; ``None`` keeps the largest
        component.
    fill_holes : bool
        Fill holes of the kept component(s).

    Returns
    -------
    np.ndarray
        bool mask: the 8-connected component containing the crossing point of the
        axes; else the largest component overlapping the quadrilateral of the four
        RECIST endpoints; else (nothing overlaps) the largest component.

    Examples
    --------
    >>> m = np.zeros((20, 20), bool); m[2:10, 2:10] = True; m[14:18, 14:18] = True
    >>> m[5, 5] = False
    >>> r = Recist([[15, 14], [15, 17]], [[14, 15.5], [17, 15.5]])
    >>> out = postprocess_mask(m, r)
    >>> int(out.sum()), bool(out[15, 15]), bool(out[5, 5])
    (16, True, False)
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=_STRUCT8)
    keep = 0
    if n == 1:
        keep = 1
    elif recist_local is not None:
        try:
            r, c = (int(round(v)) for v in recist_local.crossing)
        except RecistError:
            r, c = (int(round(v)) for v in recist_local.centre)
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
            keep = int(labels[r, c])
        if keep == 0:
            quad = np.zeros(mask.shape, np.uint8)
            pts = recist_local.endpoints[[0, 2, 1, 3]]  # long1, short1, long2, short2
            poly = np.round(pts[:, ::-1] * 16).astype(np.int32)  # (x, y), fixed point
            cv2.fillPoly(quad, [poly], 1, lineType=cv2.LINE_8, shift=4)
            for seg in (recist_local.long_axis, recist_local.short_axis):
                (r1, c1), (r2, c2) = np.round(seg * 16).astype(int)
                cv2.line(quad, (c1, r1), (c2, r2), 1, 1, cv2.LINE_8, 4)
            touching = np.unique(labels[quad.astype(bool)])
            touching = touching[touching > 0]
            if touching.size:
                keep = _largest(labels, n, touching)
    if keep == 0:
        keep = _largest(labels, n)
    out = labels == keep
    if fill_holes:
        out = _fill_holes(out)
    return out


def _sigmoid_inplace(x: np.ndarray) -> np.ndarray:
    """float32 sigmoid without temporaries (crop boxes of big lesions are large)."""
    np.clip(x, -30.0, 30.0, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    return x


def measure_mask(mask: np.ndarray, offset: tuple[int, int], recist: Recist) -> Recist | None:
    """RECIST measured on a crop mask, in image coordinates (``None`` if degenerate).

    Masks larger than :data:`MEASURE_MAX_PIXELS` are measured on every ``f``-th row
    and column (their lengths are then within about ``f`` px, far below 1 % of such
    a lesion): :func:`recist_from_mask` needs about 70 bytes per lesion pixel.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    # Measure inside the mask's bounding box (the crop is about 4x the lesion's area).
    r0, c0 = int(rows[0]), int(cols[0])
    sub = mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1]
    f = max(1, math.ceil(math.sqrt(sub.size / MEASURE_MAX_PIXELS)))
    try:
        m = recist_from_mask(
            sub[::f, ::f] if f > 1 else sub,
            spacing=recist.spacing,
            slice_index=recist.slice_index,
        )
    except RecistError:
        return None
    shift = (offset[0] + r0, offset[1] + c0)
    return replace(m, long_axis=m.long_axis * f + shift, short_axis=m.short_axis * f + shift)


def recist_cluster_probs(clusters: Any, recist: Recist) -> np.ndarray:
    """Soft assignment ``(K,)`` of a RECIST to shape clusters from its features alone.

    Softmax of minus half the squared distances to the centres in standardised
    feature space (a unit-variance Gaussian per cluster): 1/K when the RECIST lies
    between all centres, near 1 when it sits on one.
    """
    d2 = clusters.distances(shape_features(recist)[None])[0] ** 2
    e = np.exp(-0.5 * (d2 - d2.min()))
    return e / e.sum()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
