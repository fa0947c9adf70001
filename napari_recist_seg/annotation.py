"""Lesion bookkeeping for the RECIST annotator: lines -> lesions -> masks (no Qt, no napari).

The napari widget observes a Shapes layer of lines and asks an
:class:`AnnotationSession` what they mean. The session is the single source of truth:

- it pairs lines into lesions (two lines make one lesion; with ``quick=True`` one long
  axis alone is a lesion, and a short axis ``quick_ratio * L`` is proposed);
- it applies the Bidirectional-tool rules of :func:`napari_recist_seg.recist.snap` (the
  second line is made perpendicular to the first through their crossing; if it is the
  longer one the two swap) and reports pairs that do not cross instead of guessing;
- it tracks edits (only the edited lesion is re-segmented, with a generation counter so
  that a result computed for an older geometry is discarded), deletions (only that
  lesion's mask is cleared), commits (a committed lesion's lines are locked: edits are
  undone) and an undo stack;
- it turns lesions into table rows, RECIST CSV records and measurement rows.

Segmentation itself is done by a *segmenter*: anything with
``segment(image, recists) -> list[result]`` (the model's
:class:`napari_recist_seg.predict.Predictor`, or :class:`ShapeSegmenter` for the
ellipse / GrabCut weak targets that need no model). A result needs ``offset`` (top-left
``(row, col)`` of ``mask`` in the plane), ``mask`` (bool crop) and may carry
``cluster``, ``confidence`` and ``measured`` (the RECIST measured on the mask).

Examples
--------
>>> import numpy as np
>>> s = AnnotationSession(plane_shape=(100, 100))
>>> out = s.sync([LineObs(-1, np.array([[50.0, 20.0], [50.0, 80.0]]))])
>>> [l.status for l in s.lesions.values()]       # one line: waiting for its partner
['open']
>>> obs = [LineObs(v.line_id, v.coords) for v in s.layer_lines()]
>>> out = s.sync(obs + [LineObs(-1, np.array([[30.0, 45.0], [70.0, 55.0]]))])
>>> lesion = s.lesions[1]
>>> lesion.status, [float(round(v, 1)) for v in lesion.recist.short_axis[:, 1]]  # snapped
('pending', [50.0, 50.0])
>>> [(r.lesion_id, r.generation) for r in out.segment]
[(1, 1)]
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from napari_recist_seg.measurements import MEASUREMENT_COLUMNS, measurement_row
from napari_recist_seg.pairing import clip_segment, pair_problem
from napari_recist_seg.predict import LesionResult, measure_mask
from napari_recist_seg.recist import (
    MIN_AXIS_LENGTH_PX,
    Recist,
    RecistError,
    recist_from_mask,
    snap,
)

__all__ = [
    "DEFAULT_QUICK_RATIO",
    "DISAGREEMENT_THRESHOLD",
    "AnnotationSession",
    "ClickRequest",
    "Lesion",
    "LineObs",
    "LineView",
    "SegmentOutcome",
    "SegmentRequest",
    "Segmenter",
    "ShapeResult",
    "ShapeSegmenter",
    "SyncResult",
    "TABLE_COLUMNS",
    "clear_indices",
    "export_masks",
    "export_measurements",
    "export_recist_csv",
    "export_recist_csv_many",
    "format_length",
    "free_path",
    "save_image",
    "load_segmenter",
    "paste_indices",
    "records_for_image",
    "run_requests",
    "spacing_from_scale",
]

#: Quick mode: the proposed short axis is this fraction of the long axis.
DEFAULT_QUICK_RATIO = 0.6
#: Drawn vs mask-measured L or W differing by more than this fraction is flagged.
DISAGREEMENT_THRESHOLD = 0.2
#: Undo depth.
UNDO_LIMIT = 100
# Coordinates closer than this (px) count as unchanged (napari round-trips floats).
_SAME_ATOL = 1e-4

# Lesion states.
OPEN = "open"  # one line, waiting for its partner
INVALID = "invalid"  # two lines that do not make a RECIST (message says why)
PENDING = "pending"  # valid RECIST, segmentation requested
DONE = "done"  # mask pasted
FAILED = "failed"  # the segmenter failed (message says why)


# -- units -----------------------------------------------------------------------------


def spacing_from_scale(scale: Sequence[float]) -> tuple[float, float] | None:
    """In-plane spacing ``(row_mm, col_mm)`` from a napari layer scale, ``None`` if unknown.

    A scale of all ones is napari's default and means "unknown" (lengths in px).

    >>> spacing_from_scale((1.0, 1.0)) is None, spacing_from_scale((3.0, 0.7, 0.7))
    (True, (0.7, 0.7))
    """
    sc = tuple(float(s) for s in scale)
    if len(sc) < 2:
        raise ValueError(f"a scale needs at least two values, got {sc}")
    plane = sc[-2:]
    if all(abs(s - 1.0) < 1e-12 for s in sc):
        return None
    if not all(math.isfinite(s) and s > 0 for s in plane):
        return None
    return plane


def format_length(px: float, spacing: tuple[float, float] | None, mm: float | None = None) -> str:
    """``'12.3 mm'`` when the spacing is known, else ``'12.3 px'``.

    >>> format_length(10.0, None), format_length(10.0, (0.5, 0.5), 5.0)
    ('10.0 px', '5.0 mm')
    """
    if spacing is not None and mm is not None:
        return f"{mm:.1f} mm"
    return f"{px:.1f} px"


def _segment_length(seg: np.ndarray, spacing: tuple[float, float] | None) -> tuple[float, float | None]:
    d = seg[1] - seg[0]
    px = float(np.hypot(d[0], d[1]))
    if spacing is None:
        return px, None
    dm = d * np.asarray(spacing)
    return px, float(np.hypot(dm[0], dm[1]))


# -- segmenters -----------------------------------------------------------------------


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
        from napari_recist_seg import targets

        plane = _plane(image, recist)
        recist.validate(plane.shape[:2])
        if self.method == "ellipse":
            offset, mask = targets.ellipse_crop(recist, plane.shape[:2])
            mask = np.asarray(mask, bool)
        else:
            r0, c0, r1, c1 = self._box(recist, plane.shape[:2])
            crop = np.asarray(plane[r0:r1, c0:c1])
            window = None
            if crop.ndim == 2 and np.issubdtype(crop.dtype, np.signedinteger) and crop.min() < -200:
                window = (40.0, 400.0)  # CT in HU: the soft-tissue reading window
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
        at ``path``.
    """
    if choice in ("ellipse", "grabcut"):
        return ShapeSegmenter(choice)
    if choice not in ("default", "checkpoint"):
        raise ValueError(f"unknown segmenter {choice!r}; choose one of {SEGMENTER_CHOICES}")
    if choice == "checkpoint" and not path:
        raise ValueError("choose a checkpoint file or folder first")
    from napari_recist_seg.predict import Predictor

    return Predictor.load(None if choice == "default" else path, device=device)


