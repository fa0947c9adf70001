"""The "RECIST annotator" dock widget: draw RECIST, get lesion masks.

For the selected image layer (2D grey, RGB or a 3D volume) the widget creates (or
adopts) ``"<image> RECIST"`` (a Shapes layer of lines) and ``"<image> lesions"`` (a
Labels layer, one label per lesion), both with the image's scale and translate.
Drawing follows the cornerstone / OHIF Bidirectional tool (see
:mod:`napari_recist_seg.annotation`); a mask appears as soon as a pair is complete.
The segmenter is the default model, a checkpoint, or a model-free ellipse / GrabCut.

All the bookkeeping lives in :class:`~napari_recist_seg.annotation.AnnotationSession`
(pure Python) and all segmentation runs in worker threads; this module is the Qt front
end: selectors, buttons, the per-lesion table, file dialogs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from qtpy.QtCore import QItemSelectionModel, Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_recist_seg._widgets._layout import elide, scroll_layout
from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets.annotator_correct import Corrector
from napari_recist_seg._widgets.annotator_keys import KEYS, bind_keys, help_text, shown, unbind_keys
from napari_recist_seg._widgets.annotator_torch import prepare_ml_imports
from napari_recist_seg._widgets.annotator_binding import (
    CLICKS_SUFFIX,
    LESIONS_SUFFIX,
    RECIST_SUFFIX,
    ImageBinding,
    unwrap,
)

__all__ = ["AnnotatorWidget"]

SEGMENTER_LABELS = {
    "default": "Default model",
    "checkpoint": "Checkpoint…",
    "ellipse": "Ellipse (no model)",
    "grabcut": "GrabCut (no model)",
}

# The table / Labels features refresh waits this long (coalescing bursts of results).
REFRESH_DELAY_MS = 30
# While a lesion is being segmented the table waits for its mask (one update, with the
# measurements), at most this long: repainting widgets beside the model slows it.
BUSY_REFRESH_DELAY_MS = 300
# "segmenting…" appears only if a run takes longer than this (no flicker per lesion).
BUSY_LABEL_DELAY_MS = 250

TABLE_HEADERS = (
    "#", "slice", "L", "W", "L mask", "W mask", "Δ", "area", "cluster", "conf.", "status", "edited",
)

# Mask colours by lesion: bright, distinct on skin and on grey CT.
LESION_COLOURS = (
    "#00e5ff", "#ff4fd8", "#76ff03", "#ff9100", "#b388ff",
    "#ffea00", "#448aff", "#ff5252", "#1de9b6", "#ffc400",
)

TABLE_TIPS = (
    "lesion id (= its label in the lesions layer)",
    "axial slice of the volume",
    "long axis as drawn (snapped)",
    "short axis as drawn (snapped)",
    "long axis measured on the mask",
    "short axis measured on the mask",
    "largest relative difference between drawn and mask-measured axes "
    f"(flagged above {100 * ann.DISAGREEMENT_THRESHOLD:.0f}%)",
    "mask area",
    "RECIST shape cluster predicted by the model (A1+L)",
    "probability of that cluster",
    "open: waiting for the second axis; invalid / failed: see the message",
    "the mask was painted / erased / filled by hand (or imported): kept, never re-segmented "
    "unless you select the lesion and press Re-segment",
)

# Cluster colours for "colour by cluster" (tab10).
CLUSTER_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


def default_model_available() -> bool:
    """Whether the default model ships with this installation (no torch import)."""
    import napari_recist_seg

    return (Path(napari_recist_seg.__file__).parent / "models" / "default" / "config.json").is_file()


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def image_source_path(layer: Any) -> Path | None:
    """The file an image layer was opened from (reader, sample data or metadata)."""
    meta = getattr(layer, "metadata", {}) or {}
    for key in ("image_path", "path"):
        if meta.get(key):
            return Path(meta[key])
    src = getattr(getattr(layer, "source", None), "path", None)
    if src:
        return Path(src)
    return None


class AnnotatorWidget(QWidget):
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
        self._keys = bind_keys(self, self.viewer)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
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
        self.setMinimumWidth(480)  # the lesion table stays readable
        layout = scroll_layout(self)  # fits a 1366 x 768 screen (scrolls)
        grid = QGridLayout()
        layout.addLayout(grid)

        grid.addWidget(QLabel("Image"), 0, 0)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image to annotate (follows the layer selection)")
        self.image_combo.currentIndexChanged.connect(self._on_image_combo)
        grid.addWidget(self.image_combo, 0, 1, 1, 2)

        grid.addWidget(QLabel("Segmenter"), 1, 0)
        self.segmenter_combo = QComboBox()
        for key, text in SEGMENTER_LABELS.items():
            self.segmenter_combo.addItem(text, key)
        self.segmenter_combo.setToolTip(
            "Default model: shipped with the plugin. Checkpoint: a model you trained. "
            "Ellipse / GrabCut: no model, the RECIST ellipse (refined by GrabCut)"
        )
        self.segmenter_combo.activated.connect(self._on_segmenter_combo)
        grid.addWidget(self.segmenter_combo, 1, 1)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.device_combo.setToolTip("Where the model runs (auto: CUDA, else MPS, else CPU)")
        self.device_combo.activated.connect(lambda _: self._reload_model())
        grid.addWidget(self.device_combo, 1, 2)
        self.device_label = QLabel("")
        self.device_label.setWordWrap(True)
        grid.addWidget(self.device_label, 2, 0, 1, 3)

        tools = QHBoxLayout()
        self.draw_button = QPushButton("Draw RECIST")
        self.draw_button.setToolTip(
            "Draw the long axis, then the short axis across it (it snaps perpendicular)"
        )
        self.draw_button.clicked.connect(self.activate_drawing)
        self.click_button = QPushButton("Click a lesion")
        self.click_button.setToolTip("One click on a lesion: the model segments it and measures it")
        self.click_button.clicked.connect(self.activate_click_tool)
        self.correct_button = QPushButton("Correct")
        self.correct_button.setToolTip(
            "Corrective clicks on a lesion's mask: click = add what it missed, "
            "Shift- or Alt-click = remove what it wrongly covers"
        )
        self.correct_button.clicked.connect(self.activate_correct_tool)
        tools.addWidget(self.draw_button)
        tools.addWidget(self.click_button)
        tools.addWidget(self.correct_button)
        layout.addLayout(tools)

        quick = QHBoxLayout()
        self.quick_check = QCheckBox("Quick mode: long axis only, W =")
        self.quick_check.setToolTip("One line is a lesion: a short axis is proposed (editable)")
        self.quick_check.toggled.connect(self._on_quick)
        self.quick_ratio = QDoubleSpinBox()
        self.quick_ratio.setRange(0.1, 1.0)
        self.quick_ratio.setSingleStep(0.05)
        self.quick_ratio.setValue(ann.DEFAULT_QUICK_RATIO)
        self.quick_ratio.setSuffix(" × L")
        self.quick_ratio.valueChanged.connect(self._on_quick)
        quick.addWidget(self.quick_check)
        quick.addWidget(self.quick_ratio)
        quick.addStretch(1)
        layout.addLayout(quick)

        spacing = QHBoxLayout()
        spacing.addWidget(QLabel("Pixel spacing"))
        self.spacing_box = QDoubleSpinBox()
        self.spacing_box.setRange(0.0, 50.0)
        self.spacing_box.setDecimals(4)
        self.spacing_box.setSingleStep(0.05)
        self.spacing_box.setSuffix(" mm")
        self.spacing_box.setSpecialValueText("unknown (lengths in px)")
        self.spacing_box.setToolTip(
            "Size of one pixel, for lengths and areas in mm: set it when the image has "
            "none (a photo, a volume without spacing); it becomes the image's scale"
        )
        self.spacing_box.editingFinished.connect(self._on_spacing)
        spacing.addWidget(self.spacing_box)
        spacing.addStretch(1)
        layout.addLayout(spacing)

        self.table = QTableWidget(0, len(TABLE_HEADERS))
        self.table.setHorizontalHeaderLabels(TABLE_HEADERS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.table.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.table.setMinimumHeight(140)
        layout.addWidget(self.table, 1)

        actions = QHBoxLayout()
        self.commit_button = QPushButton("Commit")
        self.commit_button.setToolTip("Accept the selected lesions (all if none is selected): lock their lines")
        self.commit_button.clicked.connect(lambda: self.commit())
        self.uncommit_button = QPushButton("Uncommit")
        self.uncommit_button.clicked.connect(lambda: self.uncommit())
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the selected lesions (lines and mask)")
        self.delete_button.clicked.connect(lambda: self.delete_selected())
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last lesion action (Ctrl+Z on the RECIST layer)")
        self.undo_button.clicked.connect(lambda: self.undo())
        for b in (self.commit_button, self.uncommit_button, self.delete_button, self.undo_button):
            actions.addWidget(b)
        layout.addLayout(actions)

        colour = QHBoxLayout()
        colour.addWidget(QLabel("Colour masks by"))
        self.colour_combo = QComboBox()
        self.colour_combo.addItems(["lesion", "cluster"])
        self.colour_combo.currentTextChanged.connect(self.set_colour_by)
        colour.addWidget(self.colour_combo)
        self.resegment_button = QPushButton("Re-segment")
        self.resegment_button.setToolTip(
            "Segment the selected lesions again with the current segmenter (all uncommitted "
            "ones if none is selected; hand-edited masks are replaced only when selected)"
        )
        self.resegment_button.clicked.connect(lambda: self.resegment())
        colour.addWidget(self.resegment_button)
        layout.addLayout(colour)

        files = QGridLayout()
        self.import_button = QPushButton("Import RECIST CSV…")
        self.import_button.clicked.connect(self._import_dialog)
        self.export_csv_button = QPushButton("Export RECIST CSV…")
        self.export_csv_button.clicked.connect(self._export_csv_dialog)
        self.export_masks_button = QPushButton("Export masks…")
        self.export_masks_button.clicked.connect(self._export_masks_dialog)
        self.export_meas_button = QPushButton("Export measurements…")
        self.export_meas_button.clicked.connect(self._export_measurements_dialog)
        self.import_masks_button = QPushButton("Import masks…")
        self.import_masks_button.setToolTip(
            "Load a label image (0 = background, k = lesion k; a binary mask is lesion 1) "
            "into the lesions layer to continue editing it by hand"
        )
        self.import_masks_button.clicked.connect(self._import_masks_dialog)
        files.addWidget(self.import_masks_button, 2, 0)
        files.addWidget(self.import_button, 0, 0)
        files.addWidget(self.export_csv_button, 0, 1)
        files.addWidget(self.export_masks_button, 1, 0)
        files.addWidget(self.export_meas_button, 1, 1)
        layout.addLayout(files)

        self.keys_label = QLabel(help_text())
        self.keys_label.setWordWrap(True)
        self.keys_label.setToolTip("\n".join(f"{shown(k)}: {what}" for k, what in KEYS.values()))
        layout.addWidget(self.keys_label)
        self._add_key_tooltips()

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status)

    def _add_key_tooltips(self) -> None:
        """Each button's tooltip ends with its shortcut."""
        for action, button in (
            ("activate_drawing", self.draw_button),
            ("activate_click_tool", self.click_button),
            ("activate_correct_tool", self.correct_button),
            ("commit", self.commit_button),
            ("delete_selected", self.delete_button),
            ("undo", self.undo_button),
        ):
            button.setToolTip(f"{button.toolTip()} [{shown(KEYS[action][0])}]".lstrip())

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
            lines = self.viewer.layers[name] if name in self.viewer.layers else None
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
        with contextlib.suppress(Exception):
            binding.shapes.bind_key("Control-z", lambda _layer: binding.undo(), overwrite=True)
        self.bindings[key] = binding
        self._switch(binding)
        if activate:
            self.activate_drawing()
        return binding

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
        unit = binding.session.unit
        self._say(
            f"{binding.name}: draw the long axis, then the short axis across it "
            f"(lengths in {unit})"
        )

    def _on_binding_message(self, text: str, warn: bool) -> None:
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

    # -- segmenter ------------------------------------------------------------------------
    def _device_text(self) -> str:
        if self.segmenter is None:
            return "no segmenter loaded"
        return f"{ann.segmenter_name(self.segmenter)} on {ann.segmenter_device(self.segmenter)}"

    def set_segmenter(self, segmenter: Any, *, choice: str = "custom") -> None:
        """Use ``segmenter`` from now on and re-segment the uncommitted lesions with it."""
        self.segmenter = segmenter
        self._segmenter_choice = choice
        idx = self.segmenter_combo.findData(choice)
        if idx >= 0:
            self.segmenter_combo.setCurrentIndex(idx)
        self.device_label.setText(self._device_text())
        for binding in self.bindings.values():
            binding.resegment()
            binding.kick()

    def _on_segmenter_combo(self, index: int) -> None:
        choice = self.segmenter_combo.itemData(index)
        path = None
        if choice == "checkpoint":
            path, _ = QFileDialog.getOpenFileName(
                self, "Choose a checkpoint (config.json in a model folder, or a weights file)",
                str(self._checkpoint or Path.home()),
                "Checkpoints (config.json *.safetensors *.pt *.pth);;All files (*)",
            )
            if not path:
                self._restore_combo()
                return
            if Path(path).name == "config.json":
                path = str(Path(path).parent)
        self.load_segmenter(choice, path)

    def _restore_combo(self) -> None:
        idx = self.segmenter_combo.findData(self._segmenter_choice)
        self.segmenter_combo.setCurrentIndex(max(idx, 0))

    def _reload_model(self) -> None:
        if self._segmenter_choice in ("default", "checkpoint"):
            self.load_segmenter(self._segmenter_choice, self._checkpoint)

    def load_segmenter(self, choice: str, path: str | Path | None = None) -> Any:
        """Load a segmenter in a worker (``default``, ``checkpoint``, ``ellipse``, ``grabcut``).

        The drawn lesions are kept whatever happens; if loading fails the previous
        segmenter stays and the error is shown. When calls overlap, the last one wins
        (an earlier load finishing later is ignored). Returns the worker (or ``None``).
        """
        # The last request wins, whatever order the loads finish in.
        self._load_generation += 1
        generation = self._load_generation
        if choice in ("ellipse", "grabcut"):
            self._loader = None
            self.set_segmenter(ann.ShapeSegmenter(choice), choice=choice)
            return None
        from napari.qt.threading import create_worker

        device = self.device_combo.currentText()
        self.device_label.setText(f"loading {SEGMENTER_LABELS.get(choice, choice)} on {device}…")
        # Errors go to `failed` (a message), not re-raised in the Qt event loop.
        worker = create_worker(
            ann.load_segmenter, choice, path, device, _start_thread=False, _ignore_errors=True
        )

        def done(seg: Any) -> None:
            if generation != self._load_generation or not self._qt_alive():
                return  # a later choice superseded this one, or the dock is gone
            self._loader = None
            if choice == "checkpoint":
                self._checkpoint = Path(path) if path else None
            self.set_segmenter(seg, choice=choice)
            self._say(f"segmenter: {self._device_text()}")

        def failed(exc: BaseException) -> None:
            if generation != self._load_generation or not self._qt_alive():
                return
            self._loader = None
            self._restore_combo()
            self.device_label.setText(self._device_text())
            self._say(f"could not load the model ({exc}); keeping {self._device_text()}", warn=True)

        worker.returned.connect(done)
        worker.errored.connect(failed)
        self._loader = worker
        worker.start()
        return worker

    @property
    def loading(self) -> bool:
        """Whether a model is being loaded (the last ``load_segmenter`` call wins)."""
        return self._loader is not None

    # -- tools ----------------------------------------------------------------------------
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

    def activate_drawing(self) -> None:
        """Select the RECIST layer in line-drawing mode."""
        self._end_correcting()
        if self.binding is None:
            self._say("select an image layer first", warn=True)
            return
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

    # -- table --------------------------------------------------------------------------------
    def _refresh_table(self) -> None:
        rows = self.binding.session.table_rows() if self.binding is not None else []
        selected = self.selected_lesions()
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(len(rows))
            unit = rows[0]["unit"] if rows else "px"
            area_unit = "mm²" if unit == "mm" else "px"
            self.table.setHorizontalHeaderLabels(
                [
                    "#", "slice", f"L ({unit})", f"W ({unit})", "L mask", "W mask", "Δ",
                    f"area ({area_unit})", "cluster", "conf.", "status", "edited",
                ]
            )
            for j, tip in enumerate(TABLE_TIPS):
                header = self.table.horizontalHeaderItem(j)
                if header is not None:
                    header.setToolTip(tip)
            for i, row in enumerate(rows):
                status = row["status"]
                if row["committed"]:
                    status = "committed"
                values = [
                    str(row["lesion"]),
                    _fmt(row["slice"]),
                    _fmt(row["long_drawn"]),
                    _fmt(row["short_drawn"]),
                    _fmt(row["long_measured"]),
                    _fmt(row["short_measured"]),
                    "" if row["disagreement"] is None else f"{100 * row['disagreement']:.0f}%",
                    _fmt(row["area"], 0),
                    _fmt(row["cluster"]),
                    _fmt(row["confidence"], 2),
                    elide(status, 40),  # long "invalid: ..." texts: full text in the tooltip
                    "edited" if row.get("edited") else "",
                ]
                for j, v in enumerate(values):
                    item = QTableWidgetItem(v)
                    item.setData(Qt.UserRole, int(row["lesion"]))
                    if j == 6 and row["flag"]:
                        item.setBackground(QColor("#b3541e"))
                        item.setToolTip(
                            "drawn and mask-measured axes disagree by more than "
                            f"{100 * ann.DISAGREEMENT_THRESHOLD:.0f}%"
                        )
                    if j == 10 and (row["status"].startswith(("invalid", "failed"))):
                        item.setForeground(QColor("#ff453a"))
                    if j == 10 and (v != status or status.startswith(("invalid", "failed"))):
                        item.setToolTip(status)
                    self.table.setItem(i, j, item)
                if int(row["lesion"]) in selected:  # (not selectRow: see select_lesion)
                    self.table.selectionModel().select(
                        self.table.model().index(i, 0),
                        QItemSelectionModel.Select | QItemSelectionModel.Rows,
                    )
            self.table.setColumnHidden(1, self.binding is None or self.binding.ndim == 2)
        finally:
            self.table.blockSignals(False)

    def selected_lesions(self) -> list[int]:
        # Not selectedRows(): it wants every column selected, and the hidden "slice"
        # column of a 2D image never is (a selected row then read as none).
        model = self.table.selectionModel()
        rows = sorted({idx.row() for idx in model.selectedIndexes()}) if model else []
        ids = []
        for row in rows:
            item = self.table.item(row, 0)
            if item is not None:
                ids.append(int(item.data(Qt.UserRole)))
        return ids

    def select_lesion(self, lesion_id: int) -> None:
        """Select a lesion's row (and centre the view on it)."""
        for i in range(self.table.rowCount()):
            item = self.table.item(i, 0)
            if item is not None and int(item.data(Qt.UserRole)) == lesion_id:
                self.table.clearSelection()  # re-selecting centres again
                # Through the selection model, not selectRow(): that one reads the
                # keyboard, and with Shift held (Shift+N / Shift+B) it extends.
                flags = QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows
                self.table.selectionModel().select(self.table.model().index(i, 0), flags)
                self.table.setCurrentCell(i, 0, QItemSelectionModel.NoUpdate)
                return

    def _on_row_selected(self) -> None:
        ids = self.selected_lesions()
        if len(ids) == 1:
            self.centre_on(ids[0])
            if self.binding is not None:
                self._say(self.binding.describe(ids[0]))

    def centre_on(self, lesion_id: int) -> None:
        """Centre the view on a lesion (and go to its slice on a volume)."""
        b = self.binding
        if b is None or lesion_id not in b.session.lesions:
            return
        centre = b.session.lesion_centre(lesion_id)
        world = np.asarray(b.shapes.data_to_world(centre), float)
        if b.ndim == 3:
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, float(world[0]))
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; .camera before
        cam = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        cur = list(cam.center)
        cur[-2:] = [float(world[-2]), float(world[-1])]
        cam.center = tuple(cur)
        les = b.session.lesions[lesion_id]
        index = {v.line_id: i for i, v in enumerate(b.session.layer_lines())}
        with contextlib.suppress(Exception):
            b.shapes.selected_data = {index[lid] for lid in les.line_ids if lid in index}

    # -- colour --------------------------------------------------------------------------------
    def set_colour_by(self, mode: str) -> None:
        """``"lesion"`` (one colour per lesion) or ``"cluster"`` (one per shape cluster)."""
        if mode not in ("lesion", "cluster"):
            raise ValueError(f"colour by 'lesion' or 'cluster', not {mode!r}")
        self._colour_by = mode
        if self.colour_combo.currentText() != mode:
            self.colour_combo.setCurrentText(mode)
        for binding in self.bindings.values():
            self._apply_colour(binding)

    def _apply_colour(self, binding: ImageBinding) -> None:
        from napari.utils.colormaps import CyclicLabelColormap, DirectLabelColormap

        labels = binding.labels
        if self._colour_by == "lesion":
            if getattr(labels.colormap, "name", "") != "recist lesions":
                labels.colormap = CyclicLabelColormap(
                    colors=["transparent", *LESION_COLOURS], name="recist lesions"
                )
            return
        colours: dict[Any, Any] = {None: "transparent", 0: "transparent"}
        for les in binding.session.lesions.values():
            colours[les.id] = (
                "#9e9e9e" if les.cluster is None else CLUSTER_COLOURS[les.cluster % len(CLUSTER_COLOURS)]
            )
        labels.colormap = DirectLabelColormap(color_dict=colours)

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

    def _step_lesion(self, step: int) -> None:
        if self.binding is None:
            return
        self._refresh_dirty()  # the table may lag behind the session by a timer tick
        ids = [int(row["lesion"]) for row in self.binding.session.table_rows()]
        if not ids:
            self._say("no lesion yet")
            return
        sel = self.selected_lesions()
        i = ids.index(sel[0]) + step if sel and sel[0] in ids else (0 if step > 0 else -1)
        self.select_lesion(ids[i % len(ids)])

    def next_lesion(self) -> None:
        """Select (and centre on) the next lesion of the table."""
        self._step_lesion(1)

    def previous_lesion(self) -> None:
        """Select (and centre on) the previous lesion of the table."""
        self._step_lesion(-1)

    # -- files ------------------------------------------------------------------------------------
    def _resolve_if_exists(self, path: Path, if_exists: str) -> str | None:
        """Turn ``"ask"`` into a user's answer; ``None`` when they cancel."""
        if if_exists != "ask" or not path.exists():
            return "error" if if_exists == "ask" else if_exists
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Warning)
        box.setWindowTitle("File exists")
        box.setText(f"{path.name} already exists.")
        overwrite = box.addButton("Overwrite", QMessageBox.DestructiveRole)
        rename = box.addButton(f"Save as {ann.free_path(path).name}", QMessageBox.AcceptRole)
        box.addButton(QMessageBox.Cancel)
        box.exec_()
        clicked = box.clickedButton()
        if clicked is overwrite:
            return "overwrite"
        if clicked is rename:
            return "rename"
        return None

    def _image_file_for_export(self, b: ImageBinding, folder: Path) -> Path:
        src = image_source_path(b.image)
        if src is not None and src.exists():
            return src
        # The image exists only in memory (sample data, a script): save it with the CSV.
        suffix = ".nii.gz" if b.ndim == 3 else (".png" if b.image.data.dtype == np.uint8 else ".tif")
        path = ann.free_path(folder / f"{b.name}{suffix}")
        spacing = None
        if b.session.spacing is not None:
            spacing = tuple(float(s) for s in b.image.scale)
        ann.save_image(path, np.asarray(b.image.data), spacing)
        b.image.metadata["image_path"] = str(path)
        self._say(f"the image had no file: saved it as {path.name} next to the CSV")
        return path

    def _export(
        self, path: str | Path, if_exists: str, write: Callable[[Any, Path, str], tuple[Path, str]]
    ) -> Path | None:
        """The steps every export shares: a current image, the overwrite rule (never
        silently), the write, and one message for success or failure.

        ``write(binding, path, mode)`` returns the file written and the success message.
        """
        b = self._need_binding()
        if b is None:
            return None
        path = Path(path)
        mode = self._resolve_if_exists(path, if_exists)
        if mode is None:
            return None
        try:
            out, message = write(b, path, mode)
        except (OSError, ValueError) as exc:
            self._say(f"export failed: {exc}", warn=True)
            return None
        self._say(message)
        return out

    def export_recist_csv(
        self, path: str | Path, *, if_exists: str = "ask", all_images: bool = True
    ) -> Path | None:
        """Write the lesions as a RECIST CSV; returns the file written.

        With ``all_images`` every annotated image goes in (the ``image`` column tells
        them apart), else only the current one. Images that exist only in memory are
        saved next to the CSV.
        """

        def write(b: Any, path: Path, mode: str) -> tuple[Path, str]:
            bindings = [x for x in self.bindings.values() if x.alive()] if all_images else [b]
            bindings = [x for x in bindings if x.session.recists()] or [b]
            items = [(x.session, self._image_file_for_export(x, path.parent)) for x in bindings]
            out = ann.export_recist_csv_many(path, items, if_exists=mode)
            n = sum(len(x.session.recists()) for x in bindings)
            return out, f"saved {n} lesions of {len(bindings)} image(s) to {out}"

        return self._export(path, if_exists, write)

    def export_masks(self, path: str | Path, *, if_exists: str = "ask") -> Path | None:
        """Write the lesion label image (png/tif for 2D, nii.gz for volumes, with spacing)."""

        def write(b: Any, path: Path, mode: str) -> tuple[Path, str]:
            spacing = tuple(float(s) for s in b.labels.scale) if b.session.spacing is not None else None
            out = ann.export_masks(path, np.asarray(b.labels.data), spacing, if_exists=mode)
            return out, f"saved the masks to {out}"

        return self._export(path, if_exists, write)

    def export_measurements(self, path: str | Path, *, if_exists: str = "ask") -> Path | None:
        """Write the per-lesion measurements CSV of the current image."""

        def write(b: Any, path: Path, mode: str) -> tuple[Path, str]:
            src = image_source_path(b.image)
            rows = b.session.measurement_rows(src.name if src is not None else b.name)
            out = ann.export_measurements(path, rows, if_exists=mode)
            return out, f"saved {len(rows)} measurements to {out}"

        return self._export(path, if_exists, write)

    def import_recist_csv(self, path: str | Path) -> int:
        """Add the lesions a RECIST CSV holds for the current image; returns how many."""
        from napari_recist_seg.data import read_recist_csv

        b = self._need_binding()
        if b is None:
            return 0
        try:
            records = read_recist_csv(path)
        except (OSError, ValueError) as exc:
            self._say(f"import failed: {exc}", warn=True)
            return 0
        mine = ann.records_for_image(records, image_source_path(b.image), b.name)
        if not mine:
            self._say(f"{Path(path).name} holds no RECIST for {b.name}", warn=True)
            return 0
        items = []
        for rec in mine:
            r = rec.recist
            if (r.slice_index is None) != (b.ndim == 2):
                self._say(
                    f"lesion {rec.lesion}: the CSV's slice column does not fit this "
                    f"{'2D image' if b.ndim == 2 else 'volume'}; skipped",
                    warn=True,
                )
                continue
            items.append((rec.lesion, r))
        b.add_recists(items)
        self._say(f"imported {len(items)} lesions from {Path(path).name}")
        return len(items)

    def resegment(self) -> None:
        """Re-segment the selected lesions (hand-edited ones too), else all unedited ones."""
        b = self._need_binding()
        if b is None:
            return
        ids = self.selected_lesions()
        b.apply(b.session.resegment(lesion_ids=ids or None))

    def import_masks(self, path: str | Path) -> int:
        """Load a label image file into the current image's lesions layer; returns how many."""
        from napari_recist_seg.data import read_image
        from napari_recist_seg.hand_edits import as_label_image

        b = self._need_binding()
        if b is None:
            return 0
        try:
            pixels = np.load(path) if str(path).endswith(".npy") else read_image(path).array
            labels = as_label_image(pixels, plane_ndim=b.ndim)
            made = b.import_masks(labels)
        except (OSError, ValueError) as exc:
            self._say(f"import masks failed: {exc}", warn=True)
            return 0
        self._say(f"imported {len(made)} lesion mask(s) from {Path(path).name}: edit them by hand")
        return len(made)

    def _import_masks_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a label image", "", "Images (*.png *.tif *.tiff *.nii *.nii.gz *.npy)"
        )
        if path:
            self.import_masks(path)

    def _import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a RECIST CSV", "", "CSV (*.csv)")
        if path:
            self.import_recist_csv(path)

    def _save_dialog(self, caption: str, default: str, filters: str) -> Path | None:
        path, _ = QFileDialog.getSaveFileName(
            self, caption, default, filters, options=QFileDialog.DontConfirmOverwrite
        )
        return Path(path) if path else None

    def _default_name(self, suffix: str) -> str:
        b = self.binding
        src = image_source_path(b.image) if b is not None else None
        folder = src.parent if src is not None else Path.cwd()
        name = b.name if b is not None else "image"
        return str(folder / f"{name}{suffix}")

    def _export_csv_dialog(self) -> None:
        path = self._save_dialog("Save RECIST CSV", self._default_name("_recist.csv"), "CSV (*.csv)")
        if path:
            self.export_recist_csv(path)

    def _export_masks_dialog(self) -> None:
        b = self._need_binding()
        if b is None:
            return
        if b.ndim == 3:
            default, filters = "_lesions.nii.gz", "NIfTI (*.nii.gz);;TIFF (*.tif)"
        else:
            default, filters = "_lesions.png", "PNG (*.png);;TIFF (*.tif)"
        path = self._save_dialog("Save lesion masks", self._default_name(default), filters)
        if path:
            self.export_masks(path)

    def _export_measurements_dialog(self) -> None:
        path = self._save_dialog(
            "Save measurements", self._default_name("_measurements.csv"), "CSV (*.csv)"
        )
        if path:
            self.export_measurements(path)

    # -- state for scripts, tests and the other docks ------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a model is loading or a sync / segmentation is pending or running."""
        return (
            self._loader is not None
            or self._follow_scheduled
            or self._refresh_timer.isActive()
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

    def _qt_alive(self) -> bool:
        """Whether the dock's Qt widgets still exist (a model load may end after the
        viewer closed)."""
        try:
            self.segmenter_combo.objectName()
        except RuntimeError:
            return False
        return True

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self._load_generation += 1  # a model still loading is no longer wanted
        unbind_keys(self.viewer, self._keys)
        self._keys = []
        for binding in self.bindings.values():
            binding.close()
        super().closeEvent(event)
