"""One image in the annotator: its RECIST Shapes layer, lesion Labels layer and session.

:class:`ImageBinding` connects napari layers to a pure-Python
:class:`~napari_recist_seg.annotation.AnnotationSession`:

- it listens to the Shapes layer's ``events.data`` (``added`` / ``changed`` /
  ``removed``, whatever their origin: mouse, ``add_lines``, ``layer.data = ...``) and
  lets the session reconcile the layer; the session's answer (snapped lines, ids,
  texts, masks to clear, lesions to segment, messages) is written back;
- segmentation runs in a ``napari.qt.threading`` worker, never in the GUI thread; only
  the paste into the Labels layer happens here, and only when the lesion has not been
  edited since the request was made (generation counter);
- the click tool is a Points layer: every point added asks the model for the lesion
  under it, and the RECIST measured on its mask is drawn as a new lesion.

The binding's rooms: :mod:`.annotator_layers` (the layers, their names and colours),
:mod:`.annotator_masks` (pasting masks, hand edits) and :mod:`.annotator_worker` (the
segmentation worker and the click tool); this module keeps the session side: reading
the Shapes layer, acting on the session's answers, and the lesion actions.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from qtpy.QtCore import QObject, QTimer, Signal

from napari_recist_seg._widgets._common import spacing_stated
from napari_recist_seg._widgets.annotator_layers import (  # noqa: F401 - re-exported
    CLICKS_SUFFIX,
    COLOUR_DELAY_MS,
    COLOURS,
    FEATURE_DEFAULTS,
    HOLD_CANVAS_MS,
    LESIONS_SUFFIX,
    RECIST_SUFFIX,
    LayersMixin,
    image_array,
    image_geometry,
    unwrap,
)
from napari_recist_seg._widgets.annotator_masks import MasksMixin
from napari_recist_seg._widgets.annotator_volume import VolumeMixin
from napari_recist_seg._widgets.annotator_worker import SegmentationMixin
from napari_recist_seg.annotation import (
    AnnotationSession,
    ClickRequest,
    LabelsState,
    LineObs,
    SegmentRequest,
    SyncResult,
    spacing_from_scale,
)
from napari_recist_seg.pairing import stray_length


class ImageBinding(LayersMixin, MasksMixin, SegmentationMixin, VolumeMixin, QObject):
    """The annotator's state for one image layer (see the module docstring).

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
    segmenter : callable
        Returns the current segmenter, or ``None`` while none is ready (requests wait).
    quick, quick_ratio
        Quick mode settings (see :class:`AnnotationSession`).
    """

    #: The lesions, their results or the layers changed (refresh the table).
    changed = Signal()
    #: A message for the user (also shown as a napari warning when ``True``).
    message = Signal(str, bool)
    #: Segmentation started (True) / all done (False).
    busy_changed = Signal(bool)
    #: "3D: lesion 2, slice 7 (4 slices)" while a lesion is propagated, "" when done.
    volume_progress = Signal(str)

    def __init__(
        self,
        viewer: Any,
        image_layer: Any,
        segmenter: Callable[[], Any],
        *,
        quick: bool = False,
        quick_ratio: float = 0.6,
    ) -> None:
        super().__init__()
        self.viewer = unwrap(viewer)
        self.image = unwrap(image_layer)
        self._segmenter = segmenter
        plane, n_slices = image_geometry(self.image)
        self.ndim = 2 if n_slices is None else 3
        self.session = AnnotationSession(
            plane,
            n_slices=n_slices,
            spacing=spacing_from_scale(self.image.scale, spacing_stated(self.image)),
            quick=quick,
            quick_ratio=quick_ratio,
        )
        self._writing = 0
        self._colours_stale = False
        self._holding_canvas = False
        self._sync_scheduled = False
        self._click_scheduled = False
        self._pending: dict[Any, SegmentRequest | ClickRequest] = {}
        self._worker: Any = None
        self._click_token = 0
        self._edited_ids: set[int] = set()
        self._labels_check_scheduled = False
        self._closed = False
        #: lesion id -> (offset, probability) of its last segmentation (corrective clicks)
        self._probabilities: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
        self._init_volumes()
        self.shapes = self._adopt_or_create_shapes()
        self.labels = self._adopt_or_create_labels()
        #: The labels as the session last knew them: what an undo step keeps, and the
        #: "before" of a hand edit (refreshed after each write of ours and each edit).
        self._labels_shadow = LabelsState.of(self.labels.data)
        self.session.labels_state = lambda: self._labels_shadow
        self.points: Any = None
        self.shapes.events.data.connect(self._on_shapes_data)
        self.labels.events.paint.connect(self._on_paint)
        # Writes from code without napari's paint API (``data[...] = v`` + ``refresh()``,
        # ``data = ...``, ``events.data``) and napari's own Undo / Redo of the layer.
        self.labels.events.set_data.connect(self._on_labels_written)
        self.labels.events.data.connect(self._on_labels_written)
        self.image.events.scale.connect(self._on_image_scale)
        self.image.events.translate.connect(self._on_image_scale)
        # Lines already in an adopted layer (e.g. opened from a RECIST CSV) count too.
        if len(self.shapes.data):
            self.sync_now()
        else:
            self._write_shapes()

    # -- layers ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.image.name

    def _on_image_scale(self, event: Any = None) -> None:
        """The image's pixel size or position changed: follow it (lengths switch px <-> mm)."""
        for layer in (self.shapes, self.labels, self.points):
            if layer is not None:
                layer.scale = self.image.scale
                layer.translate = self.image.translate
        self.session.spacing = spacing_from_scale(self.image.scale, spacing_stated(self.image))
        self.remeasure_volumes()
        self._write_shapes()
        self.changed.emit()

    def close(self) -> None:
        """Disconnect from the layers (they stay in the viewer)."""
        self._closed = True
        self._close_volumes()
        self._release_canvas()
        with contextlib.suppress(Exception):
            self.image.events.scale.disconnect(self._on_image_scale)
            self.image.events.translate.disconnect(self._on_image_scale)
        with contextlib.suppress(Exception):
            self.shapes.events.data.disconnect(self._on_shapes_data)
        with contextlib.suppress(Exception):
            self.labels.events.paint.disconnect(self._on_paint)
            self.labels.events.set_data.disconnect(self._on_labels_written)
            self.labels.events.data.disconnect(self._on_labels_written)
        if self.points is not None:
            with contextlib.suppress(Exception):
                self.points.events.data.disconnect(self._on_points_data)
        self._pending.clear()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1

    def _write_labels(self, indices: tuple[Any, ...], value: int) -> None:
        """Our own write to the Labels layer (not a hand edit); the shadow follows it at
        the cost of the lesion voxels (re-reading a CT volume would be ~45 ms a paste)."""
        with self._guard():
            self.labels.data_setitem(indices, value)
        self._labels_shadow = self._labels_shadow.written(indices, value)

    def _refresh_labels_shadow(self) -> None:
        self._labels_shadow = LabelsState.of(self.labels.data)

    def _restore_labels(self, state: LabelsState) -> None:
        """Put the Labels layer back as an undo step kept it (only the voxels that differ)."""
        with self._guard():
            for value, idx in state.changes(self.labels.data):
                self.labels.data_setitem(idx, value)
        self._refresh_labels_shadow()
        self._volumes = {i for i, les in self.session.lesions.items() if les.volume is not None}
        for lesion_id in list(self._probabilities):
            if lesion_id not in self.session.lesions:
                self._probabilities.pop(lesion_id)

    # -- shapes <-> session --------------------------------------------------------
    def _on_shapes_data(self, event: Any) -> None:
        if self._writing or self._closed:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # adding / changing / removing: not final yet
            return
        if self._interacting():
            # Mouse drawing / dragging is finishing inside this event: rewriting the layer
            # now would cut into napari's own handling, so answer on the next loop turn.
            self._schedule_sync()
        else:
            # From code (add_lines, data = ..., remove_selected): answer at once, so the
            # worker starts before the canvas repaints (latency).
            self.sync_now()

    def _interacting(self) -> bool:
        layer = self.shapes
        flags = [getattr(layer, name, None) for name in ("_is_creating", "_is_moving", "_is_selecting")]
        if any(f is None for f in flags):
            return True  # unknown napari internals: be safe, defer
        return any(bool(f) for f in flags)

    def _schedule_sync(self) -> None:
        if not self._sync_scheduled:
            self._sync_scheduled = True
            QTimer.singleShot(0, self.sync_now)

    def observe(self) -> list[LineObs]:
        """The Shapes layer as the session sees it."""
        feats = self.shapes.features
        n = len(self.shapes.data)

        def column(name: str, default: Any) -> list[Any]:
            if name in feats.columns and len(feats) == n:
                return list(feats[name])
            return [default] * n

        ids = column("line_id", -1)
        hints = column("lesion", -1)
        axes = column("axis", "")
        states = column("status", "")
        types = list(self.shapes.shape_type)
        obs = []
        for i, coords in enumerate(self.shapes.data):
            try:
                lid = int(ids[i])
            except (TypeError, ValueError):
                lid = -1
            try:
                hint = int(hints[i])
            except (TypeError, ValueError):
                hint = -1
            axis = axes[i] if isinstance(axes[i], str) else ""
            status = states[i] if lid < 0 and isinstance(states[i], str) else None
            obs.append(LineObs(lid, np.asarray(coords, float), hint if lid < 0 else None, axis, types[i], status))
        return obs

    def sync_now(self) -> None:
        """Reconcile the session with the Shapes layer now and act on the answer."""
        self._sync_scheduled = False
        if not self.alive() or self._writing:
            return
        self.session.min_line_length = self.stray_length()
        out = self.session.sync(self.observe())
        self.apply(out)

    def stray_length(self) -> float:
        """Shortest new line (data px) that is an axis at the current zoom, not a click."""
        try:
            zoom = float(self.viewer.camera.zoom)
            scale = float(min(abs(float(v)) for v in self.shapes.scale[-2:]))
        except Exception:  # noqa: BLE001 - no camera (headless): the data-px default
            return stray_length(1.0)
        return stray_length(zoom * scale)

    def apply(self, out: SyncResult) -> None:
        """Queue segmentations, write the session's view back, clear masks, tell."""
        if out.segment:
            # First: the worker computes while the layer is rewritten (results come back
            # through the event loop, after this returns).
            self.enqueue(out.segment)
            self._hold_canvas()
        if out.rewrite or out.changed:
            # Line ids and lengths now (the next sync reads them); the line colours, a
            # napari refresh that would compete with the worker for the CPU, once the
            # worker is done (or after COLOUR_DELAY_MS if it is slow).
            self._write_shapes(colours=not out.segment)
            if out.segment:
                self._schedule_colours()
        if out.labels is not None:
            self._restore_labels(out.labels)
        for lesion_id, box in out.clear:
            self._clear_mask(lesion_id, box)
        for msg in out.messages:
            self.message.emit(msg, True)
        if out.changed or out.clear or out.messages:
            self.changed.emit()

    # -- actions ---------------------------------------------------------------------
    def undo(self) -> None:
        self.apply(self.session.undo())

    def commit(self, ids: list[int] | None = None) -> None:
        before = {i for i, les in self.session.lesions.items() if les.committed}
        self.apply(self.session.commit(ids))
        now = [i for i, les in self.session.lesions.items() if les.committed and i not in before]
        self.start_volumes(now)  # "3D lesion" on a volume: propagate them

    def uncommit(self, ids: list[int] | None = None) -> None:
        self.apply(self.session.uncommit(ids))

    def delete(self, ids: list[int]) -> None:
        self.apply(self.session.delete(ids))

    def resegment(self) -> None:
        self.apply(self.session.resegment())

    def set_quick(self, quick: bool, ratio: float | None = None) -> None:
        self.session.quick = bool(quick)
        if ratio is not None:
            self.session.quick_ratio = float(ratio)

    def add_recists(self, items: list[tuple[int | None, Any]]) -> None:
        """Add lesions from RECIST (import): ``(lesion id or None, Recist)`` pairs."""
        total = SyncResult()
        for lesion_id, recist in items:
            total.extend(self.session.add_recist(recist.with_spacing(self.session.spacing), lesion_id=lesion_id))
        self.apply(total)

    def labels_features(self) -> pd.DataFrame:
        rows = self.session.table_rows()
        df = pd.DataFrame(rows)
        if df.empty:
            df = pd.DataFrame({"index": pd.Series([], dtype=int)})
        else:
            df.insert(0, "index", df["lesion"].astype(int))
        return df