def segmenter_device(segmenter: Any) -> str:
    """A short device description of a segmenter (``'cpu (onnxruntime)'``, ``'cuda:0'``...)."""
    dev = getattr(segmenter, "device", None)
    dev = "cpu" if dev is None else str(dev)
    backend = getattr(segmenter, "backend", None)
    return f"{dev} ({backend})" if isinstance(backend, str) and backend != "eager" else dev


def segmenter_name(segmenter: Any) -> str:
    """A short description: ``"default model (A1+L, resnet18)"``, ``"Ellipse (no model)"``..."""
    name = getattr(segmenter, "name", None)
    if isinstance(name, str) and name:
        return name
    config = getattr(segmenter, "config", None)
    path = getattr(segmenter, "path", None)
    if config is not None and hasattr(config, "mode"):
        mode = {"a1": "A1", "a1l": "A1+L"}.get(str(config.mode), str(config.mode))
        what = f"{mode}, {getattr(config, 'encoder', '?')}"
        try:
            from napari_recist_seg.predict import DEFAULT_MODEL_DIR

            is_default = path is not None and Path(path).resolve() == Path(DEFAULT_MODEL_DIR).resolve()
        except Exception:  # noqa: BLE001 - a description must never fail
            is_default = False
        where = "default model" if is_default else (Path(path).name if path is not None else "model")
        return f"{where} ({what})"
    return type(segmenter).__name__


# -- requests and outcomes ------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRequest:
    """Segment one lesion from its RECIST; valid only while ``generation`` is current."""

    lesion_id: int
    generation: int
    recist: Recist


@dataclass(frozen=True)
class ClickRequest:
    """Segment the lesion under one click: ``point`` is ``(row, col)`` in the plane."""

    token: int
    point: tuple[float, float]
    slice_index: int | None = None
    spacing: tuple[float, float] | None = None


@dataclass
class SegmentOutcome:
    request: SegmentRequest | ClickRequest
    result: Any = None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (RecistError, NotImplementedError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_requests(
    segmenter: Any, image: np.ndarray, requests: Sequence[SegmentRequest | ClickRequest]
) -> Iterator[SegmentOutcome]:
    """Run a batch of requests, yielding one outcome per request (meant for a worker).

    RECIST requests on one plane go to the segmenter in one call; if that call fails,
    each lesion is retried alone so that one bad lesion does not fail the others.
    Exceptions become ``error`` strings, never escape.
    """
    recist_reqs = [r for r in requests if isinstance(r, SegmentRequest)]
    groups: dict[int | None, list[SegmentRequest]] = {}
    for r in recist_reqs:
        groups.setdefault(r.recist.slice_index, []).append(r)
    for group in groups.values():
        try:
            results = list(segmenter.segment(image, [r.recist for r in group]))
            if len(results) != len(group):
                raise RuntimeError(
                    f"the segmenter returned {len(results)} results for {len(group)} lesions"
                )
        except Exception:  # noqa: BLE001 - retried one by one below for a precise error
            for r in group:
                try:
                    yield SegmentOutcome(r, segmenter.segment(image, [r.recist])[0])
                except Exception as exc:  # noqa: BLE001
                    yield SegmentOutcome(r, error=_describe(exc))
            continue
        for r, res in zip(group, results):
            yield SegmentOutcome(r, res)
    for r in requests:
        if isinstance(r, ClickRequest):
            fn = getattr(segmenter, "segment_click", None)
            if fn is None:
                yield SegmentOutcome(r, error="this segmenter cannot segment from a click")
                continue
            try:
                yield SegmentOutcome(
                    r, fn(image, r.point, slice_index=r.slice_index, spacing=r.spacing)
                )
            except Exception as exc:  # noqa: BLE001
                yield SegmentOutcome(r, error=_describe(exc))


# -- pasting into a label image ---------------------------------------------------------


Box = tuple[int | None, int, int, int, int]  # (slice, row0, col0, rows, cols)


def _box_slices(labels: np.ndarray, box: Box) -> tuple[Any, ...]:
    z, r0, c0, h, w = box
    sl = (slice(r0, r0 + h), slice(c0, c0 + w))
    return sl if z is None else (int(z),) + sl


def clear_indices(labels: np.ndarray, lesion_id: int, box: Box | None) -> tuple[np.ndarray, ...]:
    """Fancy indices of the pixels of ``lesion_id`` inside ``box`` (its last pasted mask)."""
    if box is None:
        return tuple(np.zeros(0, np.intp) for _ in range(labels.ndim))
    z, r0, c0, h, w = box
    region = np.asarray(labels[_box_slices(labels, box)])
    rr, cc = np.nonzero(region == lesion_id)
    rr = rr + r0
    cc = cc + c0
    if z is None:
        return rr, cc
    return np.full(rr.shape, int(z), np.intp), rr, cc


def paste_indices(
    labels: np.ndarray, lesion_id: int, result: Any, slice_index: int | None
) -> tuple[tuple[np.ndarray, ...], Box]:
    """Fancy indices where ``result``'s mask goes, and its box.

    Pixels already owned by another lesion are left alone: a lesion never eats its
    neighbour's mask. Parts of the crop outside the image are dropped.
    """
    mask = np.asarray(result.mask, bool)
    r0, c0 = (int(v) for v in result.offset)
    rows, cols = labels.shape[-2:]
    h, w = mask.shape
    # Clip the crop to the image (the predictor already does; be safe for others).
    mr0, mc0 = max(0, -r0), max(0, -c0)
    mr1, mc1 = min(h, rows - r0), min(w, cols - c0)
    if mr1 <= mr0 or mc1 <= mc0:
        empty = tuple(np.zeros(0, np.intp) for _ in range(labels.ndim))
        return empty, (slice_index, max(r0, 0), max(c0, 0), 0, 0)
    mask = mask[mr0:mr1, mc0:mc1]
    box: Box = (slice_index, r0 + mr0, c0 + mc0, mr1 - mr0, mc1 - mc0)
    region = np.asarray(labels[_box_slices(labels, box)])
    ok = mask & ((region == 0) | (region == lesion_id))
    rr, cc = np.nonzero(ok)
    rr = rr + box[1]
    cc = cc + box[2]
    if slice_index is None:
        return (rr, cc), box
    return (np.full(rr.shape, int(slice_index), np.intp), rr, cc), box


# -- the session ---------------------------------------------------------------------


@dataclass
class LineObs:
    """One shape as observed in the napari layer.

    ``line_id`` is the id the session gave it (``-1`` for a new shape);
    ``lesion_hint`` / ``axis_hint`` pair lines that arrive with known roles (a reader
    or an import sets them); ``shape_type`` other than ``"line"`` is refused.
    """

    line_id: int
    coords: np.ndarray
    lesion_hint: int | None = None
    axis_hint: str | None = None
    shape_type: str = "line"


@dataclass
class LineView:
    """How the session wants one line shown: its id, coordinates, role and text."""

    line_id: int
    coords: np.ndarray
    lesion_id: int
    axis: str  # "long", "short" or "" (open line)
    label: str  # text shown next to the line (the lesion's L and W on its long axis)
    state: str  # "ok", "open", "invalid", "failed" or "committed"


@dataclass
class Lesion:
    """One lesion: its lines, snapped RECIST, segmentation state and results."""

    id: int
    long_id: int
    short_id: int | None = None
    slice_index: int | None = None
    recist: Recist | None = None
    quick: bool = False
    committed: bool = False
    status: str = OPEN
    message: str = ""
    generation: int = 0
    cluster: int | None = None
    confidence: float | None = None
    measured: Recist | None = None
    area_px: int | None = None
    box: Box | None = None
    #: The mask was painted / erased / filled by hand (or imported): it is the truth
    #: and is never replaced by a segmentation without the user asking.
    edited: bool = False

    @property
    def line_ids(self) -> list[int]:
        return [self.long_id] if self.short_id is None else [self.long_id, self.short_id]


@dataclass
class SyncResult:
    """What the widget must do after a sync / undo / commit.

    ``rewrite``: the layer's lines differ from the session's (snapped, proposed,
    restored, removed) and must be rewritten from :meth:`AnnotationSession.layer_lines`;
    ``segment``: lesions to (re-)segment; ``clear``: lesions whose mask must be
    removed now; ``messages``: what to tell the user.
    """

    rewrite: bool = False
    segment: list[SegmentRequest] = field(default_factory=list)
    clear: list[tuple[int, Box | None]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    changed: bool = False

    def extend(self, other: "SyncResult") -> None:
        self.rewrite |= other.rewrite
        self.changed |= other.changed
        self.segment += other.segment
        self.clear += other.clear
        self.messages += other.messages


TABLE_COLUMNS: tuple[str, ...] = (
    "lesion",
    "slice",
    "status",
    "long_drawn",
    "short_drawn",
    "long_measured",
    "short_measured",
    "disagreement",
    "flag",
    "area",
    "cluster",
    "confidence",
    "committed",
    "unit",
    "edited",
)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=_SAME_ATOL, rtol=0))


