"""The annotator's "3D lesion" option and CT windows (no Qt, no napari).

3D lesions: when a lesion of a volume is committed with the option on, its mask on
the RECIST slice (as the user accepted it, hand edits included) is the seed of
:func:`napari_recist_seg.propagate.propagate_lesion`, the same core path as
``recist-seg segment --3d`` (its default stop rules; each neighbouring slice is
prompted by the segmenter from the previous slice's mask). :func:`propagate_request`
runs in a worker: it reports each slice and stops at the next slice once cancelled.
A :class:`VolumeRequest` carries the lesion's generations, so a result for a lesion
whose lines or mask changed meanwhile (or that was uncommitted or deleted) is dropped
(:meth:`_SessionVolumes.is_volume_current`). The lesion's volume columns are those of
``measurements.csv`` for ``--3d`` (:func:`napari_recist_seg.measurements.volume_values`),
measured on the label image, so a hand edit of the 3D label updates them.

CT windows: only an image that is CT by :mod:`napari_recist_seg.intensity`'s rule (the
reader's ``modality`` metadata, else the values) gets window presets
(:func:`window_choices`); :func:`with_intensity` gives the segmenter that image's
modality and window (the CLI's ``--modality`` / ``--window``) without changing the
segmenter other images use.

Examples
--------
>>> window_choices("ct")[:2], window_choices("mr")
(['soft_tissue', 'liver'], [])
>>> window_limits("lung")
(-1350.0, 150.0)
>>> volume_spacing((1.0, 1.0, 1.0)) is None, volume_spacing((2.5, 0.7, 0.7))
(True, (2.5, 0.7, 0.7))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from napari_recist_seg.annotation.lesions import DONE, Lesion
from napari_recist_seg.intensity import WINDOW_PRESETS, detect_modality, display_range, is_ct
from napari_recist_seg.measurements import volume_values
from napari_recist_seg.polarity import lesion_polarity
from napari_recist_seg.progress import CancelToken
from napari_recist_seg.propagate import Lesion3D, StopRules, predictor_segmenter, propagate_lesion
from napari_recist_seg.recist import Recist, RecistError, recist_from_mask

__all__ = [
    "VolumeRequest",
    "image_modality",
    "measure_volume",
    "propagate_request",
    "volume_paste_indices",
    "volume_spacing",
    "window_choices",
    "window_limits",
    "with_intensity",
]

#: progress(z, slices_done) from the worker, once per neighbouring slice segmented.
SliceProgress = Callable[[int, int], None]


# -- CT windows ------------------------------------------------------------------------
def image_modality(array: Any, metadata_modality: str | None = None, rgb: bool = False) -> str:
    """``"ct"``, ``"mr"``, ``"rgb"``, ``"grey"``...: the reader's word, else the values."""
    if rgb:
        return "rgb"
    return detect_modality(array, metadata_modality)


def window_choices(modality: str | None) -> list[str]:
    """The CT window presets offered for an image: none unless it is CT."""
    return list(WINDOW_PRESETS) if is_ct(modality) else []


def window_limits(window: Any) -> tuple[float, float]:
    """napari ``contrast_limits`` of a CT window (preset name, ``"L,W"`` or a pair)."""
    lo, hi = display_range(np.zeros(1), "ct", window)
    return float(lo), float(hi)


def with_intensity(segmenter: Any, modality: str | None, window: Any = None) -> Any:
    """``segmenter`` reading one image by the intensity rule (a shallow copy).

    A segmenter with ``modality`` / ``window`` attributes (the model's ``Predictor``,
    :class:`~napari_recist_seg.annotation.ShapeSegmenter`) gets the image's modality
    and, for CT, ``window``: what ``--modality`` / ``--window`` set in the CLI. The
    copy shares the network; others are returned unchanged.
    """
    if segmenter is None or not (hasattr(segmenter, "modality") and hasattr(segmenter, "window")):
        return segmenter
    seg = copy.copy(segmenter)
    seg.modality = None if modality in (None, "rgb") else modality
    if is_ct(modality) and window is not None:
        seg.window = window
    return seg


# -- 3D lesions ------------------------------------------------------------------------
def volume_spacing(scale: Sequence[float], known: bool | None = None) -> tuple[float, float, float] | None:
    """``(z_mm, row_mm, col_mm)`` from a volume layer's scale; ``None`` for napari's
    default of all ones (unknown: volumes in voxels) unless ``known`` is True (the file
    states a 1 mm spacing, as :func:`~napari_recist_seg.annotation.units.spacing_from_scale`);
    ``None`` whenever ``known`` is False."""
    sc = tuple(float(s) for s in scale)[-3:]
    if len(sc) != 3 or known is False or not all(s > 0 for s in sc):
        return None
    if known is not True and all(abs(s - 1.0) < 1e-12 for s in sc):
        return None
    return sc  # type: ignore[return-value]


