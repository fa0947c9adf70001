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
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from napari.utils.colormaps.standardize_color import transform_color
from qtpy.QtCore import QObject, QTimer, Signal

from napari_recist_seg.annotation import (
    AnnotationSession,
    ClickRequest,
    LineObs,
    SegmentOutcome,
    SegmentRequest,
    SyncResult,
    clear_indices,
    paste_indices,
    run_requests,
    spacing_from_scale,
)
from napari_recist_seg.hand_edits import lesion_ids_of_edit, lesions_in_label_image, measure_lesion
from napari_recist_seg.pairing import stray_length

RECIST_SUFFIX = " RECIST"
LESIONS_SUFFIX = " lesions"
CLICKS_SUFFIX = " clicks"

# Line colours by state (what a radiologist reads at a glance).
COLOURS = {
    "long": "#ffd60a",  # yellow: long axis
    "short": "#64d2ff",  # light blue: short axis
    "open": "#ff9f0a",  # orange: a line waiting for its partner
    "invalid": "#ff453a",  # red: not a valid pair / failed
    "committed": "#30d158",  # green: locked
}

# New lines get their axis colours once the worker is done, or after this long when the
# model is slow (recolouring refreshes the layer: it would slow the worker on 2 cores).
COLOUR_DELAY_MS = 150

# When a pair completes, the canvas waits (at most this long) for its mask, so that one
# frame shows the lines and the mask. With software OpenGL on 2 cores a repaint takes
# tens of ms and would run beside the model, slowing both; on a GPU it changes nothing.
HOLD_CANVAS_MS = 150

FEATURE_DEFAULTS = {"line_id": -1, "lesion": -1, "axis": "", "label": "", "state": "open"}


def _line_colour(axis: str, state: str) -> str:
    if state == "committed":
        return COLOURS["committed"]
    if state in ("invalid", "failed"):
        return COLOURS["invalid"]
    if axis == "":
        return COLOURS["open"]
    return COLOURS[axis]


def unwrap(obj: Any) -> Any:
    """The napari object behind a plugin ``PublicOnlyProxy`` (or ``obj`` itself)."""
    return getattr(obj, "__wrapped__", obj)


def image_geometry(image_layer: Any) -> tuple[tuple[int, int], int | None]:
    """``((rows, cols), n_slices or None)`` of a napari Image layer.

    Raises
    ------
    ValueError
        For images that are neither 2D (grey / RGB) nor a 3D volume.
    """
    data = image_layer.data[0] if getattr(image_layer, "multiscale", False) else image_layer.data
    shape = tuple(int(s) for s in data.shape)
    if image_layer.rgb:
        shape = shape[:-1]
    if len(shape) == 2:
        return (shape[0], shape[1]), None
    if len(shape) == 3:
        return (shape[1], shape[2]), shape[0]
    raise ValueError(
        f"{image_layer.name!r} has {len(shape)} dimensions {shape}: the annotator works on "
        "2D images (grey or RGB) and 3D volumes"
    )


def image_array(image_layer: Any) -> Any:
    """The full-resolution array of an Image layer (never copied)."""
    return image_layer.data[0] if getattr(image_layer, "multiscale", False) else image_layer.data