class AnnotationSession:
    """The lesions drawn on one image: pairing, snapping, edits, undo and results.

    Parameters
    ----------
    plane_shape : (int, int)
        ``(rows, cols)`` of the image plane.
    n_slices : int, optional
        Number of slices for a volume (lines then have 3 coordinates, the first being
        the slice); ``None`` for a 2D (grey or RGB) image.
    spacing : (float, float), optional
        In-plane pixel size ``(row_mm, col_mm)``; ``None`` when unknown (px).
    quick : bool
        Quick mode: a lone long axis is a lesion, with a proposed short axis.
    quick_ratio : float
        Proposed short axis length as a fraction of the long axis.
    """

    def __init__(
        self,
        plane_shape: Sequence[int],
        *,
        n_slices: int | None = None,
        spacing: tuple[float, float] | None = None,
        quick: bool = False,
        quick_ratio: float = DEFAULT_QUICK_RATIO,
    ) -> None:
        self.plane_shape = (int(plane_shape[0]), int(plane_shape[1]))
        self.n_slices = None if n_slices is None else int(n_slices)
        self.ndim = 2 if n_slices is None else 3
        self.spacing = None if spacing is None else (float(spacing[0]), float(spacing[1]))
        self.quick = bool(quick)
        self.quick_ratio = float(quick_ratio)
        self.lines: dict[int, np.ndarray] = {}
        self.order: list[int] = []
        self.lesions: dict[int, Lesion] = {}
        self._next_line = 1
        self._next_lesion = 1
        self._undo: list[dict[str, Any]] = []
        #: New lines shorter than this (data px) are stray clicks and dropped; the
        #: widget sets it from the canvas zoom (:func:`pairing.stray_length`).
        self.min_line_length = MIN_AXIS_LENGTH_PX

    # -- helpers ---------------------------------------------------------------------
    @property
    def unit(self) -> str:
        return "px" if self.spacing is None else "mm"

    def _new_line_id(self) -> int:
        i = self._next_line
        self._next_line += 1
        return i

    def _new_lesion_id(self, wanted: int | None = None) -> int:
        if wanted is not None and wanted > 0 and wanted not in self.lesions:
            self._next_lesion = max(self._next_lesion, wanted + 1)
            return wanted
        i = self._next_lesion
        while i in self.lesions:
            i += 1
        self._next_lesion = i + 1
        return i

    def _lesion_of_line(self) -> dict[int, Lesion]:
        return {lid: les for les in self.lesions.values() for lid in les.line_ids}

    def _plane_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords[:, -2:] if self.ndim == 3 else coords

    def _slice_of(self, coords: np.ndarray) -> int | None:
        if self.ndim == 2:
            return None
        return int(round(float(np.mean(coords[:, 0]))))

    def _full_coords(self, plane: np.ndarray, slice_index: int | None) -> np.ndarray:
        plane = np.asarray(plane, float)
        if self.ndim == 2:
            return plane.copy()
        return np.column_stack([np.full(2, float(slice_index or 0)), plane])

    def _make_recist(self, long_c: np.ndarray, short_c: np.ndarray, slice_index: int | None) -> Recist:
        return Recist(
            self._plane_coords(long_c),
            self._plane_coords(short_c),
            slice_index=slice_index,
            spacing=self.spacing,
        )

    def _check_inside(self, recist: Recist) -> None:
        rows, cols = self.plane_shape
        pts = recist.endpoints
        if (
            pts[:, 0].min() < -0.5
            or pts[:, 1].min() < -0.5
            or pts[:, 0].max() > rows - 0.5
            or pts[:, 1].max() > cols - 0.5
        ):
            raise RecistError(f"an endpoint lies outside the {rows}x{cols} image")
        if recist.slice_index is not None and self.n_slices is not None:
            if not 0 <= recist.slice_index < self.n_slices:
                raise RecistError(
                    f"slice {recist.slice_index} is outside the volume (0..{self.n_slices - 1})"
                )

    def _snapshot(self) -> dict[str, Any]:
        return {
            "lines": {k: v.copy() for k, v in self.lines.items()},
            "order": list(self.order),
            "lesions": copy.deepcopy(self.lesions),
        }

    def _push_undo(self, snap_: dict[str, Any] | None = None) -> None:
        self._undo.append(snap_ if snap_ is not None else self._snapshot())
        del self._undo[:-UNDO_LIMIT]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    # -- geometry of one lesion -----------------------------------------------------
    def _request(self, les: Lesion) -> SegmentRequest:
        les.generation += 1
        les.status = PENDING
        les.message = ""
        assert les.recist is not None
        return SegmentRequest(les.id, les.generation, les.recist)

    def _invalidate(self, les: Lesion, message: str, out: SyncResult) -> None:
        les.generation += 1
        les.status = INVALID
        les.message = message
        les.recist = None
        if les.edited:
            # A hand-corrected mask is never thrown away by a line edit.
            out.messages.append(f"lesion {les.id}: {message} (its hand-edited mask is kept)")
            return
        les.cluster = les.confidence = les.measured = les.area_px = None
        out.clear.append((les.id, les.box))
        les.box = None
        out.messages.append(f"lesion {les.id}: {message}")

    def _open(self, les: Lesion, out: SyncResult) -> None:
        """The lesion lost a line: it waits for a new partner; its mask goes."""
        les.generation += 1
        les.status = OPEN
        les.message = ""
        les.recist = None
        les.quick = False
        les.cluster = les.confidence = les.measured = les.area_px = None
        out.clear.append((les.id, les.box))
        les.box = None

    def _apply_pair(
        self,
        les: Lesion,
        first_id: int,
        second_id: int,
        out: SyncResult,
        *,
        snap_second: bool = True,
        what: str = "the second line",
    ) -> None:
        """Snap the pair (first = long candidate), write back, and request a mask."""
        first = self.lines[first_id]
        second = self.lines[second_id]
        les.long_id, les.short_id = first_id, second_id
        try:
            s1, s2 = self._slice_of(first), self._slice_of(second)
            if s1 != s2:
                raise RecistError(
                    f"{what} is on slice {s2}, the first on slice {s1}; draw both axes on one slice"
                )
            drawn = self._make_recist(first, second, s1)
            snapped = snap(drawn, image_shape=self.plane_shape) if snap_second else drawn.validate()
            if snapped.short_length > snapped.long_length:
                snapped = replace(snapped, long_axis=snapped.short_axis, short_axis=snapped.long_axis)
            self._check_inside(snapped)
        except RecistError as exc:
            reason = str(exc)
            if "do not cross" in reason:
                reason = (
                    f"{what} does not cross the first one, so they are not a RECIST pair: "
                    "move it across the long axis (or delete it)"
                )
            self._invalidate(les, reason, out)
            return
        swapped = not _same(self._plane_coords(first), snapped.long_axis)
        if swapped and _same(self._plane_coords(first), snapped.short_axis):
            les.long_id, les.short_id = second_id, first_id
            self.lines[second_id] = self._full_coords(snapped.long_axis, snapped.slice_index)
            self.lines[first_id] = self._full_coords(snapped.short_axis, snapped.slice_index)
        else:
            self.lines[first_id] = self._full_coords(snapped.long_axis, snapped.slice_index)
            self.lines[second_id] = self._full_coords(snapped.short_axis, snapped.slice_index)
        les.slice_index = snapped.slice_index
        les.recist = snapped
        out.segment.append(self._request(les))

    def _carry_short(self, les: Lesion, new_long: np.ndarray) -> np.ndarray:
        """Move the short axis with an edited long axis (same crossing fraction, reach)."""
        old = les.recist
        assert old is not None
        t, _ = old.crossing_parameters()
        p, q = old.long_axis
        d = (q - p) / old.long_length
        normal = np.array([-d[1], d[0]])
        crossing = p + t * (q - p)
        reach = (old.short_axis - crossing) @ normal
        np_, nq = self._plane_coords(new_long)
        length = float(np.linalg.norm(nq - np_))
        if length < 1e-9:
            return self._plane_coords(self.lines[les.short_id])  # type: ignore[index]
        nd = (nq - np_) / length
        nn = np.array([-nd[1], nd[0]])
        nc = np_ + t * (nq - np_)
        return nc + np.outer(reach, nn)

    def _propose_short(self, long_plane: np.ndarray) -> np.ndarray:
        p, q = long_plane
        length = float(np.linalg.norm(q - p))
        d = (q - p) / length
        normal = np.array([-d[1], d[0]])
        mid = (p + q) / 2.0
        half = self.quick_ratio * length / 2.0
        short = np.vstack([mid - half * normal, mid + half * normal])
        # Keep the proposal inside the image.
        rows, cols = self.plane_shape
        short[:, 0] = np.clip(short[:, 0], 0, rows - 1)
        short[:, 1] = np.clip(short[:, 1], 0, cols - 1)
        return short

    # -- sync with the layer ---------------------------------------------------------
    def sync(self, observed: Sequence[LineObs]) -> SyncResult:
        """Reconcile the session with what the Shapes layer now holds.

        Parameters
        ----------
        observed : sequence of LineObs
            Every shape of the layer, in layer order.

        Returns
        -------
        SyncResult
        """
        out = SyncResult()
        before = self._snapshot()
        seen: dict[int, np.ndarray] = {}
        seen_order: list[int] = []
        new: list[LineObs] = []
        bad_new = 0
        for obs in observed:
            coords = np.asarray(obs.coords, float)
            lid = int(obs.line_id) if obs.line_id is not None else -1
            if lid in self.lines and lid not in seen:
                if obs.shape_type != "line" or coords.shape != (2, self.ndim):
                    # A line turned into a path (vertex added) or another shape: keep
                    # the line as it was.
                    out.messages.append(
                        "RECIST axes are straight lines with two ends; the edit was undone"
                    )
                    out.rewrite = True
                    seen[lid] = self.lines[lid]
                else:
                    seen[lid] = self._clipped(coords)
                seen_order.append(lid)
            else:
                if obs.shape_type != "line" or coords.shape != (2, self.ndim):
                    bad_new += 1
                    continue
                new.append(replace(obs, coords=self._clipped(coords)))
        if bad_new:
            out.messages.append(
                f"removed {bad_new} shape(s) that are not lines: the RECIST layer holds "
                "only straight lines (two per lesion)"
            )
            out.rewrite = True
        removed = [lid for lid in self.order if lid not in seen]
        changed = [lid for lid in seen_order if not _same(seen[lid], self.lines[lid])]
        if not (removed or changed or new):
            if seen_order != self.order:
                self.order = [lid for lid in seen_order]
                out.rewrite = out.rewrite or bad_new > 0
            return out

        owner = self._lesion_of_line()
        # Committed lesions are locked: restore their lines.
        locked: set[int] = set()
        for lid in removed + changed:
            les = owner.get(lid)
            if les is not None and les.committed:
                locked.add(les.id)
        if locked:
            out.messages.append(
                "lesion(s) "
                + ", ".join(map(str, sorted(locked)))
                + " are committed: their lines are locked (uncommit to edit); restored"
            )
            out.rewrite = True
        removed = [lid for lid in removed if owner.get(lid) is None or not owner[lid].committed]
        changed = [lid for lid in changed if owner.get(lid) is None or not owner[lid].committed]
        if not (removed or changed or new):
            # Only locked lines were touched: put them back, nothing else changed.
            self.order = seen_order + [
                lid for lid in self.order if lid not in seen
            ]
            return out

        new_order = [lid for lid in seen_order]
        for les_id in locked:
            for lid in self.lesions[les_id].line_ids:
                if lid not in seen:
                    new_order.append(lid)

        # Removed lines.
        removed_set = set(removed)
        for lid in removed:
            del self.lines[lid]
        for les in list(self.lesions.values()):
            gone = [lid for lid in les.line_ids if lid in removed_set]
            if not gone:
                continue
            left = [lid for lid in les.line_ids if lid not in removed_set]
            if not left:
                les.generation += 1
                out.clear.append((les.id, les.box))
                del self.lesions[les.id]
            else:
                les.long_id, les.short_id = left[0], None
                self._open(les, out)

        # Edited lines.
        for lid in changed:
            self.lines[lid] = seen[lid]
        touched: dict[int, set[int]] = {}
        for lid in changed:
            les = owner.get(lid)
            if les is not None and les.id in self.lesions:
                touched.setdefault(les.id, set()).add(lid)
        for les_id, lids in touched.items():
            les = self.lesions[les_id]
            if les.short_id is None:
                les.slice_index = self._slice_of(self.lines[les.long_id])
                # A lone line moved across another lone line: the two are one lesion.
                partner = self._valid_partner(les.long_id, les.slice_index, out, exclude=les.id)
                if partner is not None:
                    del self.lesions[les.id]
                    self._apply_pair(partner, partner.long_id, les.long_id, out)
                continue
            if lids == {les.long_id} and les.recist is not None:
                # Long axis edited alone: the short axis follows it (Bidirectional tool).
                sl = self._slice_of(self.lines[les.long_id])
                self.lines[les.short_id] = self._full_coords(self._carry_short(les, self.lines[les.long_id]), sl)
            self._apply_pair(les, les.long_id, les.short_id, out, what="the edited short axis")
            self._keep_edit(les, out)

        # New lines, in layer order.
        hinted: dict[int, list[LineObs]] = {}
        for obs in new:
            if obs.lesion_hint is not None and obs.lesion_hint >= 0:
                hinted.setdefault(int(obs.lesion_hint), []).append(obs)
        pending_ids: dict[int, int] = {}  # id(obs) -> line id
        zero = 0
        for obs in new:
            plane = self._plane_coords(obs.coords)
            hinted_line = obs.lesion_hint is not None and obs.lesion_hint >= 0
            shortest = MIN_AXIS_LENGTH_PX if hinted_line else max(MIN_AXIS_LENGTH_PX, self.min_line_length)
            if float(np.linalg.norm(plane[1] - plane[0])) < shortest:
                zero += 1
                continue
            lid = self._new_line_id()
            sl = self._slice_of(obs.coords)
            self.lines[lid] = self._full_coords(plane, sl)
            new_order.append(lid)
            pending_ids[id(obs)] = lid
        if zero:
            out.messages.append(
                f"ignored {zero} stray line(s), zero-length or a few screen pixels long "
                "(a click, not an axis)"
            )
            out.rewrite = True
        done_obs: set[int] = set()
        for hint, group in hinted.items():
            group = [o for o in group if id(o) in pending_ids]
            if len(group) != 2:
                continue
            a, b = group
            if (a.axis_hint or "") == "short" or (b.axis_hint or "") == "long":
                a, b = b, a
            la, lb = pending_ids[id(a)], pending_ids[id(b)]
            les = Lesion(id=self._new_lesion_id(hint), long_id=la, short_id=lb)
            les.slice_index = self._slice_of(self.lines[la])
            self.lesions[les.id] = les
            # Stored measurements keep their recorded geometry (not re-snapped).
            self._apply_pair(les, la, lb, out, snap_second=False)
            done_obs.update({id(a), id(b)})
        for obs in new:
            if id(obs) not in pending_ids or id(obs) in done_obs:
                continue
            lid = pending_ids[id(obs)]
            sl = self._slice_of(self.lines[lid])
            partner = self._valid_partner(lid, sl, out)
            if partner is not None:
                self._apply_pair(partner, partner.long_id, lid, out)
            elif self.quick:
                les = Lesion(id=self._new_lesion_id(), long_id=lid, slice_index=sl, quick=True)
                self.lesions[les.id] = les
                short_lid = self._new_line_id()
                self.lines[short_lid] = self._full_coords(
                    self._propose_short(self._plane_coords(self.lines[lid])), sl
                )
                new_order.insert(new_order.index(lid) + 1, short_lid)
                les.short_id = short_lid
                self._apply_pair(les, lid, short_lid, out)
                out.rewrite = True
            else:
                les = Lesion(id=self._new_lesion_id(), long_id=lid, slice_index=sl)
                self.lesions[les.id] = les
        self.order = [lid for lid in new_order if lid in self.lines]
        # Ids are new for added lines; coordinates may have been snapped or restored.
        out.rewrite = True
        out.changed = True
        self._push_undo(before)
        return out

    def _keep_edit(self, les: Lesion, out: SyncResult) -> None:
        """A hand-edited lesion whose lines moved keeps its mask (no new request)."""
        if not les.edited or les.recist is None:
            return
        before = len(out.segment)
        out.segment = [r for r in out.segment if r.lesion_id != les.id]
        if len(out.segment) != before:
            les.status = DONE
            out.messages.append(
                f"lesion {les.id}: its mask was edited by hand, so it was kept (not "
                "re-segmented); select it and press Re-segment to replace it"
            )

    def record_edit(
        self, lesion_id: int, area_px: int, measured: Recist | None, box: Box | None
    ) -> bool:
        """Store a lesion's mask as painted by hand; ``False`` if there is no such lesion.

        The lesion is marked edited; its area and mask-measured L / W are those of the
        painted mask. An edit that empties the mask leaves the lesion (lines kept) with
        no area.
        """
        les = self.lesions.get(int(lesion_id))
        if les is None:
            return False
        les.edited = True
        les.area_px = int(area_px)
        les.measured = measured
        les.box = box
        if les.status == PENDING:
            # A result still in flight would overwrite the painting: discard it.
            les.generation += 1
            les.status = DONE if les.recist is not None else les.status
        return True

    def _clipped(self, coords: np.ndarray) -> np.ndarray:
        """Endpoints a little past the border pulled back onto it (along the line)."""
        if coords.shape != (2, self.ndim):
            return coords
        out = coords.copy()
        out[:, -2:] = clip_segment(coords[:, -2:], self.plane_shape)
        return out

    def _valid_partner(
        self, line_id: int, slice_index: int | None, out: SyncResult, *, exclude: int | None = None
    ) -> Lesion | None:
        """The most recent open lesion this new line forms a valid pair with.

        Open lesions it does not pair with are flagged (drawn red, with the reason) and
        the new line starts the next lesion: a leftover or wrong line never captures
        the user's next axis.
        """
        plane = self._plane_coords(self.lines[line_id])
        tried: list[tuple[Lesion, str]] = []
        for les in sorted(self.lesions.values(), key=lambda l: -l.id):
            if les.short_id is not None or les.committed or les.slice_index != slice_index:
                continue
            if les.id == exclude:
                continue
            problem = pair_problem(
                self._plane_coords(self.lines[les.long_id]), plane, self.plane_shape
            )
            if problem is None:
                return les
            tried.append((les, problem))
        if exclude is not None:
            return None  # an edited lone line: nothing new to flag
        for les, problem in tried:
            if "do not cross" in problem:
                problem = "the next line does not cross it"
            les.status = INVALID
            les.message = (
                f"no partner ({problem}), so that line starts a new lesion; draw this "
                "lesion's other axis across it, or delete it"
            )
            out.messages.append(f"lesion {les.id}: {les.message}")
        return None

    def _lesion_label(self, les: Lesion) -> str:
        """``"#3 L 27.7 × W 22.0 mm"``: one label per lesion, on its long axis.

        Both lengths sit in one label next to the long axis (two labels per lesion
        collide on small lesions: napari places every label at the same corner of its
        line's bounding box).
        """
        long_px, long_mm = _segment_length(self._plane_coords(self.lines[les.long_id]), self.spacing)
        unit = self.unit
        long_v = long_mm if long_mm is not None else long_px
        if les.short_id is None:
            return f"#{les.id} {long_v:.1f} {unit}"
        short_px, short_mm = _segment_length(self._plane_coords(self.lines[les.short_id]), self.spacing)
        short_v = short_mm if short_mm is not None else short_px
        return f"#{les.id} L {long_v:.1f} × W {short_v:.1f} {unit}"

    def layer_lines(self) -> list[LineView]:
        """The lines as the layer should show them, in layer order."""
        owner = self._lesion_of_line()
        views = []
        for lid in self.order:
            coords = self.lines[lid]
            les = owner.get(lid)
            if les is None:
                views.append(LineView(lid, coords.copy(), -1, "", "", OPEN))
                continue
            axis = "" if les.short_id is None else ("long" if lid == les.long_id else "short")
            label = self._lesion_label(les) if axis != "short" else ""
            if les.committed:
                state = "committed"
            elif les.status in (INVALID, FAILED, OPEN):
                state = les.status
            else:
                state = "ok"  # pending or done: drawn the same
            views.append(LineView(lid, coords.copy(), les.id, axis, label, state))
        return views

    # -- results ------------------------------------------------------------------------
    def is_current(self, request: SegmentRequest) -> bool:
        les = self.lesions.get(request.lesion_id)
        return les is not None and les.generation == request.generation

    def accept(self, request: SegmentRequest, result: Any, box: Box | None) -> bool:
        """Store a segmentation result; ``False`` (discarded) if the lesion changed since."""
        if not self.is_current(request):
            return False
        les = self.lesions[request.lesion_id]
        les.status = DONE
        les.message = ""
        les.cluster = None if getattr(result, "cluster", None) is None else int(result.cluster)
        conf = getattr(result, "confidence", None)
        les.confidence = None if conf is None else float(conf)
        les.measured = getattr(result, "measured", None)
        area = getattr(result, "area_px", None)
        les.area_px = int(area) if area is not None else int(np.count_nonzero(result.mask))
        les.box = box
        return True

    def fail(self, request: SegmentRequest, error: str) -> Box | None | bool:
        """Record a failed segmentation; returns the stale mask box to clear, or ``False``."""
        if not self.is_current(request):
            return False
        les = self.lesions[request.lesion_id]
        les.status = FAILED
        les.message = error
        les.cluster = les.confidence = les.measured = les.area_px = None
        box, les.box = les.box, None
        return box

    def add_recist(
        self,
        recist: Recist,
        *,
        lesion_id: int | None = None,
        committed: bool = False,
        snap_axes: bool = False,
    ) -> SyncResult:
        """Add a lesion from a RECIST (import, or a click segmented by the model)."""
        out = SyncResult(rewrite=True, changed=True)
        self._push_undo()
        sl = recist.slice_index if self.ndim == 3 else None
        la, lb = self._new_line_id(), self._new_line_id()
        self.lines[la] = self._full_coords(recist.long_axis, sl)
        self.lines[lb] = self._full_coords(recist.short_axis, sl)
        self.order += [la, lb]
        les = Lesion(id=self._new_lesion_id(lesion_id), long_id=la, short_id=lb, slice_index=sl)
        self.lesions[les.id] = les
        self._apply_pair(les, la, lb, out, snap_second=snap_axes)
        les.committed = committed and les.status != INVALID
        return out

    # -- user actions ---------------------------------------------------------------------
    def commit(self, lesion_ids: Sequence[int] | None = None) -> SyncResult:
        """Lock lesions (all valid ones by default): their lines can no longer be edited."""
        ids = [i for i in (lesion_ids if lesion_ids is not None else self.lesions) if i in self.lesions]
        ids = [i for i in ids if not self.lesions[i].committed and self.lesions[i].recist is not None]
        out = SyncResult()
        if not ids:
            out.messages.append("nothing to commit (only complete, valid lesions can be committed)")
            return out
        self._push_undo()
        for i in ids:
            self.lesions[i].committed = True
        out.rewrite = out.changed = True
        return out

    def uncommit(self, lesion_ids: Sequence[int] | None = None) -> SyncResult:
        ids = [i for i in (lesion_ids if lesion_ids is not None else self.lesions) if i in self.lesions]
        ids = [i for i in ids if self.lesions[i].committed]
        out = SyncResult()
        if not ids:
            return out
        self._push_undo()
        for i in ids:
            self.lesions[i].committed = False
        out.rewrite = out.changed = True
        return out

    def delete(self, lesion_ids: Sequence[int]) -> SyncResult:
        """Delete lesions (lines and mask); committed ones must be uncommitted first."""
        out = SyncResult()
        ids = [i for i in lesion_ids if i in self.lesions]
        locked = [i for i in ids if self.lesions[i].committed]
        if locked:
            out.messages.append(
                f"lesion(s) {', '.join(map(str, locked))} are committed: uncommit before deleting"
            )
        ids = [i for i in ids if i not in locked]
        if not ids:
            return out
        self._push_undo()
        for i in ids:
            les = self.lesions.pop(i)
            les.generation += 1
            out.clear.append((i, les.box))
            for lid in les.line_ids:
                self.lines.pop(lid, None)
        self.order = [lid for lid in self.order if lid in self.lines]
        out.rewrite = out.changed = True
        return out

    def resegment(
        self,
        *,
        include_committed: bool = False,
        lesion_ids: Sequence[int] | None = None,
    ) -> SyncResult:
        """Request a new mask for every valid lesion (e.g. after switching the model).

        Hand-edited lesions are re-segmented only when named in ``lesion_ids`` (the user
        asked for them); their edited mark is then cleared.
        """
        out = SyncResult()
        kept = []
        for les in self.lesions.values():
            if les.recist is None or (les.committed and not include_committed):
                continue
            if lesion_ids is not None and les.id not in lesion_ids:
                continue
            if les.edited and lesion_ids is None:
                kept.append(les.id)
                continue
            les.edited = False
            out.segment.append(self._request(les))
        if kept:
            out.messages.append(
                f"lesion(s) {', '.join(map(str, kept))} were edited by hand: kept (select them "
                "and re-segment to replace their masks)"
            )
        return out

    def undo(self) -> SyncResult:
        """Undo the last lesion action; lesions whose geometry changes are re-segmented."""
        out = SyncResult()
        if not self._undo:
            out.messages.append("nothing to undo")
            return out
        snap_ = self._undo.pop()
        current = self.lesions
        restored: dict[int, Lesion] = snap_["lesions"]
        for les_id, les in current.items():
            if les_id not in restored:
                out.clear.append((les_id, les.box))
        for les_id, old in restored.items():
            cur = current.get(les_id)
            same_geometry = (
                cur is not None
                and cur.recist is not None
                and old.recist is not None
                and _same(cur.recist.long_axis, old.recist.long_axis)
                and _same(cur.recist.short_axis, old.recist.short_axis)
                and cur.slice_index == old.slice_index
            )
            if cur is not None and cur.edited and not same_geometry:
                # Undoing a line move never throws the hand-edited mask away.
                old.generation = max(old.generation, cur.generation) + 1
                old.edited, old.status, old.message = True, cur.status, cur.message
                old.measured, old.area_px, old.box = cur.measured, cur.area_px, cur.box
                if old.recist is None:
                    old.status = OPEN if old.short_id is None else INVALID
                continue
            if same_geometry:
                # The mask on screen (or the request in flight) is right: keep it.
                assert cur is not None
                old.status, old.message, old.generation = cur.status, cur.message, cur.generation
                old.cluster, old.confidence = cur.cluster, cur.confidence
                old.measured, old.area_px, old.box = cur.measured, cur.area_px, cur.box
                continue
            # Never reuse a generation a worker may still answer to.
            old.generation = max(old.generation, cur.generation if cur else 0)
            if cur is not None:
                out.clear.append((les_id, cur.box))
            old.box = None
            old.cluster = old.confidence = old.measured = old.area_px = None
            if old.recist is not None:
                out.segment.append(self._request(old))
            else:
                old.generation += 1
        self.lines = snap_["lines"]
        self.order = snap_["order"]
        self.lesions = restored
        out.rewrite = out.changed = True
        return out

    # -- views ------------------------------------------------------------------------------
    def _length_values(self, r: Recist | None) -> tuple[float | None, float | None]:
        if r is None:
            return None, None
        if self.spacing is not None:
            rr = r.with_spacing(self.spacing)
            return rr.long_length_mm, rr.short_length_mm
        return r.long_length, r.short_length

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per lesion (:data:`TABLE_COLUMNS`), lengths and area in mm / mm² or px.

        ``disagreement`` is the larger relative difference between the drawn and the
        mask-measured L and W; ``flag`` is set when it exceeds
        :data:`DISAGREEMENT_THRESHOLD`.
        """
        rows = []
        for les in sorted(self.lesions.values(), key=lambda l: l.id):
            ld, sd = self._length_values(les.recist)
            lm, sm = self._length_values(les.measured)
            dis = None
            if ld and sd and lm is not None and sm is not None:
                dis = max(abs(lm - ld) / ld, abs(sm - sd) / sd)
            area = None
            if les.area_px is not None:
                area = float(les.area_px)
                if self.spacing is not None:
                    area *= self.spacing[0] * self.spacing[1]
            status = les.status if not les.message else f"{les.status}: {les.message}"
            rows.append(
                {
                    "lesion": les.id,
                    "slice": les.slice_index,
                    "status": status,
                    "long_drawn": ld,
                    "short_drawn": sd,
                    "long_measured": lm,
                    "short_measured": sm,
                    "disagreement": dis,
                    "flag": bool(dis is not None and dis > DISAGREEMENT_THRESHOLD),
                    "area": area,
                    "cluster": les.cluster,
                    "confidence": les.confidence,
                    "committed": les.committed,
                    "unit": self.unit,
                    "edited": les.edited,
                }
            )
        return rows

    def lesion_centre(self, lesion_id: int) -> tuple[float, ...]:
        """Centre of a lesion in layer data coordinates (``(z, row, col)`` for volumes)."""
        les = self.lesions[lesion_id]
        pts = np.vstack([self.lines[lid] for lid in les.line_ids])
        centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
        return tuple(float(v) for v in centre)

    def recists(self) -> list[tuple[int, Recist]]:
        """``(lesion id, snapped RECIST)`` of every valid lesion, by id."""
        return [
            (les.id, les.recist.with_spacing(self.spacing))
            for les in sorted(self.lesions.values(), key=lambda l: l.id)
            if les.recist is not None
        ]

    def measurement_rows(self, image: str) -> list[dict[str, Any]]:
        """Rows for ``measurements.csv`` (the columns ``recist-seg segment`` writes)."""
        rows = []
        for les_id, r in self.recists():
            les = self.lesions[les_id]
            m = les.measured.with_spacing(self.spacing) if les.measured is not None else None
            row = measurement_row(
                image, les_id, r, m, cluster=les.cluster, confidence=les.confidence,
                area_px=les.area_px, spacing=self.spacing,
            )
            rows.append(
                {**row, "status": les.status, "committed": les.committed, "edited": les.edited}
            )
        return rows


# -- files ----------------------------------------------------------------------------


def free_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it does not exist, else the first free ``name-1.ext``, ``name-2.ext``...

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.nii.gz").write_text("x")
    >>> free_path(d / "a.nii.gz").name
    'a-1.nii.gz'
    """
    p = Path(path)
    if not p.exists():
        return p
    name = p.name
    stem, suffix = (name[: -len(".nii.gz")], ".nii.gz") if name.lower().endswith(".nii.gz") else (p.stem, p.suffix)
    i = 1
    while True:
        cand = p.with_name(f"{stem}-{i}{suffix}")
        if not cand.exists():
            return cand
        i += 1


