"""The lesions drawn on one image: :class:`AnnotationSession` (no Qt, no napari)."""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np

from napari_recist_seg.annotation.geometry import _LesionGeometry
from napari_recist_seg.annotation.labels_state import LabelsState
from napari_recist_seg.annotation.lesions import (
    DEFAULT_QUICK_RATIO,
    DONE,
    FAILED,
    INVALID,
    OPEN,
    PENDING,
    UNDO_LIMIT,
    Lesion,
    SyncResult,
    _same,
)
from napari_recist_seg.annotation.paste import Box
from napari_recist_seg.annotation.requests import SegmentRequest
from napari_recist_seg.annotation.sync import _LayerSync
from napari_recist_seg.annotation.views import _SessionViews
from napari_recist_seg.annotation.volume3d import _SessionVolumes
from napari_recist_seg.recist import MIN_AXIS_LENGTH_PX, Recist

__all__ = ["AnnotationSession"]


class AnnotationSession(_LayerSync, _SessionViews, _SessionVolumes, _LesionGeometry):
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
        #: The label image as it is now (the widget's Labels layer); when set, every undo
        #: step keeps it and :meth:`undo` gives it back (``SyncResult.labels``) with the
        #: lesions' results as they were, instead of re-segmenting them.
        self.labels_state: Callable[[], LabelsState] | None = None

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


    def _snapshot(self, labels: LabelsState | None = None) -> dict[str, Any]:
        if labels is None and self.labels_state is not None:
            labels = self.labels_state()
        return {
            "lines": {k: v.copy() for k, v in self.lines.items()},
            "order": list(self.order),
            "lesions": copy.deepcopy(self.lesions),
            "labels": labels,
        }

    def _push_undo(self, snap_: dict[str, Any] | None = None) -> None:
        self._undo.append(snap_ if snap_ is not None else self._snapshot())
        del self._undo[:-UNDO_LIMIT]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def push_edit_step(self, labels_before: LabelsState | None) -> None:
        """Make a hand edit of the masks (paint, fill, erase, corrective click) an undo
        step: ``labels_before`` is the label image before it (``None``: as now)."""
        self._push_undo(self._snapshot(labels_before))

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
        les.volume_generation += 1  # a 3D result in flight was grown from the old mask
        les.area_px = int(area_px)
        les.measured = measured
        les.box = box
        if les.status == PENDING:
            # A result still in flight would overwrite the painting: discard it.
            les.generation += 1
            les.status = DONE if les.recist is not None else les.status
        return True

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
        if "note" in snap_:  # a step that changed no lesion (a removed non-line shape)
            out.messages.append(f"nothing else undone: {snap_['note']}")
            return out
        if snap_.get("labels") is not None:
            return self._undo_with_labels(snap_, out)
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
                old.volume, old.volume_generation = cur.volume, cur.volume_generation
                if old.recist is None:
                    old.status = OPEN if old.short_id is None else INVALID
                continue
            if same_geometry:
                # The mask on screen (or the request in flight) is right: keep it.
                assert cur is not None
                old.status, old.message, old.generation = cur.status, cur.message, cur.generation
                old.cluster, old.confidence = cur.cluster, cur.confidence
                old.measured, old.area_px, old.box = cur.measured, cur.area_px, cur.box
                old.volume, old.volume_generation = cur.volume, cur.volume_generation
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

    def _undo_with_labels(self, snap_: dict[str, Any], out: SyncResult) -> SyncResult:
        """Undo to a step that kept the label image: the labels go back as they were and
        so do the lesions' results (masks, volumes); only a lesion whose result was still
        being computed then is segmented again."""
        current = self.lesions
        restored: dict[int, Lesion] = snap_["lesions"]
        for les_id, old in restored.items():
            cur = current.get(les_id)
            # Never reuse a generation a worker may still answer to (masks, 3D results).
            old.generation = max(old.generation, cur.generation if cur else 0) + 1
            old.volume_generation = max(old.volume_generation, cur.volume_generation if cur else 0) + 1
            if old.status == PENDING and old.recist is not None:
                out.segment.append(self._request(old))
        self.lines = snap_["lines"]
        self.order = snap_["order"]
        self.lesions = restored
        out.labels = snap_["labels"]
        out.rewrite = out.changed = True
        return out
