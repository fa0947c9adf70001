"""The "Train / fine-tune" dock's UI builders: the data box and the settings form.

Each builder stores its widgets on the dock (``from_folder``, ``layer_table``,
``epochs``, ...: the names the dock and the tests use) and connects them to the
dock's methods.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
)

from napari_recist_seg._widgets._common import DeviceCombo, ModelPicker, PathPicker

ENCODERS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet-b0",
            "timm-mobilenetv3_small_100")


def data_box(w: Any) -> QGroupBox:
    """The "Data" box of the train dock ``w``: a folder, or the layers in the viewer."""
    box = QGroupBox("Data")
    v = QVBoxLayout(box)
    row = QHBoxLayout()
    w.from_folder = QRadioButton("Folder")
    w.from_layers = QRadioButton("Layers in the viewer")
    group = QButtonGroup(w)
    group.addButton(w.from_folder)
    group.addButton(w.from_layers)
    w.from_folder.setChecked(True)
    w.from_folder.toggled.connect(w._source_changed)
    row.addWidget(w.from_folder)
    row.addWidget(w.from_layers)
    row.addStretch(1)
    w.refresh_button = QPushButton("↻")
    w.refresh_button.setToolTip("Re-read the layers (RECIST drawn since, new lesions layers)")
    w.refresh_button.setFixedWidth(32)
    w.refresh_button.clicked.connect(w.refresh_layers)
    row.addWidget(w.refresh_button)
    v.addLayout(row)
    w.folder = PathPicker("dir", placeholder="dataset folder: images/, recist.csv or masks/")
    v.addWidget(w.folder)
    w.layer_table = QTableWidget(0, 4)
    w.layer_table.setHorizontalHeaderLabels(["use", "image", "RECIST", "curated"])
    w.layer_table.verticalHeader().setVisible(False)
    w.layer_table.setSelectionMode(QAbstractItemView.NoSelection)
    hh = w.layer_table.horizontalHeader()
    hh.setSectionResizeMode(1, QHeaderView.Stretch)
    for c in (0, 2, 3):
        hh.setSectionResizeMode(c, QHeaderView.ResizeToContents)
    w.layer_table.setMinimumHeight(110)
    w.layer_table.setMaximumHeight(170)
    w.layer_table.setToolTip(
        "curated: the image's lesions layer was corrected by hand (paint / erase) and "
        "is trained on as ground truth"
    )
    w.layer_table.itemChanged.connect(w._table_item_changed)
    v.addWidget(w.layer_table)
    w.use_curated = QCheckBox("Train on curated masks where marked (else RECIST only)")
    w.use_curated.setChecked(True)
    v.addWidget(w.use_curated)
    return box


def settings_box(w: Any) -> QGroupBox:
    """The "Model and training" box of the train dock ``w`` (its form)."""
    box = QGroupBox("Model and training")
    form = QFormLayout(box)
    w.init_model = ModelPicker(("scratch", "active", "default", "checkpoint"))
    w.init_model.setToolTip("Train a new network, or fine-tune an existing model")
    w.mode = QComboBox()
    w.mode.addItem("A1+L (multi-task: + RECIST cluster head)", "a1l")
    w.mode.addItem("A1 (segmentation only)", "a1")
    w.encoder = QComboBox()
    w.encoder.setEditable(True)
    w.encoder.addItems(ENCODERS)
    w.encoder.setToolTip("Any segmentation-models-pytorch encoder name")
    w.epochs = QSpinBox()
    w.epochs.setRange(1, 1000)
    w.epochs.setValue(30)
    w.clusters = QComboBox()
    w.clusters.addItem("auto (silhouette)", None)
    for k in range(2, 11):
        w.clusters.addItem(str(k), k)
    w.aux_weight = QDoubleSpinBox()
    w.aux_weight.setRange(0.0, 10.0)
    w.aux_weight.setSingleStep(0.1)
    w.aux_weight.setValue(0.5)
    w.aux_weight.setToolTip("lambda: weight of the cluster loss (A1+L)")
    w.target = QComboBox()
    w.target.addItem("Ellipse", "ellipse")
    w.target.addItem("GrabCut", "grabcut")
    w.val_fraction = QDoubleSpinBox()
    w.val_fraction.setRange(0.0, 0.9)
    w.val_fraction.setSingleStep(0.05)
    w.val_fraction.setValue(0.1)
    w.val_fraction.setToolTip("Fraction of the images held out for validation")
    w.input_size = QSpinBox()
    w.input_size.setRange(32, 512)
    w.input_size.setSingleStep(32)
    w.input_size.setValue(128)
    w.input_size.setToolTip("Network input size (px) of a new model")
    w.batch_size = QSpinBox()
    w.batch_size.setRange(1, 512)
    w.batch_size.setValue(16)
    w.device = DeviceCombo()
    w.output = PathPicker("dir", placeholder="model folder to write (checkpoint + log)")
    form.addRow("Start from", w.init_model)
    form.addRow("Mode", w.mode)
    form.addRow("Encoder", w.encoder)
    form.addRow("Epochs", w.epochs)
    form.addRow("Clusters K", w.clusters)
    form.addRow("Lambda", w.aux_weight)
    form.addRow("Weak target", w.target)
    form.addRow("Validation", w.val_fraction)
    form.addRow("Input size", w.input_size)
    form.addRow("Batch size", w.batch_size)
    form.addRow("Device", w.device)
    form.addRow("Output", w.output)
    w.mode.currentIndexChanged.connect(w._mode_changed)
    w.init_model.changed.connect(w._init_changed)
    w._init_changed()
    return box