def _target(path: str | os.PathLike[str], if_exists: str) -> Path:
    p = Path(path)
    if if_exists not in ("error", "rename", "overwrite"):
        raise ValueError(f"if_exists must be 'error', 'rename' or 'overwrite', got {if_exists!r}")
    if p.exists():
        if if_exists == "error":
            raise FileExistsError(f"{p} already exists; not overwriting it")
        if if_exists == "rename":
            return free_path(p)
    return p


def export_recist_csv(
    path: str | os.PathLike[str],
    session: AnnotationSession,
    image_path: str | os.PathLike[str],
    *,
    if_exists: str = "error",
) -> Path:
    """Write the session's valid lesions as a RECIST CSV (DESIGN.md) for one image.

    Parameters
    ----------
    if_exists : {"error", "rename", "overwrite"}
        What to do when ``path`` exists: refuse (``FileExistsError``), write next to
        it under a free name, or replace it (atomically).

    Returns
    -------
    Path
        The file written.
    """
    return export_recist_csv_many(path, [(session, image_path)], if_exists=if_exists)


def export_recist_csv_many(
    path: str | os.PathLike[str],
    items: Sequence[tuple[AnnotationSession, str | os.PathLike[str]]],
    *,
    if_exists: str = "error",
) -> Path:
    """Write the valid lesions of several images, ``(session, image file)`` pairs, to one CSV."""
    from napari_recist_seg.data import RecistRecord, write_recist_csv

    records = [
        RecistRecord(image=Path(image_path), lesion=i, recist=r)
        for session, image_path in items
        for i, r in session.recists()
    ]
    if not records:
        raise ValueError("no complete lesion to export (draw two crossing axes first)")
    target = _target(path, if_exists)
    write_recist_csv(target, records)
    return target


