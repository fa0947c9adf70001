"""The RECIST annotator dock's UI builders and constants (no behaviour).

Each builder makes one row of the dock, stores its widgets on the dock (the names
the rest of the annotator and the tests use: ``image_combo``, ``table``,
``commit_button``, ...) and connects them to the dock's methods.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLayout,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QVBoxLayout,
)

from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets._layout import scroll_layout
from napari_recist_seg._widgets.annotator_keys import KEYS, help_text, shown
from napari_recist_seg._widgets.annotator_volume import WINDOW_LABELS

SEGMENTER_LABELS = {
    "default": "Default model",
    "checkpoint": "Checkpoint…",
    "ellipse": "Ellipse (no model)",
    "grabcut": "GrabCut (no model)",
}

TABLE_HEADERS = (
    "#", "slice", "L", "W", "L mask", "W mask", "Δ", "area", "cluster", "conf.", "status", "edited",
    "volume", "slices",
)

# Mask colours by lesion: bright, distinct on skin and on grey CT, and none yellow or
# orange: the long axis (yellow) drawn over such a mask could not be seen.
LESION_COLOURS = (
    "#00e5ff", "#ff4fd8", "#76ff03", "#d500f9", "#b388ff",
    "#f50057", "#448aff", "#ff5252", "#1de9b6", "#ff80ab",
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
    "3D lesion: volume of its label over every slice (mL when the spacing is known, else "
    "voxels); … while it is propagated",
    "3D lesion: first and last slice it spans",
)

# Cluster colours for "colour by cluster" (tab10).
CLUSTER_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


def _button(text: str, slot: Any, tip: str = "") -> QPushButton:
    button = QPushButton(text)
    if tip:
        button.setToolTip(tip)
    button.clicked.connect(slot)
    return button


def build_ui(w: Any) -> None:
    """Build the annotator dock ``w``'s rows, top to bottom (it scrolls on small screens)."""
    w.setMinimumWidth(480)  # the lesion table stays readable
    layout = scroll_layout(w)  # fits a 1366 x 768 screen (scrolls)
    layout.addLayout(_selectors(w))
    layout.addLayout(_recovery_row(w))
    layout.addLayout(_tools(w))
    layout.addLayout(_quick(w))
    layout.addLayout(_spacing(w))
    layout.addLayout(_radiology(w))
    layout.addWidget(_table(w), 1)
    layout.addLayout(_actions(w))
    layout.addLayout(_colour_row(w))
    layout.addLayout(_files(w))
    _help_and_status(w, layout)


def _recovery_row(w: Any) -> QLayout:
    """Restore / dismiss an autosaved session of this image (hidden until there is one)."""
    row = QHBoxLayout()
    w.restore_button = QPushButton("Restore unsaved annotations")
    w.restore_button.setToolTip("Bring back the lesions, states and masks autosaved for this image")
    w.restore_button.clicked.connect(lambda: w.restore_recovery())
    w.dismiss_restore_button = QPushButton("Dismiss")
    w.dismiss_restore_button.setToolTip("Keep the autosave on disk but do not load it "
                                        "(the next autosave of this image replaces it)")
    w.dismiss_restore_button.clicked.connect(lambda: w.dismiss_recovery())
    for button in (w.restore_button, w.dismiss_restore_button):
        button.setVisible(False)
        row.addWidget(button)
    return row


def _selectors(w: Any) -> QLayout:
    grid = QGridLayout()
    grid.addWidget(QLabel("Image"), 0, 0)
    w.image_combo = QComboBox()
    w.image_combo.setToolTip("The image to annotate (follows the layer selection)")
    w.image_combo.currentIndexChanged.connect(w._on_image_combo)
    grid.addWidget(w.image_combo, 0, 1, 1, 2)

    grid.addWidget(QLabel("Segmenter"), 1, 0)
    w.segmenter_combo = QComboBox()
    for key, text in SEGMENTER_LABELS.items():
        w.segmenter_combo.addItem(text, key)
    w.segmenter_combo.setToolTip(
        "Default model: shipped with the plugin. Checkpoint: a model you trained. "
        "Ellipse / GrabCut: no model, the RECIST ellipse (refined by GrabCut)"
    )
    w.segmenter_combo.activated.connect(w._on_segmenter_combo)
    grid.addWidget(w.segmenter_combo, 1, 1)
    w.device_combo = QComboBox()
    w.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
    w.device_combo.setToolTip("Where the model runs (auto: CUDA, else MPS, else CPU)")
    w.device_combo.activated.connect(lambda _: w._reload_model())
    grid.addWidget(w.device_combo, 1, 2)
    w.device_label = QLabel("")
    w.device_label.setWordWrap(True)
    grid.addWidget(w.device_label, 2, 0, 1, 3)
    return grid


