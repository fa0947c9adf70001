"""The lesion's intensity on the RECIST slice, and how off-slice masks use it.

:class:`IntensityBand` measures, on the RECIST slice, the median inside the seed mask
and in a ring around it. :class:`IntensityBlend` turns that into a second opinion on
every other slice: the pixels on the lesion's side of a level between the two medians
(so brighter and darker lesions alike, in any units: HU, MR signal, a remap), near the
previous slice's mask. The model's mask and that region are blended by the mean of
their signed distances: the model keeps the shape, the intensity says where this
slice's boundary is (the model, prompted with the previous slice's larger RECIST,
tends to over-segment as the lesion shrinks).

Examples
--------
>>> yy, xx = np.mgrid[:40, :40]
>>> plane = np.where((yy - 20) ** 2 + (xx - 20) ** 2 <= 36, -50.0, 60.0)  # dark disc r=6
>>> prev = (yy - 20) ** 2 + (xx - 20) ** 2 <= 64                         # last slice: r=8
>>> band = IntensityBand(inside=-50.0, outside=60.0, sigma=5.0)
>>> model = prev.copy()                                # the model repeats the old outline
>>> out = IntensityBlend().apply(plane, model, prev, band, shift_px=1.0)
>>> int(model.sum()), int(out.sum()) < int(model.sum())
(197, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_recist_seg.mask_holes import fill_holes
from napari_recist_seg.recist import Recist, RecistError, recist_from_mask

__all__ = ["IntensityBand", "IntensityBlend"]


@dataclass(frozen=True)
class IntensityBand:
    """The lesion's intensity on the RECIST slice, in the volume's units.

    Attributes
    ----------
    inside : float
        Median inside the seed mask.
    outside : float
        Median of a ring around it (the tissue the lesion sits in).
    sigma : float
        Robust standard deviation of the seed's interior (IQR / 1.349).
    """

    inside: float
    outside: float
    sigma: float

    @classmethod
    def from_seed(cls, plane: np.ndarray, seed: np.ndarray) -> "IntensityBand":
        """Measure the band on the RECIST slice ``plane`` around the mask ``seed``."""
        plane = np.asarray(plane, np.float64)
        vals = plane[seed]
        # Ring about half the lesion's equivalent radius wide (at least 2 px).
        width = max(2, int(round(0.5 * math.sqrt(seed.sum() / math.pi))))
        ring = ndi.binary_dilation(seed, iterations=width) & ~seed
        q25, q50, q75 = np.percentile(vals, [25, 50, 75])
        outside = float(np.median(plane[ring])) if ring.any() else float(q50)
        return cls(float(q50), outside, float(q75 - q25) / 1.349)

    def half_width(self, contrast: float, spread: float) -> float:
        return max(contrast * abs(self.outside - self.inside), spread * self.sigma)


def _signed(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance: > 0 inside ``mask``, < 0 outside."""
    inside = ndi.distance_transform_edt(mask)
    outside = ndi.distance_transform_edt(~mask)
    return inside - outside