def records_for_image(records: Sequence[Any], image_path: str | os.PathLike[str] | None, image_name: str) -> list[Any]:
    """The records of a RECIST CSV that belong to one image.

    Matched by resolved path, else by file stem (``ISIC_0000000`` matches a layer named
    ``ISIC_0000000``); a CSV about a single image matches any image.
    """
    if not records:
        return []
    if image_path is not None:
        target = Path(image_path).resolve()
        hits = [r for r in records if Path(r.image).resolve() == target]
        if hits:
            return hits
    def stem(p: Any) -> str:
        n = Path(p).name
        for suf in (".nii.gz", ".nii"):
            if n.lower().endswith(suf):
                return n[: -len(suf)]
        return Path(n).stem
    hits = [r for r in records if stem(r.image) == image_name or stem(r.image) == stem(image_name)]
    if hits:
        return hits
    if len({str(Path(r.image)) for r in records}) == 1:
        return list(records)
    return []


def save_image(
    path: str | os.PathLike[str], image: np.ndarray, spacing: Sequence[float] | None = None
) -> Path:
    """Save an in-memory image so that a RECIST CSV can point at it.

    ``.png`` for uint8 grey / RGB, ``.tif`` for other 2D images, ``.nii.gz`` for
    ``(z, row, col)`` volumes (spacing in the header, axis order as
    :mod:`napari_recist_seg.data.masks` writes NIfTI, so :func:`read_image` reads it
    back the same way). Written atomically; an existing file is refused.
    """
    from napari_recist_seg.data.atomic import atomic_path

    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p} already exists; not overwriting it")
    arr = np.asarray(image)
    name = p.name.lower()
    with atomic_path(p) as tmp:
        if name.endswith((".nii.gz", ".nii")):
            import nibabel as nib

            vol = arr[None] if arr.ndim == 2 else arr
            if vol.ndim != 3:
                raise ValueError(f"{p.name}: NIfTI needs a 2D image or a (z, row, col) volume")
            sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * vol.ndim
            if len(sp) == 2:
                sp = (1.0,) + sp
            zooms = (sp[2], sp[1], sp[0])
            nimg = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.diag([*zooms, 1.0]))
            nimg.header.set_zooms(zooms)
            nimg.header.set_xyzt_units("mm")
            nib.save(nimg, str(tmp))
        elif name.endswith(".png"):
            from PIL import Image

            if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
                raise ValueError(f"{p.name}: PNG needs a uint8 grey or RGB image; use .tif")
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
        elif name.endswith((".tif", ".tiff")):
            import tifffile

            tifffile.imwrite(tmp, np.ascontiguousarray(arr))
        else:
            raise ValueError(f"{p.name}: save images as .png, .tif or .nii.gz")
    return p


