"""The annotator's napari layers for one image: names, colours, creating and writing them.

:class:`LayersMixin` is part of :class:`~._widgets.annotator_binding.ImageBinding`:
it creates (or adopts) the image's ``"<image> RECIST"`` Shapes layer, ``"<image>
lesions"`` Labels layer and ``"<image> clicks"`` Points layer with the image's scale
and translate, writes the session's view of the lines back (coordinates, features,
colours), and holds the canvas while a new mask is on its way. It uses the binding's
``viewer``, ``image``, ``ndim``, ``session``, ``shapes``, ``labels``, ``points`` and
``_guard``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd
from napari.utils.colormaps.standardize_color import transform_color
from qtpy.QtCore import QTimer

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



class LayersMixin:
    """The binding's layers: created or adopted, and written from the session."""

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

    def _line_widths(self, views: list[Any], width: float) -> np.ndarray:
        """Each line's width: ``width``, thinner on small lesions (a tenth of their short
        axis, at least 0.3 px), so the lines do not hide a 5 px tumour."""
        out = np.full(len(views), float(width))
        for i, v in enumerate(views):
            les = self.session.lesions.get(v.lesion_id)
            if les is None or les.short_id is None or les.short_id not in self.session.lines:
                continue
            short = self.session._plane_coords(self.session.lines[les.short_id])
            out[i] = min(float(width), max(0.3, 0.1 * float(np.linalg.norm(short[1] - short[0]))))
        return out

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
        width = self.shapes.current_edge_width
        with self._guard():
            if not same:
                selected = set(self.shapes.selected_data)
                mode = self.shapes.mode
                self.shapes.data = [(v.coords, "line") for v in views]
                if mode != self.shapes.mode:
                    self.shapes.mode = mode
                self.shapes.selected_data = {i for i in selected if i < len(views)}
            if views:  # napari gives shapes added this way width 1
                widths = self._line_widths(views, width)
                if not np.allclose(np.asarray(self.shapes.edge_width, float), widths, atol=1e-3):
                    self.shapes.edge_width = list(widths)
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

