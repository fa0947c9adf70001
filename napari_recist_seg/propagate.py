"""One RECIST -> a 3D lesion: propagate the RECIST-slice mask through neighbouring slices.

Starting from the mask on the RECIST's slice, each neighbouring slice is prompted with
the RECIST measured on the previous slice's mask (:func:`~napari_recist_seg.recist.
recist_from_mask`), segmented, and kept only where it touches the previous mask (so a
neighbouring lesion is not picked up). In each direction propagation stops at the
first slice that fails one of the :class:`StopRules`, each stated in the volume's own
terms rather than as a constant of one scanner:

- **area**: the mask covers less than ``min_fraction`` of the RECIST-slice mask (or
  fewer than ``min_area`` pixels): the lesion has ended. On thick slices the fraction
  is raised by ``thick_fraction * (1 - 1/shift) ** thick_power``, shift = slice spacing
  / pixel size (0 on isotropic voxels): a small cross-section of a thick slice is mostly
  partial volume, where the model over-segments;
- **growth**: the mask is more than ``max_growth`` times the previous one: the RECIST
  slice is the lesion's largest cross-section, so a mask that grows has left it;
- **intensity** (off by default since the intensity blend below does its work): the
  mean intensity inside the mask leaves the lesion's band, measured
  on the RECIST slice in the volume's units: centred on the median inside the seed
  mask, half-width ``contrast`` times the lesion-to-surround difference (median of a
  ring around the seed) or ``spread`` robust standard deviations of the lesion's
  interior, whichever is wider. Works the same for HU, MR signal or any remap, and for
  lesions brighter or darker than their surroundings;
- **overlap**: the mask overlaps the previous one by less than ``min_overlap`` of what
  two equal discs (of the smaller mask's area) keep when shifted by the largest drift
  a lesion boundary can make between two slices, ``max_slope`` times the slice
  spacing over the pixel size (1 px per slice when the spacing is not known). Thick
  slices, or small cross-sections, therefore allow a smaller overlap;
- **regrowth** (``max_regrowth``, off when ``None``): the mask is more than that
  many times the smallest mask of the walk so far: a lesion that has shrunk and
  grows again, even slowly, has usually run into a neighbouring structure;
- **seed_overlap** (``min_seed_overlap``, off when ``None``): less than that
  fraction of the mask lies within the RECIST slice's mask: the RECIST slice is the
  largest cross-section, so a mask that has left its projection is something else.

Off the RECIST slice the model tends to over-segment: it is prompted with the RECIST of
the previous, larger cross-section. Each off-slice mask is therefore blended with the
lesion's **intensity region** (:class:`IntensityBlend`, on by default when the volume
is given): the pixels of the (lightly smoothed) slice on the lesion's side of a level
between the ring's and the lesion's median on the RECIST slice (so brighter and
darker lesions alike, any units), within one slice's boundary drift of the previous
mask, holes filled; the slice's mask is where the mean of the two signed distances is
positive. Where no lesion-like pixel is left next to the previous mask, the lesion has
ended. On the RECIST slice the model's mask gives way to its blend with the region
only when that matches the drawn RECIST's axes better (``propagate_lesion(recist=)``).
On the LiTS case and its proxies this lifts the 3D Dice by 0.03-0.15 (docs/RESULTS.md).
On thick slices the model, prompted with the previous (larger) cross-section's RECIST,
over-segments most (it repeats its prompt's size); each slice is therefore prompted
from the previous mask blended with that slice's intensity region, never larger than
the previous mask, weighted by the slice thickness (``IntensityBlend.prompt_weight``,
:func:`intensity_prompter`), and that prompt's axes are shortened a little by the
slice thickness (``IntensityBlend.prompt_shrink``: the lesion tapers); nothing changes
on isotropic voxels.

The walk itself (:func:`trace`) only ends when nothing is segmented; the rules decide
where the lesion ends, so a benchmark can replay one trace under many rules
(:func:`first_stop`) and get exactly what :func:`propagate_lesion` would return.

Examples
--------
>>> vol = np.zeros((7, 20, 20), np.float32)
>>> for z, rad in enumerate([0, 2, 4, 5, 4, 2, 0]):
...     yy, xx = np.mgrid[:20, :20]
...     vol[z][(yy - 10) ** 2 + (xx - 10) ** 2 <= rad ** 2] = 1
>>> seg = lambda z, r: vol[z] > 0.5  # a perfect slice segmenter
>>> les = propagate_lesion(vol.shape, 3, vol[3] > 0.5, seg, spacing=(0.5, 0.5, 0.5))
>>> les.z_range, les.n_slices
((1, 5), 5)

On slices 4x thicker than a pixel the tips (16 % of the RECIST slice's area) fall under
the thick-slice area rule (0.05 + 0.6 x 0.75 ** 3 = 30 %), which a model's over-segmented tips
on such slices also do (docs/RESULTS.md); ``thick_fraction=0`` keeps them:

>>> propagate_lesion(vol.shape, 3, vol[3] > 0.5, seg, spacing=(2.0, 0.5, 0.5)).z_range
(2, 4)
>>> propagate_lesion(vol.shape, 3, vol[3] > 0.5, seg, spacing=(2.0, 0.5, 0.5),
...                  rules=StopRules(thick_fraction=0.0)).z_range
(1, 5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_recist_seg.polarity import lesion_polarity
from napari_recist_seg.propagate_intensity import IntensityBand, IntensityBlend
from napari_recist_seg.recist import MIN_AXIS_LENGTH_PX, Recist, RecistError, recist_from_mask

__all__ = [
    "IntensityBand",
    "IntensityBlend",
    "Lesion3D",
    "SliceStep",
    "StopRules",
    "first_stop",
    "intensity_prompter",
    "intensity_refiner",
    "predictor_segmenter",
    "propagate_lesion",
    "seed_context",
    "trace",
]

#: segment(z, recist) -> boolean (H, W) mask of that slice.
SliceSegmenter = Callable[[int, Recist], np.ndarray]
#: refine(z, mask, prev) -> the slice's mask corrected with what the walk knows.
SliceRefiner = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
#: prompt_mask(z, prev) -> the mask whose RECIST prompts slice z.
SlicePrompter = Callable[[int, np.ndarray], np.ndarray]


@dataclass
class Lesion3D:
    """A lesion over every slice it spans.

    Attributes
    ----------
    mask : ndarray of bool, (Z, H, W)
    z_range : (int, int)
        First and last slice holding the lesion (inclusive).
    spacing : (z_mm, row_mm, col_mm) or None
    stops : (str, str)
        Why propagation ended below and above the RECIST slice: a rule name of
        :class:`StopRules`, ``"empty"`` (nothing segmented) or ``"edge"`` (the
        volume ended).
    """

    mask: np.ndarray
    z_range: tuple[int, int]
    spacing: tuple[float, float, float] | None = None
    stops: tuple[str, str] = ("", "")

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


@dataclass(frozen=True)
class SliceStep:
    """One slice of a :func:`trace`: its mask and what the stop rules look at."""

    z: int
    mask: np.ndarray
    area: int
    prev_area: int
    overlap: int  # pixels shared with the previous slice's mask
    mean: float | None  # mean intensity inside the mask (None without an image)
    seed_overlap: int = -1  # pixels shared with the RECIST slice's mask (-1: not known)


@dataclass(frozen=True)
class SeedContext:
    """What the stop rules need from the RECIST slice (see :func:`seed_context`)."""

    area0: int
    shift_px: float  # lesion-boundary drift per slice at slope 1, in pixels
    band: IntensityBand | None


@dataclass(frozen=True)
class StopRules:
    """Where a lesion ends (see the module notes). ``contrast=None`` turns the
    intensity rule off.

    The defaults are the grid point of ``benchmarks/lits_3d.py`` whose worst proxy
    (CT, thick slices, low dose, MR-like remaps of the LiTS case) scores best, ties
    broken by the next worst (leximin), traced with the default
    :class:`IntensityBlend`. With the blend the intensity rule is off by default: the
    blend itself ends a lesion whose slice has no lesion-like pixel left near the
    previous mask. The regrowth and seed-overlap rules (against walks that run on into
    a neighbouring structure) were added in a second round (``--grid run_on``); both
    halves of a 2-fold split by tumour choose the seed overlap 0.7 with a regrowth
    rule (docs/RESULTS.md). ``thick_fraction`` and ``thick_power`` (issue #11, fold-0
    choices over 8 thick-slice proxies, all tumours, docs/RESULTS.md) raise the area
    rule's fraction on thick slices only, the more the thicker; 0 restores the rules
    before it.
    """

    min_fraction: float = 0.05
    min_area: int = 4
    thick_fraction: float = 0.6
    thick_power: float = 3.0
    max_growth: float = 1.1
    contrast: float | None = None
    spread: float = 0.0
    min_overlap: float = 0.7
    max_slope: float = 0.5
    max_regrowth: float | None = 1.15
    min_seed_overlap: float | None = 0.7

    def reason(self, step: SliceStep, ctx: SeedContext,
               smallest: int | None = None) -> str | None:
        """The rule that ``step`` fails, or ``None`` when the lesion goes on.

        ``smallest`` is the smallest area of the walk so far (the RECIST slice's
        included), for the regrowth rule; :func:`first_stop` passes it.
        """
        if step.area < max(self.min_area, self.area_fraction(ctx.shift_px) * ctx.area0):
            return "area"
        if step.area > self.max_growth * step.prev_area:
            return "growth"
        if (self.max_regrowth is not None and smallest is not None
                and step.area > self.max_regrowth * smallest):
            return "regrowth"
        if (self.min_seed_overlap is not None and step.seed_overlap >= 0
                and step.seed_overlap < self.min_seed_overlap * step.area):
            return "seed_overlap"
        if self.contrast is not None and ctx.band is not None and step.mean is not None:
            band = ctx.band
            if abs(step.mean - band.inside) > band.half_width(self.contrast, self.spread):
                return "intensity"
        small = min(step.area, step.prev_area)
        radius = math.sqrt(small / math.pi)
        if step.overlap < self.min_overlap * _disc_overlap(
                self.max_slope * ctx.shift_px / (2.0 * radius)) * small:
            return "overlap"
        return None


    def area_fraction(self, shift_px: float) -> float:
        """The area rule's fraction of the RECIST-slice mask at a slice drift of
        ``shift_px`` pixels: ``min_fraction`` on isotropic voxels (shift 1), raised by
        ``thick_fraction * (1 - 1/shift) ** thick_power`` on thicker slices (0.13 at
        shift 2, 0.23 at 3, 0.36 at 5, 0.43 at 7; issue #11, docs/RESULTS.md)."""
        return self.min_fraction + self.thick_fraction * (1.0 - 1.0 / max(shift_px, 1.0)) ** self.thick_power


def _disc_overlap(u: float) -> float:
    """Overlap fraction of two equal discs whose centres are ``2 u`` radii apart."""
    u = min(max(u, 0.0), 1.0)
    return (2.0 / math.pi) * (math.acos(u) - u * math.sqrt(1.0 - u * u))


def _keep_connected(mask: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that touch ``prev`` (dilated by one pixel)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    touch = np.unique(lab[ndi.binary_dilation(prev) & (lab > 0)])
    return np.isin(lab, touch[touch > 0])


def seed_context(
    seed: np.ndarray, *, spacing: Sequence[float] | None = None,
    image: np.ndarray | None = None, z0: int = 0,
) -> SeedContext:
    """The RECIST slice's area, the per-slice drift in pixels and intensity band.

    ``spacing`` is ``(z_mm, row_mm, col_mm)``; unknown spacing counts as isotropic.
    """
    seed = np.asarray(seed, bool)
    sp = _spacing(spacing)
    shift = 1.0 if sp is None else sp[0] / min(sp[1], sp[2])
    band = IntensityBand.from_seed(image[z0], seed) if image is not None and seed.any() else None
    return SeedContext(int(seed.sum()), float(shift), band)


def trace(
    n_slices: int, z0: int, step: int, seed: np.ndarray, segment: SliceSegmenter, *,
    image: np.ndarray | None = None, max_steps: int | None = None,
    refine: SliceRefiner | None = None, prompt_mask: SlicePrompter | None = None,
    prompt_scale: float = 1.0,
) -> Iterator[SliceStep]:
    """Walk from ``z0`` in direction ``step`` (+1 / -1) until nothing is segmented.

    Each slice is prompted from the previous slice's mask (or from
    ``prompt_mask(z, prev)`` when given and not empty, e.g. :func:`intensity_prompter`),
    the prompt's axes scaled by ``prompt_scale`` about their crossing
    (:meth:`IntensityBlend.prompt_scale`), its mask corrected by
    ``refine(z, mask, prev)`` when given (e.g. :func:`intensity_refiner`); no stop
    rule is applied (see :func:`first_stop`).
    """
    seed = np.asarray(seed, bool)
    prev, z, n = seed, z0 + step, 0
    while 0 <= z < n_slices and (max_steps is None or n < max_steps):
        m = _slice_mask(z, prev, segment, refine, prompt_mask, prompt_scale)
        if m is None:
            return
        m = _keep_connected(m, prev)
        area = int(m.sum())
        if area == 0:
            return
        mean = float(np.mean(image[z][m])) if image is not None else None
        yield SliceStep(z, m, area, int(prev.sum()), int((m & prev).sum()), mean,
                        int((m & seed).sum()))
        prev, z, n = m, z + step, n + 1


def _slice_mask(z: int, prev: np.ndarray, segment: SliceSegmenter,
                refine: SliceRefiner | None, prompt_mask: SlicePrompter | None,
                prompt_scale: float = 1.0) -> np.ndarray | None:
    """One slice's mask, prompted from ``prev`` or ``prompt_mask(z, prev)`` when that
    has at least 4 px, scaled by ``prompt_scale`` (``None``: no RECIST can be measured)."""
    pm = prompt_mask(z, prev) if prompt_mask is not None else None
    try:
        prompt = recist_from_mask(pm if pm is not None and pm.sum() >= 4 else prev, slice_index=z)
        prompt = _scaled_prompt(prompt, prompt_scale)
    except (RecistError, ValueError):
        return None
    m = np.asarray(segment(z, prompt), bool)
    if refine is not None:
        m = np.asarray(refine(z, m, prev), bool)
    return m


def _scaled_prompt(prompt: Recist, scale: float) -> Recist:
    """``prompt`` with both axes scaled by ``scale`` about their crossing; ``prompt``
    itself at 1, or where an axis would fall below a valid RECIST's length."""
    if scale == 1.0:
        return prompt
    try:
        c = prompt.crossing
    except RecistError:  # parallel axes: nothing to scale about
        return prompt
    small = replace(prompt, long_axis=c + scale * (prompt.long_axis - c),
                    short_axis=c + scale * (prompt.short_axis - c))
    if min(small.long_length, small.short_length) < MIN_AXIS_LENGTH_PX:
        return prompt
    return small


def intensity_refiner(image: np.ndarray, ctx: SeedContext,
                      blend: IntensityBlend | None = None) -> SliceRefiner | None:
    """The :data:`SliceRefiner` of :class:`IntensityBlend` on ``image`` (``None``
    without an intensity band: no image, or an empty seed)."""
    if ctx.band is None:
        return None
    blend = blend or IntensityBlend()
    band, shift = ctx.band, ctx.shift_px

    def refine(z: int, mask: np.ndarray, prev: np.ndarray) -> np.ndarray:
        return blend.apply(image[z], mask, prev, band, shift)

    return refine


def intensity_prompter(image: np.ndarray, ctx: SeedContext,
                       blend: IntensityBlend | None = None) -> SlicePrompter | None:
    """The :data:`SlicePrompter` of :meth:`IntensityBlend.prompt` on ``image`` (``None``
    without an intensity band or with ``blend.prompt_weight`` ``None``)."""
    blend = blend or IntensityBlend()
    if ctx.band is None or blend.prompt_weight is None:
        return None
    band, shift = ctx.band, ctx.shift_px

    def prompt(z: int, prev: np.ndarray) -> np.ndarray:
        return blend.prompt(image[z], prev, band, shift)

    return prompt


def first_stop(
    steps: Iterator[SliceStep] | Sequence[SliceStep], ctx: SeedContext, rules: StopRules,
) -> tuple[list[SliceStep], str]:
    """The steps kept before the first one that fails ``rules``, and why it ended
    (a rule name, or ``"end"`` when the trace ran out)."""
    kept: list[SliceStep] = []
    smallest: int | None = None
    for s in steps:
        smallest = s.prev_area if smallest is None else min(smallest, s.prev_area)
        why = rules.reason(s, ctx, smallest=smallest)
        if why is not None:
            return kept, why
        kept.append(s)
    return kept, "end"


def propagate_lesion(
    shape: Sequence[int],
    z0: int,
    seed: np.ndarray,
    segment: SliceSegmenter,
    *,
    spacing: Sequence[float] | None = None,
    image: np.ndarray | None = None,
    rules: StopRules | None = None,
    blend: IntensityBlend | None = IntensityBlend(),  # noqa: B008 - frozen, never mutated
    recist: Recist | None = None,
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
        For the volume in mm^3 and the overlap rule (unknown = isotropic).
    image : ndarray (Z, H, W), optional
        The volume, for the intensity rule (off without it).
    rules : StopRules, optional
        Default :class:`StopRules()`.
    blend : IntensityBlend or None
        How off-slice masks are corrected by the lesion's intensity (needs
        ``image``); ``None`` keeps the model's masks as they are.
    recist : Recist, optional
        The drawn RECIST on ``z0``: with ``blend`` and ``image``, the RECIST slice's
        mask may be replaced by its intensity blend when that matches the drawn axes
        better (:meth:`IntensityBlend.seed`); the lesion's mask on ``z0`` is then that.

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
        return Lesion3D(out, (z0, z0), _spacing(spacing), ("empty", "empty"))
    rules = rules or StopRules()
    ctx = seed_context(seed, spacing=spacing, image=image, z0=z0)
    if recist is not None and blend is not None and ctx.band is not None and image is not None:
        seed = blend.seed(image[z0], seed, recist, ctx.band, ctx.shift_px)
        out[z0] = seed
        ctx = replace(ctx, area0=int(seed.sum()))
    refine = intensity_refiner(image, ctx, blend) if image is not None and blend else None
    prompter = intensity_prompter(image, ctx, blend) if image is not None and blend else None
    scale = blend.prompt_scale(ctx.shift_px) if image is not None and blend else 1.0
    ends, stops = [z0, z0], ["", ""]
    for i, step in enumerate((-1, +1)):
        walk = trace(shape[0], z0, step, seed, segment, image=image, refine=refine,
                     prompt_mask=prompter, prompt_scale=scale)
        kept, why = first_stop(walk, ctx, rules)
        for s in kept:
            out[s.z] = s.mask
        ends[i] = kept[-1].z if kept else z0
        edge = ends[i] + step
        stops[i] = why if why != "end" else ("edge" if not 0 <= edge < shape[0] else "empty")
    return Lesion3D(out, (ends[0], ends[1]), _spacing(spacing), (stops[0], stops[1]))


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
    ``modality``, ``polarity``). Without a ``polarity``, a predictor in ``"auto"``
    polarity mode decides it on the first prompt (the RECIST slice's, when the walk's
    seed comes from this segmenter) and keeps it for every later slice
    (:mod:`napari_recist_seg.polarity`): off-slice prompts, measured on masks, would
    each decide on their own.
    """
    plane_shape = tuple(volume.shape[1:])
    kept = dict(kwargs)

    def segment(z: int, recist: Recist) -> np.ndarray:
        r = replace(recist, slice_index=int(z))
        if "polarity" not in kept and getattr(predictor, "polarity", None) == "auto":
            modality = predictor._modality(volume, kept.get("modality"))
            kept["polarity"] = lesion_polarity(volume[int(z)], r, predictor.preprocess,
                                               modality=modality, window=predictor.window) or "dark"
        return predictor.segment(volume, [r], **kept)[0].full_mask(plane_shape)

    return segment