def _tools(w: Any) -> QLayout:
    tools = QHBoxLayout()
    w.draw_button = _button(
        "Draw RECIST", w.activate_drawing,
        "Draw the long axis, then the short axis across it (it snaps perpendicular)",
    )
    w.click_button = _button(
        "Click a lesion", w.activate_click_tool,
        "One click on a lesion: the model segments it and measures it",
    )
    w.correct_button = _button(
        "Correct", w.activate_correct_tool,
        "Corrective clicks on a lesion's mask: click = add what it missed, "
        "Shift- or Alt-click = remove what it wrongly covers",
    )
    for b in (w.draw_button, w.click_button, w.correct_button):
        tools.addWidget(b)
    return tools


def _quick(w: Any) -> QLayout:
    quick = QHBoxLayout()
    w.quick_check = QCheckBox("Quick mode: long axis only, W =")
    w.quick_check.setToolTip("One line is a lesion: a short axis is proposed (editable)")
    w.quick_check.toggled.connect(w._on_quick)
    w.quick_ratio = QDoubleSpinBox()
    w.quick_ratio.setRange(0.1, 1.0)
    w.quick_ratio.setSingleStep(0.05)
    w.quick_ratio.setValue(ann.DEFAULT_QUICK_RATIO)
    w.quick_ratio.setSuffix(" × L")
    w.quick_ratio.valueChanged.connect(w._on_quick)
    quick.addWidget(w.quick_check)
    quick.addWidget(w.quick_ratio)
    quick.addStretch(1)
    return quick


def _spacing(w: Any) -> QLayout:
    spacing = QHBoxLayout()
    spacing.addWidget(QLabel("Pixel spacing"))
    w.spacing_box = QDoubleSpinBox()
    w.spacing_box.setRange(0.0, 50.0)
    w.spacing_box.setDecimals(4)
    w.spacing_box.setSingleStep(0.05)
    w.spacing_box.setSuffix(" mm")
    w.spacing_box.setSpecialValueText("unknown (lengths in px)")
    w.spacing_box.setToolTip(
        "Size of one pixel, for lengths and areas in mm: set it when the image has "
        "none (a photo, a volume without spacing); it becomes the image's scale"
    )
    w.spacing_box.editingFinished.connect(w._on_spacing)
    spacing.addWidget(w.spacing_box)
    spacing.addStretch(1)
    return spacing


def _radiology(w: Any) -> QLayout:
    """CT window presets (shown for CT images only) and the "3D lesion" option."""
    row = QHBoxLayout()
    w.window_label = QLabel("CT window")
    w.window_combo = QComboBox()
    for key, text in WINDOW_LABELS.items():
        w.window_combo.addItem(text, key)
    w.window_combo.setToolTip(
        "CT window preset (HU): the image's contrast and the model's input windowing "
        "(as --window in the CLI). Offered for CT only: MR and other images never get one"
    )
    w.window_combo.activated.connect(w._on_window_combo)
    w.volume_check = QCheckBox("3D lesion")
    w.volume_check.setToolTip(
        "Volumes: a committed lesion is propagated through the neighbouring slices "
        "(one label over every slice it spans; its volume in the table)"
    )
    w.volume_check.toggled.connect(w._on_volume_check)
    w.volume_make_button = _button(
        "Make 3D", lambda: w.make_volumes(),
        "Propagate the selected committed lesions (all committed 2D lesions if none is "
        "selected) through the volume now, also when they were committed without '3D lesion'")
    w.volume_status = QLabel("")
    w.volume_cancel_button = _button("Cancel 3D", lambda: w.cancel_volumes(),
                                     "Stop the 3D propagation (the slice masks are kept)")
    for item in (w.window_label, w.window_combo, w.volume_check, w.volume_make_button, w.volume_status):
        row.addWidget(item)
    row.addWidget(w.volume_cancel_button)
    row.addStretch(1)
    for item in (w.window_label, w.window_combo, w.volume_cancel_button):
        item.setVisible(False)
    w.volume_check.setEnabled(False)
    w.volume_make_button.setEnabled(False)
    return row