class ImageBinding(QObject):
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
            spacing=spacing_from_scale(self.image.scale),
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
        self._closed = False
        #: lesion id -> (offset, probability) of its last segmentation (corrective clicks)
        self._probabilities: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
        self.shapes = self._adopt_or_create_shapes()
        self.labels = self._adopt_or_create_labels()
        self.points: Any = None
        self.shapes.events.data.connect(self._on_shapes_data)
        self.labels.events.paint.connect(self._on_paint)
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

    def _layer_kwargs(self) -> dict[str, Any]:
        return {
            "scale": tuple(self.image.scale),
            "translate": tuple(self.image.translate),
            "rotate": self.image.rotate,
            "affine": self.image.affine,
        }

    def _adopt_or_create_shapes(self) -> Any:
        from napari.layers import Shapes

        name = f"{self.name}{RECIST_SUFFIX}"
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if isinstance(layer, Shapes) and layer.ndim == self.ndim:
                layer.scale = self.image.scale
                layer.translate = self.image.translate
                self._style_shapes(layer)
                return layer
            name = f"{name} ({self.ndim}D)"
        layer = self.viewer.add_shapes(
            ndim=self.ndim,
            shape_type="line",
            name=name,
            edge_color=COLOURS["open"],
            edge_width=self._edge_width(),
            features={k: np.array([], dtype=type(v)) for k, v in FEATURE_DEFAULTS.items()},
            **self._layer_kwargs(),
        )
        self._style_shapes(layer)
        return layer

    def _edge_width(self) -> float:
        rows, cols = self.session.plane_shape
        return max(1.0, round(max(rows, cols) / 200.0, 1))

    def _style_shapes(self, layer: Any) -> None:
        rows, cols = self.session.plane_shape
        layer.text = {
            "string": "{label}",
            "size": 10,
            "color": "white",
            "anchor": "upper_left",
            "translation": [0.0] * (self.ndim - 2) + [-0.02 * rows, 0.0],
        }
        layer.current_edge_width = self._edge_width()
        layer.current_edge_color = COLOURS["open"]

    def _adopt_or_create_labels(self) -> Any:
        from napari.layers import Labels

        name = f"{self.name}{LESIONS_SUFFIX}"
        rows, cols = self.session.plane_shape
        shape = (rows, cols) if self.ndim == 2 else (self.session.n_slices, rows, cols)
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if isinstance(layer, Labels) and tuple(layer.data.shape) == tuple(shape):
                return layer
            name = f"{name} ({self.ndim}D)"
        layer = self.viewer.add_labels(
            np.zeros(shape, np.uint16), name=name, opacity=0.45, **self._layer_kwargs()
        )
        # Masks go under the RECIST lines, so the lines stay crisp.
        layers = self.viewer.layers
        with contextlib.suppress(Exception):
            layers.move(layers.index(layer), layers.index(self.shapes))
        return layer

    def ensure_points(self) -> Any:
        """The click-tool Points layer (created on first use)."""
        from napari.layers import Points

        name = f"{self.name}{CLICKS_SUFFIX}"
        if self.points is not None and self.points in self.viewer.layers:
            return self.points
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Points):
            layer = self.viewer.layers[name]
        else:
            rows, cols = self.session.plane_shape
            layer = self.viewer.add_points(
                ndim=self.ndim,
                name=name,
                size=max(4.0, max(rows, cols) / 60.0),
                face_color="#ff375f",
                symbol="cross",
                **self._layer_kwargs(),
            )
        layer.events.data.connect(self._on_points_data)
        self.points = layer
        return layer

    def owns(self, layer: Any) -> bool:
        layer = unwrap(layer)
        return layer is self.image or layer is self.shapes or layer is self.labels or (
            self.points is not None and layer is self.points
        )

    def alive(self) -> bool:
        layers = self.viewer.layers
        return (
            not self._closed
            and self.image in layers
            and self.shapes in layers
            and self.labels in layers
        )

    def _on_image_scale(self, event: Any = None) -> None:
        """The image's pixel size or position changed: follow it (lengths switch px <-> mm)."""
        for layer in (self.shapes, self.labels, self.points):
            if layer is not None:
                layer.scale = self.image.scale
                layer.translate = self.image.translate
        self.session.spacing = spacing_from_scale(self.image.scale)
        self._write_shapes()
        self.changed.emit()

    def close(self) -> None:
        """Disconnect from the layers (they stay in the viewer)."""
        self._closed = True
        self._release_canvas()
        with contextlib.suppress(Exception):
            self.image.events.scale.disconnect(self._on_image_scale)
            self.image.events.translate.disconnect(self._on_image_scale)
        with contextlib.suppress(Exception):
            self.shapes.events.data.disconnect(self._on_shapes_data)
        with contextlib.suppress(Exception):
            self.labels.events.paint.disconnect(self._on_paint)
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
            obs.append(LineObs(lid, np.asarray(coords, float), hint if lid < 0 else None, axis, types[i]))
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
        for lesion_id, box in out.clear:
            self._clear_mask(lesion_id, box)
        for msg in out.messages:
            self.message.emit(msg, True)
        if out.changed or out.clear or out.messages:
            self.changed.emit()

    def _canvas_widget(self) -> Any:
        """The viewer's canvas widget, or ``None`` (headless, or napari internals moved)."""
        try:
            return self.viewer.window._qt_viewer.canvas.native
        except Exception:  # noqa: BLE001 - only an optimisation: never fail for it
            return None

    def _hold_canvas(self) -> None:
        widget = self._canvas_widget()
        if widget is None or self._holding_canvas:
            return
        self._holding_canvas = True
        widget.setUpdatesEnabled(False)  # repaint requests wait; events still flow
        QTimer.singleShot(HOLD_CANVAS_MS, self._release_canvas)

    def _release_canvas(self) -> None:
        if not self._holding_canvas:
            return
        self._holding_canvas = False
        widget = self._canvas_widget()
        if widget is not None:
            with contextlib.suppress(RuntimeError):  # the window is already gone
                widget.setUpdatesEnabled(True)  # and repaints what changed meanwhile

    def _schedule_colours(self) -> None:
        if not self._colours_stale:
            self._colours_stale = True
            QTimer.singleShot(COLOUR_DELAY_MS, self._write_colours)

    def _write_colours(self) -> None:
        if self._colours_stale and self.alive():
            self._write_shapes()

    def _write_shapes(self, colours: bool = True) -> None:
        if colours:
            self._colours_stale = False
        views = self.session.layer_lines()
        current = self.shapes.data
        feats = self.shapes.features
        # napari stores float32 vertices: differences below 1e-3 px are rounding.
        same = len(current) == len(views) and all(
            np.asarray(c).shape == v.coords.shape and np.allclose(c, v.coords, atol=1e-3, rtol=0)
            for c, v in zip(current, views)
        )
        same = same and all(t == "line" for t in self.shapes.shape_type)
        with self._guard():
            if not same:
                selected = set(self.shapes.selected_data)
                mode = self.shapes.mode
                width = self.shapes.current_edge_width
                self.shapes.data = [(v.coords, "line") for v in views]
                if views:  # napari gives shapes added this way width 1
                    self.shapes.edge_width = width
                if mode != self.shapes.mode:
                    self.shapes.mode = mode
                self.shapes.selected_data = {i for i in selected if i < len(views)}
            table = pd.DataFrame(
                {
                    "line_id": pd.Series([v.line_id for v in views], dtype=int),
                    "lesion": pd.Series([v.lesion_id for v in views], dtype=int),
                    "axis": pd.Series([v.axis for v in views], dtype=object),
                    "label": pd.Series([v.label for v in views], dtype=object),
                    "state": pd.Series([v.state for v in views], dtype=object),
                }
            )
            unchanged = (
                len(feats) == len(table)
                and list(feats.columns) == list(table.columns)
                and all(list(feats[c]) == list(table[c]) for c in table.columns)
            )
            if not unchanged or not same:
                self.shapes.features = table
                defaults = self.shapes.feature_defaults
                if any(
                    k not in defaults.columns or defaults[k].iloc[0] != v
                    for k, v in FEATURE_DEFAULTS.items()
                ):
                    self.shapes.feature_defaults = FEATURE_DEFAULTS
            if views and colours:
                colours = np.asarray(
                    [transform_color(_line_colour(v.axis, v.state))[0] for v in views]
                )
                edge = np.asarray(self.shapes.edge_color)
                if edge.shape != colours.shape or not np.allclose(edge, colours, atol=1e-3):
                    self.shapes.edge_color = colours

    # -- labels ----------------------------------------------------------------------
    def _clear_mask(self, lesion_id: int, box: Any) -> None:
        idx = clear_indices(self.labels.data, lesion_id, box)
        if idx[0].size:
            with self._guard():  # not a hand edit
                self.labels.data_setitem(idx, 0)

    def _paste(self, request: SegmentRequest, result: Any) -> None:
        les = self.session.lesions[request.lesion_id]
        self._clear_mask(les.id, les.box)
        idx, box = paste_indices(self.labels.data, les.id, result, les.slice_index)
        if idx[0].size:
            with self._guard():
                self.labels.data_setitem(idx, les.id)
        self.session.accept(request, result, box)
        prob = getattr(result, "probability", None)
        offset = getattr(result, "offset", None)
        if prob is not None and offset is not None:
            self._probabilities[les.id] = (tuple(int(v) for v in offset), np.asarray(prob))
        else:
            self._probabilities.pop(les.id, None)

    def image_plane(self, z: int | None) -> np.ndarray:
        """The image plane a lesion lies on (the whole 2D image, or slice ``z``)."""
        data = image_array(self.image)
        return np.asarray(data if z is None else data[z])

    def probability_plane(self, lesion_id: int, shape: tuple[int, int]) -> np.ndarray | None:
        """The model probability of a lesion's last segmentation on its plane, if any."""
        stored = self._probabilities.get(int(lesion_id))
        if stored is None:
            return None
        (r0, c0), prob = stored
        out = np.zeros(shape, np.float32)
        r1, c1 = min(shape[0], r0 + prob.shape[0]), min(shape[1], c0 + prob.shape[1])
        out[max(r0, 0):r1, max(c0, 0):c1] = prob[max(-r0, 0):r1 - r0, max(-c0, 0):c1 - c0]
        return out

    # -- hand edits of the masks -------------------------------------------------------
    def _on_paint(self, event: Any) -> None:
        """A brush / eraser / fill stroke ended: re-measure the lesions it touched."""
        if self._writing or self._closed:
            return
        ids = lesion_ids_of_edit(getattr(event, "value", None) or [])
        if ids is None:
            ids = set(lesions_in_label_image(self.labels.data)) | set(self.session.lesions)
        # napari emits ``paint`` before a fill / polygon writes its pixels: measure on
        # the next loop turn, when the layer holds the edit.
        if not self._edited_ids:
            QTimer.singleShot(0, self._flush_edits)
        self._edited_ids |= set(ids)

    def _flush_edits(self) -> None:
        ids, self._edited_ids = sorted(self._edited_ids), set()
        if ids and self.alive():
            self.record_edits(ids)

    def record_edits(self, ids: list[int]) -> None:
        """Store the masks of ``ids`` as painted; a label with no lesion becomes one."""
        spacing = self.session.spacing
        adopted = []
        for lesion_id in ids:
            les = self.session.lesions.get(lesion_id)
            if les is not None:
                m = measure_lesion(self.labels.data, lesion_id, les.slice_index, spacing)
                self.session.record_edit(lesion_id, m.area_px, m.measured, m.box)
            else:
                adopted.append(lesion_id)
        if adopted:
            self._adopt_masks(adopted)
        self.message.emit(
            f"lesion(s) {', '.join(map(str, ids))}: mask edited by hand; area and mask L / W updated",
            False,
        )
        self.changed.emit()

    def _adopt_masks(self, ids: list[int]) -> list[int]:
        """Make lesions of labels painted with no lesion: RECIST measured on the mask."""
        made = []
        for lesion_id in ids:
            slices = [None] if self.ndim == 2 else [
                int(z) for z in np.flatnonzero((np.asarray(self.labels.data) == lesion_id).any(axis=(1, 2)))
            ]
            for z in slices[:1]:  # a volume label: its first slice carries the RECIST
                m = measure_lesion(self.labels.data, lesion_id, z, self.session.spacing)
                if m.measured is None:
                    continue
                out = self.session.add_recist(m.measured, lesion_id=lesion_id)
                out.segment = []  # the painted mask is the lesion's mask
                les = self.session.lesions.get(lesion_id)
                if les is None:
                    continue
                self.session.record_edit(lesion_id, m.area_px, m.measured, m.box)
                les.status = "done" if les.recist is not None else les.status
                self.apply(out)
                made.append(lesion_id)
        return made

    def import_masks(self, labels: np.ndarray) -> list[int]:
        """Load a label image (0 = background, k = lesion k) to continue editing.

        Lesions already here keep their masks: imported pixels go only where the layer
        is empty, and an imported label whose id is taken gets the next free id.
        """
        labels = np.asarray(labels)
        if labels.shape != tuple(self.labels.data.shape):
            raise ValueError(
                f"the mask is {'x'.join(map(str, labels.shape))} but the image is "
                f"{'x'.join(map(str, self.labels.data.shape))}"
            )
        target = np.asarray(self.labels.data)
        free = target == 0
        ids = []
        for value in lesions_in_label_image(labels):
            new_id = value
            if new_id in self.session.lesions or (target == new_id).any():
                new_id = max([0, *self.session.lesions, int(target.max())]) + 1
            idx = np.nonzero((labels == value) & free)
            if idx[0].size:
                with self._guard():
                    self.labels.data_setitem(idx, new_id)
                ids.append(new_id)
        return self._adopt_masks(ids)

    # -- segmentation worker -----------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A sync, segmentation or click is scheduled, pending or running."""
        return (
            self._sync_scheduled
            or self._click_scheduled
            or self._worker is not None
            or bool(self._pending)
        )

    def enqueue(self, requests: list[SegmentRequest | ClickRequest]) -> None:
        for r in requests:
            key = ("lesion", r.lesion_id) if isinstance(r, SegmentRequest) else ("click", r.token)
            self._pending[key] = r  # a newer request for a lesion replaces the older
        self.kick()

    def kick(self) -> None:
        """Start a worker for the pending requests if none is running and a segmenter is ready."""
        if self._worker is not None or not self._pending or self._closed:
            return
        segmenter = self._segmenter()
        if segmenter is None:
            return
        from napari.qt.threading import create_worker

        requests = [
            r for r in self._pending.values()
            if not isinstance(r, SegmentRequest) or self.session.is_current(r)
        ]
        self._pending.clear()
        if not requests:
            return
        worker = create_worker(
            run_requests, segmenter, image_array(self.image), requests,
            _start_thread=False, _ignore_errors=True,
        )
        worker.yielded.connect(self._on_outcome)
        worker.finished.connect(self._on_worker_finished)
        worker.errored.connect(self._on_worker_error)
        self._worker = worker
        self.busy_changed.emit(True)
        worker.start()

    def _on_worker_finished(self) -> None:
        self._worker = None
        if self._pending:
            self.kick()
        else:
            self._write_colours()
            self._release_canvas()
            self.busy_changed.emit(False)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.message.emit(f"segmentation failed: {exc}", True)

    def _on_outcome(self, outcome: SegmentOutcome) -> None:
        if not self.alive():
            return
        req = outcome.request
        if isinstance(req, ClickRequest):
            self._on_click_outcome(outcome)
            return
        if not self.session.is_current(req):
            return  # the lesion was edited (or deleted) meanwhile: a newer request runs
        if outcome.error is not None:
            box = self.session.fail(req, outcome.error)
            if box is not False:
                self._clear_mask(req.lesion_id, box)
            self.message.emit(
                f"lesion {req.lesion_id}: segmentation failed ({outcome.error}); its lines are kept",
                True,
            )
            self._write_shapes()  # drawn red
        else:
            try:
                self._paste(req, outcome.result)
            except Exception as exc:  # noqa: BLE001 - a bad result must not lose the lines
                self.session.fail(req, str(exc))
                self.message.emit(f"lesion {req.lesion_id}: could not paste the mask ({exc})", True)
            else:
                self.message.emit(self.describe(req.lesion_id), False)
        self.changed.emit()

    def describe(self, lesion_id: int) -> str:
        """One line about a segmented lesion: drawn and measured axes, area, cluster."""
        row = next((r for r in self.session.table_rows() if r["lesion"] == lesion_id), None)
        if row is None or row["long_drawn"] is None:
            return f"lesion {lesion_id}"
        unit = row["unit"]
        text = f"lesion {lesion_id}: L {row['long_drawn']:.1f} × W {row['short_drawn']:.1f} {unit}"
        if row["long_measured"] is not None:
            text += f"; mask L {row['long_measured']:.1f} × W {row['short_measured']:.1f}"
            if row["flag"]:
                text += f" (differs by {100 * row['disagreement']:.0f}%)"
        if row["area"] is not None:
            text += f", area {row['area']:.0f} {'mm²' if unit == 'mm' else 'px'}"
        if row["cluster"] is not None:
            conf = "" if row["confidence"] is None else f" ({row['confidence']:.2f})"
            text += f", cluster {row['cluster']}{conf}"
        return text

    # -- click tool --------------------------------------------------------------------
    def _on_points_data(self, event: Any) -> None:
        if self._writing or self._closed:
            return
        action = str(getattr(event, "action", "added"))
        if action != "added" or self._click_scheduled:
            return
        self._click_scheduled = True
        QTimer.singleShot(0, self._consume_points)

    def _consume_points(self) -> None:
        self._click_scheduled = False
        if self.points is None or not len(self.points.data):
            return
        pts = np.asarray(self.points.data, float)
        with self._guard():
            self.points.data = np.zeros((0, self.ndim))
        requests = []
        for p in pts:
            self._click_token += 1
            if self.ndim == 3:
                requests.append(
                    ClickRequest(self._click_token, (float(p[1]), float(p[2])), int(round(p[0])), self.session.spacing)
                )
            else:
                requests.append(ClickRequest(self._click_token, (float(p[0]), float(p[1])), None, self.session.spacing))
        self.message.emit("segmenting the clicked lesion…", False)
        self.enqueue(requests)

    def click(self, point: tuple[float, ...]) -> None:
        """Segment the lesion at ``point`` (layer data coordinates), as the click tool does."""
        layer = self.ensure_points()
        layer.add(np.asarray([point], float))

    def _on_click_outcome(self, outcome: SegmentOutcome) -> None:
        if outcome.error is not None:
            self.message.emit(f"click: {outcome.error}", True)
            return
        res = outcome.result
        recist = getattr(res, "measured", None) or getattr(res, "recist", None)
        if recist is None:
            self.message.emit("click: no lesion found there; draw the RECIST axes instead", True)
            return
        problem = self._click_problem(outcome, recist)
        if problem is not None:
            self.message.emit(
                f"click: no lesion found there ({problem}); nothing added. Click nearer the "
                "lesion's centre, or draw its RECIST axes",
                True,
            )
            return
        out = self.session.add_recist(recist.with_spacing(self.session.spacing))
        # The click result is the mask of this RECIST already: paste it, no second run.
        reqs, out.segment = out.segment, []
        self.apply(out)
        for req in reqs:
            try:
                self._paste(req, res)
            except Exception as exc:  # noqa: BLE001
                self.session.fail(req, str(exc))
        for req in reqs:
            self.message.emit("click: " + self.describe(req.lesion_id), False)
        self.changed.emit()

    def _click_problem(self, outcome: SegmentOutcome, recist: Any) -> str | None:
        """Why a click result is no lesion (:mod:`click_check`), for model results only."""
        from napari_recist_seg.click_check import click_problem

        res = outcome.result
        if not hasattr(res, "mask") or not hasattr(res, "offset"):
            return None
        image = image_array(self.image)
        z = getattr(outcome.request, "slice_index", None)
        plane = np.asarray(image[int(z)] if z is not None and self.ndim == 3 else image)
        cfg = getattr(self._segmenter(), "preprocess", None)
        try:
            return click_problem(plane, res, cfg)
        except Exception:  # noqa: BLE001 - a check must never lose a good result
            return None

    # -- actions ---------------------------------------------------------------------
    def undo(self) -> None:
        self.apply(self.session.undo())

    def commit(self, ids: list[int] | None = None) -> None:
        self.apply(self.session.commit(ids))

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
