"""The RECIST annotator's tools: draw, click, correct; quick mode and pixel spacing.

:class:`ToolsMixin` is part of :class:`~._widgets.annotator.AnnotatorWidget`: each
tool selects the current image's layer it works on (RECIST lines, click points,
lesion labels) in the right mode. It uses the dock's ``binding``, ``bindings``,
``segmenter``, ``viewer``, ``spacing_box``, ``quick_check``, ``quick_ratio``,
``_correctors``, ``_need_binding``, ``_refresh_table`` and ``_say``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets.annotator_binding import ImageBinding
from napari_recist_seg._widgets.annotator_correct import Corrector


class ToolsMixin:
    """The annotator dock's tools, quick mode and spacing field."""

    def _end_correcting(self) -> None:
        for corrector in self._correctors.values():
            corrector.active = False

    def corrector(self, binding: ImageBinding) -> Corrector:
        """The corrective-click tool of ``binding`` (made on first use)."""
        corrector = self._correctors.get(id(binding))
        if corrector is None or corrector.binding is not binding:
            corrector = self._correctors[id(binding)] = Corrector(binding)
        return corrector

    def activate_correct_tool(self) -> None:
        """Corrective clicks on the lesions layer (click adds, Shift/Alt-click removes)."""
        if self.binding is None:
            self._say("select an image layer first", warn=True)
            return
        self._end_correcting()
        corrector = self.corrector(self.binding)
        corrector.install()
        corrector.active = True
        labels = self.binding.labels
        self.viewer.layers.selection.active = labels
        with contextlib.suppress(Exception):
            labels.mode = "pan_zoom"
        self._say(
            "correct: click where the mask missed lesion, Shift- or Alt-click where it "
            "covers skin / tissue"
        )

    def _to_2d_display(self, what: str) -> None:
        """napari cannot draw lines or add clicks in 3D display: go back to 2D, saying why."""
        dims = self.viewer.dims
        if dims.ndisplay == 3:
            dims.ndisplay = 2
            self._say(
                f"{what} works in the 2D display only (napari draws no shapes in 3D): "
                "switched back to 2D; lines go on the current slice"
            )

    def activate_drawing(self) -> None:
        """Select the RECIST layer in line-drawing mode (in 2D display)."""
        self._end_correcting()
        if self.binding is None:
            self._say("select an image layer first", warn=True)
            return
        self._to_2d_display("Draw RECIST")
        shapes = self.binding.shapes
        self.viewer.layers.selection.active = shapes
        with contextlib.suppress(Exception):
            shapes.mode = "add_line"

    def activate_click_tool(self) -> None:
        """Select the click layer in point-adding mode (one click = one lesion)."""
        self._end_correcting()
        if self.binding is None:
            self._say("select an image layer first", warn=True)
            return
        self._to_2d_display("Click-to-segment")
        points = self.binding.ensure_points()
        self.viewer.layers.selection.active = points
        with contextlib.suppress(Exception):
            points.mode = "add"
        if not callable(getattr(self.segmenter, "segment_click", None)) or isinstance(
            self.segmenter, ann.ShapeSegmenter
        ):
            self._say(
                "click-to-segment needs a model: choose the default model or a checkpoint",
                warn=True,
            )
        else:
            self._say("click on a lesion: the model segments it and measures its RECIST")

    def _show_spacing(self) -> None:
        """The spacing field shows the current image's in-plane spacing (0 = unknown)."""
        sp = None if self.binding is None else self.binding.session.spacing
        self.spacing_box.blockSignals(True)
        self.spacing_box.setValue(0.0 if sp is None else float(sp[-1]))
        self.spacing_box.blockSignals(False)

    def set_pixel_spacing(self, mm: float | None) -> None:
        """Set the current image's in-plane pixel size (``None`` / 0: unknown, px).

        It becomes the image layer's scale (the annotator's layers follow it), so the
        lengths, areas and exports switch to mm.
        """
        b = self._need_binding()
        if b is None:
            return
        value = float(mm or 0.0)
        if value < 0:
            self._say("pixel spacing must be positive", warn=True)
            return
        if not value and b.image.metadata.get("spacing_known"):
            # "unknown" overrides a file's stated 1 mm (a scale of ones would not change)
            b.image.metadata["spacing_known"] = False
            b._on_image_scale()
        scale = list(b.image.scale)
        scale[-2:] = [value or 1.0, value or 1.0]
        b.image.scale = scale
        self._show_spacing()
        self._refresh_table()  # the headers' unit changes now, not at the next tick
        unit = b.session.unit
        self._say(f"{b.name}: pixel spacing {value:g} mm: lengths in {unit}" if value else
                  f"{b.name}: pixel spacing unknown: lengths in px")

    def _on_spacing(self) -> None:
        value = self.spacing_box.value()
        sp = None if self.binding is None else self.binding.session.spacing
        if (sp is None and value == 0.0) or (sp is not None and abs(sp[-1] - value) < 1e-9):
            return
        self.set_pixel_spacing(value)

    def _on_quick(self, *_: Any) -> None:
        for binding in self.bindings.values():
            binding.set_quick(self.quick_check.isChecked(), self.quick_ratio.value())