def _table(w: Any) -> QTableWidget:
    w.table = table = QTableWidget(0, len(TABLE_HEADERS))
    table.setHorizontalHeaderLabels(TABLE_HEADERS)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeToContents)
    header.setStretchLastSection(True)
    # A 480 px dock (1366x768 screen) shows ~445 px of table: what a user reads first
    # (status, edited) comes right after "#" (the columns keep their indices), and a
    # slightly smaller font lets the lengths and area fit without scrolling.
    header.moveSection(TABLE_HEADERS.index("status"), 1)
    header.moveSection(TABLE_HEADERS.index("edited"), 2)
    # A 3D lesion's volume and extent next: what a radiologist reads (hidden in 2D).
    header.moveSection(TABLE_HEADERS.index("volume"), 3)
    header.moveSection(TABLE_HEADERS.index("slices"), 4)
    font = table.font()
    if font.pointSizeF() > 8:
        font.setPointSizeF(font.pointSizeF() - 1)
        table.setFont(font)
        header.setFont(font)
    table.itemSelectionChanged.connect(w._on_row_selected)
    table.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    table.setMinimumHeight(140)
    return table


def _actions(w: Any) -> QLayout:
    actions = QHBoxLayout()
    w.commit_button = _button(
        "Commit", lambda: w.commit(),
        "Accept the selected lesions (all if none is selected): lock their lines",
    )
    w.uncommit_button = _button("Uncommit", lambda: w.uncommit())
    w.delete_button = _button(
        "Delete", lambda: w.delete_selected(), "Delete the selected lesions (lines and mask)"
    )
    w.undo_button = _button(
        "Undo", lambda: w.undo(), "Undo the last lesion action (Ctrl+Z on the RECIST layer)"
    )
    for b in (w.commit_button, w.uncommit_button, w.delete_button, w.undo_button):
        actions.addWidget(b)
    return actions


def _colour_row(w: Any) -> QLayout:
    colour = QHBoxLayout()
    colour.addWidget(QLabel("Colour masks by"))
    w.colour_combo = QComboBox()
    w.colour_combo.addItems(["lesion", "cluster"])
    w.colour_combo.currentTextChanged.connect(w.set_colour_by)
    colour.addWidget(w.colour_combo)
    w.resegment_button = _button(
        "Re-segment", lambda: w.resegment(),
        "Segment the selected lesions again with the current segmenter (all uncommitted "
        "ones if none is selected; hand-edited masks are replaced only when selected)",
    )
    colour.addWidget(w.resegment_button)
    return colour


def _files(w: Any) -> QLayout:
    files = QGridLayout()
    w.import_button = _button("Import RECIST CSV…", w._import_dialog)
    w.export_csv_button = _button("Export RECIST CSV…", w._export_csv_dialog)
    w.export_masks_button = _button("Export masks…", w._export_masks_dialog)
    w.export_meas_button = _button("Export measurements…", w._export_measurements_dialog)
    w.import_masks_button = _button(
        "Import masks…", w._import_masks_dialog,
        "Load a label image (0 = background, k = lesion k; a binary mask is lesion 1) "
        "into the lesions layer to continue editing it by hand",
    )
    files.addWidget(w.import_masks_button, 2, 0)
    files.addWidget(w.import_button, 0, 0)
    files.addWidget(w.export_csv_button, 0, 1)
    files.addWidget(w.export_masks_button, 1, 0)
    files.addWidget(w.export_meas_button, 1, 1)
    return files


def _help_and_status(w: Any, layout: QVBoxLayout) -> None:
    w.keys_label = QLabel(help_text())
    w.keys_label.setWordWrap(True)
    w.keys_label.setToolTip("\n".join(f"{shown(k)}: {what}" for k, what in KEYS.values()))
    layout.addWidget(w.keys_label)
    add_key_tooltips(w)

    w.status = QLabel("")
    w.status.setWordWrap(True)
    w.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
    layout.addWidget(w.status)


def add_key_tooltips(w: Any) -> None:
    """Each button's tooltip ends with its shortcut."""
    for action, button in (
        ("activate_drawing", w.draw_button),
        ("activate_click_tool", w.click_button),
        ("activate_correct_tool", w.correct_button),
        ("commit", w.commit_button),
        ("delete_selected", w.delete_button),
        ("undo", w.undo_button),
    ):
        button.setToolTip(f"{button.toolTip()} [{shown(KEYS[action][0])}]".lstrip())
