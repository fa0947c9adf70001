"""The "RECIST annotator" dock widget: draw RECIST, get lesion masks.

For the selected image layer (2D grey, RGB or a 3D volume) the widget creates (or
adopts) ``"<image> RECIST"`` (a Shapes layer of lines) and ``"<image> lesions"`` (a
Labels layer, one label per lesion), both with the image's scale and translate.
Drawing follows the cornerstone / OHIF Bidirectional tool (see
:mod:`napari_recist_seg.annotation`); a mask appears as soon as a pair is complete.
The segmenter is the default model, a checkpoint, or a model-free ellipse / GrabCut.

All the bookkeeping lives in :class:`~napari_recist_seg.annotation.AnnotationSession`
(pure Python) and all segmentation runs in worker threads; this module is the Qt front
end's wiring: images and their bindings, messages, refreshes and the lesion actions.
Its rooms:

- :mod:`.annotator_ui`: the UI builders and constants (``CLUSTER_COLOURS``, ...);
- :mod:`.annotator_model`: choosing and loading the segmenter;
- :mod:`.annotator_tools`: the draw / click / correct tools, quick mode, spacing;
- :mod:`.annotator_table`: the lesion table, selection and mask colours;
- :mod:`.annotator_files`: export / import and their file dialogs;
- :mod:`.annotator_volume`: CT window presets and the "3D lesion" option;
- :mod:`.annotator_recovery`: autosave and the restore offer;
- :mod:`.annotator_binding`: one image's layers, session and segmentation worker.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets.annotator_binding import (
    CLICKS_SUFFIX,
    LESIONS_SUFFIX,
    RECIST_SUFFIX,
    ImageBinding,
    unwrap,
)
from napari_recist_seg._widgets.annotator_correct import Corrector
from napari_recist_seg._widgets.annotator_files import FilesMixin, image_source_path
from napari_recist_seg._widgets.annotator_keys import bind_keys, unbind_keys
from napari_recist_seg._widgets.annotator_model import SegmenterMixin, default_model_available
from napari_recist_seg._widgets.annotator_recovery import RecoveryMixin
from napari_recist_seg._widgets.annotator_table import LesionTableMixin
from napari_recist_seg._widgets.annotator_tools import ToolsMixin
from napari_recist_seg._widgets.annotator_torch import prepare_ml_imports
from napari_recist_seg._widgets.annotator_ui import CLUSTER_COLOURS, build_ui
from napari_recist_seg._widgets.annotator_volume import RadiologyDockMixin

__all__ = ["AnnotatorWidget", "CLUSTER_COLOURS"]

# The table / Labels features refresh waits this long (coalescing bursts of results).
REFRESH_DELAY_MS = 30
# While a lesion is being segmented the table waits for its mask (one update, with the
# measurements), at most this long: repainting widgets beside the model slows it.
BUSY_REFRESH_DELAY_MS = 300
# "segmenting…" appears only if a run takes longer than this (no flicker per lesion).
BUSY_LABEL_DELAY_MS = 250


class AnnotatorWidget(ToolsMixin, LesionTableMixin, SegmenterMixin, FilesMixin, RadiologyDockMixin,
                      RecoveryMixin, QWidget):
    """RECIST annotator dock widget.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    segmenter : object, optional
        Use this segmenter instead of loading one (scripts and tests); anything with
        ``segment(image, recists)`` (see :class:`napari_recist_seg.annotation.Segmenter`).
    """

    def __init__(self, napari_viewer: Any, *, segmenter: Any = None) -> None:
        super().__init__()
        # Before any worker imports torch: triton would crash a software-OpenGL viewer.
        prepare_ml_imports()
        # napari hands plugins a PublicOnlyProxy of the viewer: every attribute access
        # then makes a new proxy (so layer identity, ``is`` and ``id()`` break) and
        # inspects the calling frame (slow on the RECIST-to-mask path). Work on the real
        # objects.
        self.viewer = unwrap(napari_viewer)
        self.bindings: dict[int, ImageBinding] = {}
        self.binding: ImageBinding | None = None
        self.segmenter: Any = None
        self._segmenter_choice = "ellipse"
        self._checkpoint: Path | None = None
        self._loader: Any = None
        self._load_generation = 0
        self._colour_by = "lesion"
        #: id(binding) -> where its lesion colours start (images in order of annotation)
        self._colour_starts: dict[int, int] = {}
        self._correctors: dict[int, Corrector] = {}
        self._updating = False
        self._follow_scheduled = False
        self._dirty: set[int] = set()
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.timeout.connect(self._refresh_dirty)
        self._busy_label_timer = QTimer(self)
        self._busy_label_timer.setSingleShot(True)
        self._busy_label_timer.timeout.connect(self._show_busy)
        self.last_message = ""
        self._build_ui()
        self._init_recovery()
        self._keys = bind_keys(self, self.viewer)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        if segmenter is not None:
            self.set_segmenter(segmenter, choice="custom")
        elif default_model_available():
            self.load_segmenter("default")
        else:
            self.set_segmenter(ann.ShapeSegmenter("ellipse"), choice="ellipse")
            self._say("the default model is not installed: using the ellipse (no model)")
        self._refresh_images()
        self._adopt_annotated()
        if self.viewer.layers.selection.active is not None:
            self._follow_active()

    # -- UI -------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        build_ui(self)

    # -- messages ---------------------------------------------------------------------------
    def _say(self, text: str, warn: bool = False) -> None:
        self.last_message = text
        self.status.setText(text)
        if warn:
            from napari.utils.notifications import show_warning

            show_warning(f"RECIST annotator: {text}")

    # -- images and bindings -------------------------------------------------------------
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, event: Any = None) -> None:
        self._updating = True
        try:
            current = self.binding.image if self.binding is not None else None
            self.image_combo.clear()
            for layer in self._image_layers():
                self.image_combo.addItem(layer.name, id(layer))
            if current is not None:
                idx = self.image_combo.findData(id(current))
                if idx >= 0:
                    self.image_combo.setCurrentIndex(idx)
        finally:
            self._updating = False

    def _adopt_annotated(self) -> None:
        """Bind every image that already has RECIST lines (a sample, a RECIST CSV opened
        before the dock): all their masks appear, not only the selected image's."""
        from napari.layers import Shapes

        for layer in self._image_layers():
            if self.binding_for(layer) is not None:
                continue
            name = f"{layer.name}{RECIST_SUFFIX}"
            lines = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 - LayerList has no .get
            if isinstance(lines, Shapes) and len(lines.data):
                self.bind(layer, activate=False)

    def _on_layer_removed(self, event: Any) -> None:
        for key, binding in list(self.bindings.items()):
            if not binding.alive():
                binding.close()
                del self.bindings[key]
                if binding is self.binding:
                    self.binding = None
                    self._refresh_table()
                    # Its messages (errors included) are about an image that is gone.
                    self._say(f"{binding.name} was removed: select an image layer")
        self._refresh_images()

    def _on_image_combo(self, index: int) -> None:
        if self._updating or index < 0:
            return
        key = self.image_combo.itemData(index)
        for layer in self._image_layers():
            if id(layer) == key:
                self.bind(layer)
                return

    def _on_active_layer(self, event: Any = None) -> None:
        # Deferred: a reader adds an image and then its RECIST layer in one go; binding
        # at once would create a second RECIST layer before the reader's arrives.
        if not self._follow_scheduled:
            self._follow_scheduled = True
            QTimer.singleShot(0, self._follow_active)

    def _follow_active(self) -> None:
        from napari.layers import Image

        self._follow_scheduled = False
        layer = self.viewer.layers.selection.active
        if layer is None:
            return
        for binding in self.bindings.values():
            if binding.owns(layer):
                if binding is not self.binding:
                    self._switch(binding)
                return
        if isinstance(layer, Image):
            self.bind(layer)
            return
        # A RECIST / lesions layer of an image not bound yet (e.g. opened from a CSV).
        name = layer.name
        for suffix in (RECIST_SUFFIX, LESIONS_SUFFIX, CLICKS_SUFFIX):
            if name.endswith(suffix) and name[: -len(suffix)] in self.viewer.layers:
                base = self.viewer.layers[name[: -len(suffix)]]
                if isinstance(base, Image):
                    self.bind(base, activate=False)
                return

    def bind(self, image_layer: Any, *, activate: bool = True) -> ImageBinding | None:
        """Annotate ``image_layer`` (create or adopt its RECIST and lesions layers)."""
        image_layer = unwrap(image_layer)
        key = id(image_layer)
        binding = self.bindings.get(key)
        if binding is not None and binding.alive():
            if binding is not self.binding:
                self._switch(binding)
            return binding
        try:
            binding = ImageBinding(
                self.viewer,
                image_layer,
                lambda: self.segmenter,
                quick=self.quick_check.isChecked(),
                quick_ratio=self.quick_ratio.value(),
            )
        except ValueError as exc:
            self._say(str(exc), warn=True)
            return None
        binding.changed.connect(self._on_binding_changed)
        binding.message.connect(self._on_binding_message)
        binding.busy_changed.connect(self._on_busy)
        binding.volume_progress.connect(self._on_volume_progress)
        with contextlib.suppress(Exception):
            binding.shapes.bind_key("Control-z", lambda _layer: binding.undo(), overwrite=True)
        self.bindings[key] = binding
        self._switch(binding)
        if activate and self.viewer.dims.ndisplay == 2:
            self.activate_drawing()
        elif activate:
            self._on_ndisplay()
        self._offer_recovery(binding)  # last: its message is the one that stays
        return binding

    def _on_ndisplay(self, event: Any = None) -> None:
        """In 3D display napari draws no lines: say so (Draw RECIST goes back to 2D)."""
        if self.viewer.dims.ndisplay == 3 and self.binding is not None:
            self._say("3D display: lines cannot be drawn here; Draw RECIST (Shift-D) or "
                      "Click-to-segment switches back to 2D")

    def binding_for(self, layer: Any) -> ImageBinding | None:
        """The annotator's state for an image layer (or one of its own layers), if any."""
        layer = unwrap(layer)
        for binding in self.bindings.values():
            if binding.alive() and binding.owns(layer):
                return binding
        return None

    def _switch(self, binding: ImageBinding) -> None:
        self.binding = binding
        self._refresh_images()
        binding.set_quick(self.quick_check.isChecked(), self.quick_ratio.value())
        self._apply_colour(binding)
        self._refresh_table()
        self._show_spacing()
        self._show_radiology()
        self._show_recovery_offer()
        unit = binding.session.unit
        self._say(
            f"{binding.name}: draw the long axis, then the short axis across it "
            f"(lengths in {unit})"
        )

    def _on_binding_message(self, text: str, warn: bool) -> None:
        sender = self.sender()
        if isinstance(sender, ImageBinding) and sender is not self.binding:
            # Another image's worker answered after a switch: its news must not stand
            # in the status line as the current image's; a warning names its image.
            if warn:
                self._say(f"{sender.name}: {text}", warn=True)
            return
        self._say(text, warn)

    def _on_busy(self, busy: bool) -> None:
        if busy:
            self._busy_label_timer.start(BUSY_LABEL_DELAY_MS)
            return
        self._busy_label_timer.stop()
        if self.device_label.text() != self._device_text():
            self.device_label.setText(self._device_text())
        if self._dirty:  # the masks are in: show their rows now
            self._schedule_refresh(REFRESH_DELAY_MS)

    def _show_busy(self) -> None:
        if any(b.busy for b in self.bindings.values()):
            self.device_label.setText(self._device_text() + " — segmenting…")

    def _on_binding_changed(self) -> None:
        binding = self.sender()
        busy = False
        if isinstance(binding, ImageBinding):
            self._dirty.add(id(binding))
            busy = binding.busy
            self._schedule_autosave(binding)
        # Coalesced and a little later: the table and the Labels features are
        # bookkeeping, the mask on the canvas comes first.
        self._schedule_refresh(BUSY_REFRESH_DELAY_MS if busy else REFRESH_DELAY_MS)

    def _schedule_refresh(self, delay_ms: int) -> None:
        timer = self._refresh_timer
        if not timer.isActive() or timer.remainingTime() > delay_ms:
            timer.start(delay_ms)

    def _refresh_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for binding in self.bindings.values():
            if id(binding) not in dirty or not binding.alive():
                continue
            with contextlib.suppress(Exception):
                binding.labels.features = binding.labels_features()
            if self._colour_by == "cluster":
                self._apply_colour(binding)
        self._refresh_table()

    # -- actions -------------------------------------------------------------------------------
    def _need_binding(self) -> ImageBinding | None:
        if self.binding is None:
            self._say("select an image layer first", warn=True)
        return self.binding

    def commit(self, ids: list[int] | None = None) -> None:
        """Lock the given (default: selected, else all) lesions."""
        b = self._need_binding()
        if b is not None:
            b.commit(ids if ids is not None else (self.selected_lesions() or None))

    def uncommit(self, ids: list[int] | None = None) -> None:
        b = self._need_binding()
        if b is not None:
            b.uncommit(ids if ids is not None else (self.selected_lesions() or None))

    def delete_selected(self, ids: list[int] | None = None) -> None:
        b = self._need_binding()
        if b is None:
            return
        ids = ids if ids is not None else self.selected_lesions()
        if not ids:
            self._say("select the lesions to delete in the table", warn=True)
            return
        b.delete(ids)

    def undo(self) -> None:
        b = self._need_binding()
        if b is None:
            return
        had = b.session.can_undo
        before = self.last_message
        b.undo()
        if had:  # feedback, with whatever the session said about it
            said = self.last_message
            extra = f"; {said}" if said != before else ""
            self._say(f"undone ({len(b.session.lesions)} lesion(s) now){extra}")

    def resegment(self) -> None:
        """Re-segment the selected lesions (hand-edited ones too), else all unedited ones."""
        b = self._need_binding()
        if b is None:
            return
        ids = self.selected_lesions()
        b.apply(b.session.resegment(lesion_ids=ids or None))

    # -- state for scripts, tests and the other docks ------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a model is loading or a sync / segmentation is pending or running."""
        return (
            self._loader is not None
            or self._follow_scheduled
            or self._refresh_timer.isActive()
            or bool(self._restoring)
            or any(b.busy for b in self.bindings.values())
        )

    def annotations(self) -> list[dict[str, Any]]:
        """What has been annotated, per image: for curation / fine-tuning docks.

        Each item: ``image`` (the Image layer), ``image_path`` (its file or ``None``),
        ``recists`` (``[(lesion id, Recist)]`` of the complete lesions, spacing set),
        ``committed`` (lesion ids), ``labels`` (the Labels layer's array: label = lesion
        id, possibly corrected by hand) and ``spacing``.
        """
        out = []
        for b in self.bindings.values():
            if not b.alive():
                continue
            out.append(
                {
                    "image": b.image,
                    "image_path": image_source_path(b.image),
                    "recists": b.session.recists(),
                    "committed": [i for i, les in b.session.lesions.items() if les.committed],
                    "labels": b.labels.data,
                    "spacing": b.session.spacing,
                }
            )
        return out

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self._load_generation += 1  # a model still loading is no longer wanted
        unbind_keys(self.viewer, self._keys)
        self._keys = []
        with contextlib.suppress(Exception):
            self.viewer.dims.events.ndisplay.disconnect(self._on_ndisplay)
        self._close_recovery()  # before the bindings let go of their layers
        for binding in self.bindings.values():
            binding.close()
        super().closeEvent(event)
