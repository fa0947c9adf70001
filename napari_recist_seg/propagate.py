"""One RECIST -> a 3D lesion: propagate the RECIST-slice mask through neighbouring slices.

Starting from the mask on the RECIST's slice, each neighbouring slice is prompted with
the RECIST measured on the previous slice's mask (:func:`~napari_recist_seg.recist.
recist_from_mask`), segmented, and kept only where it overlaps the previous mask (so a
neighbouring lesion is not picked up). Propagation stops, in each direction, when the
lesion ends: the new mask is smaller than ``min_fraction`` of the RECIST-slice area,
smaller than ``min_area`` pixels, overlaps the previous mask too little, or grows by
more than ``max_growth`` (it has left the lesion).

Examples
--------
>>> vol = np.zeros((7, 20, 20), np.float32)
>>> for z, rad in enumerate([0, 2, 4, 5, 4, 2, 0]):
...     yy, xx = np.mgrid[:20, :20]
...     vol[z][(yy - 10) ** 2 + (xx - 10) ** 2 <= rad ** 2] = 1
>>> seg = lambda z, r: vol[z] > 0.5  # a perfect slice segmenter
>>> les = propagate_lesion(vol.shape, 3, vol[3] > 0.5, seg, spacing=(2.0, 0.5, 0.5))
>>> les.z_range, les.n_slices
((1, 5), 5)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_recist_seg.recist import Recist, RecistError, recist_from_mask

__all__ = ["Lesion3D", "predictor_segmenter", "propagate_lesion"]

#: segment(z, recist) -> boolean (H, W) mask of that slice.
SliceSegmenter = Callable[[int, Recist], np.ndarray]


@dataclass
class Lesion3D:
    """A lesion over every slice it spans.

    Attributes
    ----------
    mask : ndarray of bool, (Z, H, W)
    z_range : (int, int)
        First and last slice holding the lesion (inclusive).
    spacing : (z_mm, row_mm, col_mm) or None
    """

    mask: np.ndarray
    z_range: tuple[int, int]
    spacing: tuple[float, float, float] | None = None

    @property
    def n_slices(self) -> int:
        return self.z_range[1] - self.z_range[0] + 1

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def volume_mm3(self) -> float | None:
        """Volume in mm^3 (``None`` when the spacing is not known)."""
        if self.spacing is None:
            return None
        return float(self.voxels * np.prod(self.spacing))

    @property
    def volume_ml(self) -> float | None:
        v = self.volume_mm3
        return None if v is None else v / 1000.0

    @property
    def extent_mm(self) -> float | None:
        """Cranio-caudal extent: number of slices times the slice spacing."""
        return None if self.spacing is None else self.n_slices * float(self.spacing[0])


def _keep_connected(mask: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that touch ``prev`` (dilated by one pixel)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    touch = np.unique(lab[ndi.binary_dilation(prev) & (lab > 0)])
    return np.isin(lab, touch[touch > 0])


def _walk(
    shape: Sequence[int], z0: int, step: int, seed: np.ndarray, segment: SliceSegmenter,
    out: np.ndarray, *, min_fraction: float, min_area: int, min_overlap: float,
    max_growth: float, image: np.ndarray | None, intensity_tol: float | None,
) -> int:
    """Propagate from ``z0`` in direction ``step``; returns the last slice filled."""
    area0, prev, last = int(seed.sum()), seed, z0
    ref = float(np.mean(image[z0][seed])) if image is not None and intensity_tol else None
    z = z0 + step
    while 0 <= z < shape[0]:
        try:
            prompt = recist_from_mask(prev, slice_index=z)
        except (RecistError, ValueError):
            break
        m = _keep_connected(np.asarray(segment(z, prompt), bool), prev)
        area = int(m.sum())
        if area < max(min_area, min_fraction * area0):
            break
        # Away from its largest cross-section a lesion narrows; a mask that grows
        # has left the lesion (the model always finds something at a prompt).
        if area > max_growth * int(prev.sum()):
            break
        # A mask whose mean intensity drifts from the RECIST slice's has slid into
        # the surrounding tissue (e.g. a hypodense tumour into the liver).
        if ref is not None and abs(float(np.mean(image[z][m])) - ref) > intensity_tol:
            break
        if (m & prev).sum() < min_overlap * min(area, int(prev.sum())):
            break
        out[z] = m
        prev, last, z = m, z, z + step
    return last


def propagate_lesion(
    shape: Sequence[int],
    z0: int,
    seed: np.ndarray,
    segment: SliceSegmenter,
    *,
    spacing: Sequence[float] | None = None,
    min_fraction: float = 0.15,
    min_area: int = 4,
    min_overlap: float = 0.3,
    max_growth: float = 1.2,
    image: np.ndarray | None = None,
    intensity_tol: float | None = None,
) -> Lesion3D:
    """Grow a RECIST-slice mask into a 3D lesion, slice by slice both ways.

    Parameters
    ----------
    shape : (Z, H, W)
        The volume's shape.
    z0 : int
        The RECIST's slice.
    seed : ndarray of bool, (H, W)
        The mask on ``z0``.
    segment : callable
        ``segment(z, recist) -> (H, W) bool``: one slice from a RECIST prompt (e.g.
        :func:`predictor_segmenter`).
    spacing : (z_mm, row_mm, col_mm), optional
        For the volume in mm^3.
    min_fraction, min_area, min_overlap : float, int, float
        Stop rules: a slice's mask must cover at least ``min_fraction`` of the seed
        area and ``min_area`` pixels, and overlap the previous slice's mask by at
        least ``min_overlap`` of the smaller of the two.
    max_growth : float
        Stop when a slice's mask is larger than ``max_growth`` times the previous
        one (the RECIST slice is the lesion's largest cross-section).
    image : ndarray (Z, H, W), optional
        The volume, for the intensity stop rule.
    intensity_tol : float, optional
        Stop when the mean intensity inside a slice's mask differs from the RECIST
        slice's by more than this (HU for CT); off when ``None`` or without ``image``.

    Returns
    -------
    Lesion3D
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"expected a (Z, H, W) volume shape, got {shape}")
    if not 0 <= z0 < shape[0]:
        raise ValueError(f"RECIST slice {z0} is outside the volume (0..{shape[0] - 1})")
    seed = np.asarray(seed, bool)
    out = np.zeros(shape, bool)
    out[z0] = seed
    if not seed.any():
        return Lesion3D(out, (z0, z0), _spacing(spacing))
    kw: dict[str, Any] = dict(min_fraction=min_fraction, min_area=min_area,
                              min_overlap=min_overlap, max_growth=max_growth,
                              image=image, intensity_tol=intensity_tol)
    hi = _walk(shape, z0, +1, seed, segment, out, **kw)
    lo = _walk(shape, z0, -1, seed, segment, out, **kw)
    return Lesion3D(out, (lo, hi), _spacing(spacing))


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3:
        raise ValueError(f"spacing must be (z_mm, row_mm, col_mm), got {sp}")
    return sp  # type: ignore[return-value]


def predictor_segmenter(predictor: Any, volume: np.ndarray, **kwargs: Any) -> SliceSegmenter:
    """A :data:`SliceSegmenter` running ``predictor.segment`` on ``volume[z]``.

    ``kwargs`` go to :meth:`~napari_recist_seg.predict.Predictor.segment` (e.g.
    ``modality``).
    """
    plane_shape = tuple(volume.shape[1:])

    def segment(z: int, recist: Recist) -> np.ndarray:
        r = replace(recist, slice_index=int(z))
        return predictor.segment(volume, [r], **kwargs)[0].full_mask(plane_shape)

    return segment