def export_masks(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    if_exists: str = "error",
) -> Path:
    """Write the label image (one id per lesion): png/tif for 2D, nii.gz (with spacing) for 3D."""
    from napari_recist_seg.data import write_labels

    target = _target(path, if_exists)
    lab = np.asarray(labels)
    name = target.name.lower()
    if lab.ndim == 3 and not (name.endswith(".nii.gz") or name.endswith(".nii") or name.endswith((".tif", ".tiff"))):
        raise ValueError(f"{target.name}: a volume's masks are saved as .nii.gz (or .tif)")
    write_labels(target, lab, spacing)
    return target


# The bulk job's measurements.csv columns, plus the annotator's per-lesion state, so a
# table exported from the viewer reads like one written by `recist-seg segment`.
MEASUREMENT_FIELDS: tuple[str, ...] = MEASUREMENT_COLUMNS + ("status", "committed", "edited")


def export_measurements(
    path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, if_exists: str = "error"
) -> Path:
    """Write measurement rows (:meth:`AnnotationSession.measurement_rows`) as CSV."""
    from napari_recist_seg.data.atomic import atomic_write_text

    target = _target(path, if_exists)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MEASUREMENT_FIELDS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) else v)) for k, v in row.items()})
    atomic_write_text(target, buf.getvalue())
    return target