@dataclass(frozen=True)
class IntensityBlend:
    """Blend an off-slice mask with the lesion's intensity region (module notes).

    The defaults were chosen on the even-numbered half of the LiTS tumours over the
    CT, low-dose, thick-slice and MR-like proxies (``benchmarks/lits_3d.py``,
    docs/RESULTS.md), the odd half and the full set being reported.

    Attributes
    ----------
    level : float
        Where the boundary lies between the ring's median (0) and the lesion's (1).
    weight : float
        Weight of the intensity region's signed distance against the model's (1).
    reach : float
        How far the region may reach beyond the previous mask, in slices' worth of
        boundary drift at slope 1 (slice spacing / pixel size; at least 1 px).
    sigma : float
        Gaussian smoothing of the slice before the level is applied, in pixels
        (noise, Rician MR background).
    prompt_weight : float or None
        Off the RECIST slice, the model is prompted with the RECIST of the previous
        mask blended with this slice's intensity region (:meth:`prompt`, never larger
        than the previous mask), the region weighted by this times ``1 - 1 / shift_px``
        (0 on isotropic voxels, 2/3 of it for slices three pixels apart: a thick slice
        has moved further from the previous one, and the model repeats its prompt's
        size); ``None``: the previous mask's RECIST. 0.75 was chosen on the even LiTS
        tumours over every proxy (docs/RESULTS.md, branch issue-11thick).
    prompt_shrink : float
        On thick slices the prompt's axes (from :meth:`prompt`) are also scaled by
        :meth:`prompt_scale`, ``1 - prompt_shrink * (1 - 1 / shift_px)``, about their
        crossing: the lesion tapers away from its largest cross-section, and the model
        repeats its prompt's size. 0.1 was chosen on the even LiTS tumours over the
        thick proxies (docs/RESULTS.md, branch issue-11tta); 0 turns it off; nothing
        changes on isotropic voxels.
    seed_weight : float or None
        On the RECIST slice: the model's mask blended with the region (within twice
        the reach) at this weight is kept instead of the model's when its measured
        axes match the drawn RECIST better (:meth:`seed`); ``None``: the model's mask.
    """

    level: float = 0.4
    weight: float = 1.0
    reach: float = 1.0
    sigma: float = 1.0
    seed_weight: float | None = 2.0
    prompt_weight: float | None = 0.75
    prompt_shrink: float = 0.1

    def region(self, plane: np.ndarray, prev: np.ndarray, band: IntensityBand,
               shift_px: float, reach: float | None = None) -> np.ndarray:
        """The lesion-like pixels of ``plane`` within ``reach`` slices' drift of
        ``prev`` (default :attr:`reach`), holes filled, touching ``prev``."""
        reach = max(1.0, (self.reach if reach is None else reach) * float(shift_px))
        box = _box(prev, int(math.ceil(reach + 3 * self.sigma)) + 2)
        sub = np.asarray(plane[box], np.float32)
        smooth = ndi.gaussian_filter(sub, self.sigma) if self.sigma > 0 else sub
        level = band.outside + self.level * (band.inside - band.outside)
        side = (smooth - level) * (1.0 if band.inside >= band.outside else -1.0) > 0
        near = ndi.distance_transform_edt(~prev[box]) <= reach
        found = fill_holes(side & near)
        lab, n = ndi.label(found)
        if n:  # only the parts that touch the previous mask (not a neighbour)
            touch = np.unique(lab[ndi.binary_dilation(prev[box]) & (lab > 0)])
            found = np.isin(lab, touch[touch > 0])
        out = np.zeros(prev.shape, bool)
        out[box] = found
        return out

    def apply(self, plane: np.ndarray, mask: np.ndarray, prev: np.ndarray,
              band: IntensityBand, shift_px: float) -> np.ndarray:
        """The blended mask of one slice (empty where no lesion-like pixel is left)."""
        if not mask.any():
            return mask
        region = self.region(plane, prev, band, shift_px)
        if not region.any():
            return region
        return _blend(mask, region, self.weight)

    def prompt(self, plane: np.ndarray, prev: np.ndarray, band: IntensityBand,
               shift_px: float) -> np.ndarray:
        """The mask whose RECIST prompts this slice: ``prev`` blended with the slice's
        intensity region at :attr:`prompt_weight` scaled by ``1 - 1 / shift_px``, within
        ``prev`` (``prev`` without a weight, on isotropic voxels or without a region)."""
        weight = 0.0 if self.prompt_weight is None else self.prompt_weight * _thick(shift_px)
        if weight <= 0.0 or not prev.any():
            return prev
        region = self.region(plane, prev, band, shift_px)
        if not region.any():
            return prev
        # never larger than prev: the RECIST slice is the largest cross-section
        return _blend(prev, region, weight) & prev

    def prompt_scale(self, shift_px: float) -> float:
        """The factor on an off-slice prompt's axes at a slice drift of ``shift_px``
        pixels (1 on isotropic voxels; see :attr:`prompt_shrink`)."""
        return 1.0 - self.prompt_shrink * _thick(shift_px)

    def seed(self, plane: np.ndarray, mask: np.ndarray, recist: Recist,
             band: IntensityBand, shift_px: float) -> np.ndarray:
        """The RECIST slice's mask: the model's ``mask``, or its blend with the region
        when that blend's measured axes are nearer the drawn ``recist``."""
        if self.seed_weight is None or not mask.any():
            return mask
        region = self.region(plane, mask, band, shift_px, reach=2.0 * self.reach)
        if not region.any():
            return mask
        blended = _blend(mask, region, self.seed_weight)
        lab, n = ndi.label(blended)
        if n:  # what touches the model's mask
            touch = np.unique(lab[ndi.binary_dilation(mask) & (lab > 0)])
            blended = np.isin(lab, touch[touch > 0])
        if blended.any() and _axis_error(blended, recist) < _axis_error(mask, recist):
            return blended
        return mask


def _thick(shift_px: float) -> float:
    """``1 - 1 / shift_px`` (0 for isotropic voxels or thinner slices): how far the
    spacing is from isotropic, for the knobs that follow the slice thickness."""
    return max(0.0, 1.0 - 1.0 / float(shift_px)) if shift_px > 0 else 0.0


def _blend(mask: np.ndarray, region: np.ndarray, weight: float) -> np.ndarray:
    """Where the weighted mean of the two signed distances is positive."""
    box = _box(mask | region, 2)
    sd = _signed(mask[box]) + weight * _signed(region[box])
    out = np.zeros(mask.shape, bool)
    out[box] = sd > 0
    return out


def _axis_error(mask: np.ndarray, recist: Recist) -> float:
    """``|L_m - L| / L + |W_m - W| / W`` of the mask's measured RECIST (inf if none)."""
    try:
        m = recist_from_mask(mask)
    except (RecistError, ValueError):
        return math.inf
    return (abs(m.long_length - recist.long_length) / recist.long_length
            + abs(m.short_length - recist.short_length) / max(recist.short_length, 1e-9))


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of ``mask`` grown by ``margin``, clipped to the plane."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    h, w = mask.shape
    return (slice(max(0, rows[0] - margin), min(h, rows[-1] + margin + 1)),
            slice(max(0, cols[0] - margin), min(w, cols[-1] + margin + 1)))