@dataclass(frozen=True)
class VolumeRequest:
    """Propagate lesion ``lesion_id`` from its mask ``seed`` on slice ``z0``; valid while
    the lesion's ``generation`` (lines, slice mask) and ``volume_generation`` hold.

    ``recist`` (the drawn RECIST, for a mask the user has not edited) lets the RECIST
    slice's mask be replaced by its intensity blend where that matches the drawn axes
    better, as ``segment --3d`` does; a hand-edited seed is kept as painted (``None``).
    """

    lesion_id: int
    generation: int
    volume_generation: int
    z0: int
    seed: np.ndarray = field(compare=False, repr=False)
    recist: Recist | None = None


def propagate_request(
    segmenter: Any, volume: np.ndarray, request: VolumeRequest, *,
    spacing: Sequence[float] | None = None, progress: SliceProgress | None = None,
    cancel: CancelToken | None = None,
) -> Lesion3D:
    """The 3D lesion of ``request`` (meant for a worker; see the module notes).

    Raises
    ------
    Cancelled
        ``cancel`` was set (checked before each slice).
    """
    volume = np.asarray(volume)
    plane = tuple(volume.shape[1:])
    base = predictor_segmenter(segmenter, volume, **_walk_polarity(segmenter, volume, request))
    done = [0]

    def segment(z: int, recist: Recist) -> np.ndarray:
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            mask = base(z, recist)
        except RecistError:  # a cross-section too small to prompt: the lesion has ended
            mask = np.zeros(plane, bool)
        done[0] += 1
        if progress is not None:
            progress(int(z), done[0])
        return mask

    return propagate_lesion(volume.shape, request.z0, request.seed, segment, spacing=spacing,
                            image=volume, rules=StopRules(), recist=request.recist)


def _walk_polarity(segmenter: Any, volume: np.ndarray, request: VolumeRequest) -> dict[str, str]:
    """``{"polarity": ...}`` for a model segmenter: the lesion's polarity decided once on
    the RECIST slice (from the drawn RECIST, else the seed's own), kept for the walk;
    ``{}`` for segmenters without one (ellipse, GrabCut)."""
    mode = getattr(segmenter, "polarity", None)
    if not isinstance(mode, str) or not hasattr(segmenter, "_modality"):
        return {}
    recist = request.recist
    if recist is None:
        try:
            recist = recist_from_mask(request.seed, slice_index=request.z0)
        except (RecistError, ValueError):
            return {}
    modality = segmenter._modality(volume, None)
    pol = lesion_polarity(volume[request.z0], recist, segmenter.preprocess, modality=modality,
                          window=getattr(segmenter, "window", None), mode=mode)
    return {"polarity": pol or "dark"}


def volume_paste_indices(labels: np.ndarray, lesion_id: int, mask: np.ndarray
                         ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """``(paste, clear)`` fancy indices putting a 3D ``mask`` into ``labels``.

    ``paste``: the mask's voxels that are background or the lesion's already (a lesion
    never eats a neighbour); ``clear``: the lesion's voxels outside the mask.
    """
    labels = np.asarray(labels)
    mine = labels == int(lesion_id)
    paste = np.nonzero(np.asarray(mask, bool) & ~mine & (labels == 0))
    clear = np.nonzero(mine & ~np.asarray(mask, bool))
    return paste, clear


def measure_volume(labels: np.ndarray, lesion_id: int,
                   spacing: Sequence[float] | None) -> dict[str, Any]:
    """The volume columns of a lesion as its label now is (hand edits included)."""
    return volume_values(np.asarray(labels) == int(lesion_id), spacing)


class _SessionVolumes:
    """The session's 3D lesions (a mixin of :class:`AnnotationSession`)."""

    lesions: dict[int, Lesion]

    def volume_request(self, lesion_id: int, labels: np.ndarray) -> VolumeRequest | None:
        """A request for a committed, segmented lesion of a volume (``None`` otherwise,
        or when its mask on the RECIST slice is empty)."""
        les = self.lesions.get(int(lesion_id))
        if les is None or not les.committed or les.status != DONE or les.slice_index is None:
            return None
        seed = np.asarray(labels[int(les.slice_index)]) == les.id
        if not seed.any():
            return None
        les.volume_generation += 1
        return VolumeRequest(les.id, les.generation, les.volume_generation,
                             int(les.slice_index), seed, None if les.edited else les.recist)

    def is_volume_current(self, request: VolumeRequest) -> bool:
        les = self.lesions.get(request.lesion_id)
        return (les is not None and les.committed and les.generation == request.generation
                and les.volume_generation == request.volume_generation)

    def set_slice_measure(self, lesion_id: int, area_px: int, measured: Recist | None,
                          box: Any) -> None:
        """The RECIST slice's area / mask L, W after a 3D result replaced its mask (the
        intensity blend of ``segment --3d``; not a hand edit)."""
        les = self.lesions.get(int(lesion_id))
        if les is not None:
            les.area_px, les.measured, les.box = int(area_px), measured, box

    def set_volume(self, lesion_id: int, values: dict[str, Any] | None) -> None:
        """Store (or with ``None`` drop) a lesion's volume columns."""
        les = self.lesions.get(int(lesion_id))
        if les is not None:
            les.volume = None if values is None else dict(values)
