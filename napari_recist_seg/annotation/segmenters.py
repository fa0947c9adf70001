"""Segmenters for the annotator: the model's ``Predictor``, or a shape that needs no model.

A segmenter is anything with ``segment(image, recists) -> list[result]``
(:class:`Segmenter`); :class:`ShapeSegmenter` gives the ellipse / GrabCut weak targets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from napari_recist_seg import targets
from napari_recist_seg.intensity import is_ct, resolve_window
from napari_recist_seg.predict import DEFAULT_MODEL_DIR, LesionResult, Predictor, measure_mask
from napari_recist_seg.recist import Recist, RecistError

#: The annotator's test-time augmentation (napari_recist_seg.tta): the left-right mirror
#: in the same network call (+0.0006..+0.0017 mean Dice on the test proxy) keeps the
#: 60 ms draw-to-mask budget; "flip4" (+0.0011..+0.0024) took it to 62-73 ms on a 2-core
#: CPU (docs/RESULTS.md, "flip TTA"). Bulk ``segment`` keeps "none".
ANNOTATOR_TTA = "flip"

__all__ = [
    "SEGMENTER_CHOICES",
    "Segmenter",
    "ShapeResult",
    "ShapeSegmenter",
    "load_segmenter",
    "segmenter_device",
    "segmenter_name",
]


class Segmenter(Protocol):
    """What the annotator needs from a segmenter (the model's ``Predictor`` is one).

    ``segment(image, recists)`` takes the whole image (2D grey, ``(H, W, 3)`` RGB or a
    ``(Z, H, W)`` volume, where each RECIST's ``slice_index`` picks the plane) and
    returns one result per RECIST, in order. ``segment_click(image, point)`` is
    optional (model only).
    """

    def segment(self, image: np.ndarray, recists: Sequence[Recist]) -> list[Any]: ...


# Shape segmenters return the predictor's result type, so the annotator handles one kind.
ShapeResult = LesionResult


def _plane(image: np.ndarray, recist: Recist) -> np.ndarray:
    """The 2D (or RGB) plane a RECIST lives on; a view, never a copy of a volume."""
    if recist.slice_index is not None and image.ndim == 3 and image.shape[-1] not in (3, 4):
        return image[int(recist.slice_index)]
    if image.ndim == 3 and image.shape[-1] not in (3, 4):
        raise RecistError(
            f"the image is a {'x'.join(map(str, image.shape))} volume but the RECIST has "
            "no slice index"
        )
    return image


class ShapeSegmenter:
    """Weak-target segmenter needing no model: the RECIST ellipse, or GrabCut around it.

    Only a box around the lesion is read and returned (memory bounded by the crop).

    Parameters
    ----------
    method : {"ellipse", "grabcut"}
    margin : float
        Box margin around the RECIST endpoints, as a fraction of the long axis (GrabCut
        needs background around the lesion).
    """

    device = "cpu"

    def __init__(self, method: str = "ellipse", *, margin: float = 0.5) -> None:
        if method not in ("ellipse", "grabcut"):
            raise ValueError(f"unknown shape segmenter {method!r}; use 'ellipse' or 'grabcut'")
        self.method = method
        self.margin = float(margin)
        self.name = "Ellipse (no model)" if method == "ellipse" else "GrabCut (no model)"
        #: Intensity rule for GrabCut (:mod:`napari_recist_seg.intensity`): ``None`` =
        #: CT when a signed image goes below -200 HU; a CT ``window`` preset or pair.
        self.modality: str | None = None
        self.window: Any = None

    def __repr__(self) -> str:
        return f"ShapeSegmenter({self.method!r})"

    def _box(self, recist: Recist, plane_shape: Sequence[int]) -> tuple[int, int, int, int]:
        lo, hi = recist.bbox()
        pad = self.margin * recist.long_length + 2.0
        r0 = max(int(math.floor(lo[0] - pad)), 0)
        c0 = max(int(math.floor(lo[1] - pad)), 0)
        r1 = min(int(math.ceil(hi[0] + pad)) + 1, int(plane_shape[0]))
        c1 = min(int(math.ceil(hi[1] + pad)) + 1, int(plane_shape[1]))
        if r1 <= r0 or c1 <= c0:
            raise RecistError(f"the RECIST lies outside the {plane_shape[0]}x{plane_shape[1]} image")
        return r0, c0, r1, c1

    def segment_one(self, image: np.ndarray, recist: Recist) -> ShapeResult:
        plane = _plane(image, recist)
        recist.validate(plane.shape[:2])
        if self.method == "ellipse":
            offset, mask = targets.ellipse_crop(recist, plane.shape[:2])
            mask = np.asarray(mask, bool)
        else:
            r0, c0, r1, c1 = self._box(recist, plane.shape[:2])
            crop = np.asarray(plane[r0:r1, c0:c1])
            window = self._ct_window(crop)
            mask = np.asarray(
                targets.grabcut_mask(crop, recist.transformed((r0, c0), 1.0), window=window), bool
            )
            offset = (r0, c0)
        offset = (int(offset[0]), int(offset[1]))
        return ShapeResult(
            recist=recist,
            offset=offset,
            mask=mask,
            probability=mask.astype(np.float32),
            measured=measure_mask(mask, offset, recist),
        )

    def _ct_window(self, crop: np.ndarray) -> tuple[float, float] | None:
        """The CT window GrabCut reads ``crop`` through, ``None`` for other images."""
        if crop.ndim != 2:
            return None
        if self.modality is not None:
            return resolve_window(self.window) if is_ct(self.modality) else None
        if np.issubdtype(crop.dtype, np.signedinteger) and crop.min() < -200:
            return resolve_window(self.window)  # CT in HU: soft tissue unless chosen
        return None

    def segment(self, image: np.ndarray, recists: Sequence[Recist]) -> list[ShapeResult]:
        return [self.segment_one(image, r) for r in recists]

    def segment_click(self, image: np.ndarray, point: Sequence[float], **kwargs: Any) -> Any:
        raise NotImplementedError(
            "click-to-segment needs a model: choose the default model or a checkpoint "
            "(the ellipse and GrabCut need both RECIST axes)"
        )


SEGMENTER_CHOICES: tuple[str, ...] = ("default", "checkpoint", "ellipse", "grabcut")


def load_segmenter(choice: str, path: str | os.PathLike[str] | None = None, device: str = "auto") -> Any:
    """Build the segmenter named in the annotator's model selector.

    Parameters
    ----------
    choice : {"default", "checkpoint", "ellipse", "grabcut"}
        ``"default"`` loads the model shipped in the package, ``"checkpoint"`` the one
        at ``path``; either with :data:`ANNOTATOR_TTA` test-time augmentation.
    """
    if choice in ("ellipse", "grabcut"):
        return ShapeSegmenter(choice)
    if choice not in ("default", "checkpoint"):
        raise ValueError(f"unknown segmenter {choice!r}; choose one of {SEGMENTER_CHOICES}")
    if choice == "checkpoint" and not path:
        raise ValueError("choose a checkpoint file or folder first")
    return Predictor.load(None if choice == "default" else path, device=device, tta=ANNOTATOR_TTA)


def segmenter_device(segmenter: Any) -> str:
    """A short device description of a segmenter (``'cpu (onnxruntime)'``, ``'cuda:0'``...)."""
    dev = getattr(segmenter, "device", None)
    dev = "cpu" if dev is None else str(dev)
    backend = getattr(segmenter, "backend", None)
    return f"{dev} ({backend})" if isinstance(backend, str) and backend != "eager" else dev


def segmenter_name(segmenter: Any) -> str:
    """A short description: ``"default model (A1+L, resnet18, flip TTA)"``, ``"Ellipse (no model)"``..."""
    name = getattr(segmenter, "name", None)
    if isinstance(name, str) and name:
        return name
    config = getattr(segmenter, "config", None)
    path = getattr(segmenter, "path", None)
    if config is not None and hasattr(config, "mode"):
        mode = {"a1": "A1", "a1l": "A1+L"}.get(str(config.mode), str(config.mode))
        what = f"{mode}, {getattr(config, 'encoder', '?')}"
        tta = getattr(segmenter, "tta", "none")
        what += f", {tta} TTA" if tta not in ("none", False, None) else ""
        try:
            is_default = path is not None and Path(path).resolve() == Path(DEFAULT_MODEL_DIR).resolve()
        except Exception:  # noqa: BLE001 - a description must never fail
            is_default = False
        where = "default model" if is_default else (Path(path).name if path is not None else "model")
        return f"{where} ({what})"
    return type(segmenter).__name__
