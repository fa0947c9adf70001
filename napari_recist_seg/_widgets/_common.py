"""Small form pieces shared by the Bulk / Train / Evaluate docks, and viewer helpers.

Nothing here computes anything: path pickers, the model and device choosers, and
the code that puts an image with its masks into the viewer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

__all__ = [
    "DEVICES",
    "DeviceCombo",
    "ModelPicker",
    "PathPicker",
    "find_annotator",
    "open_case",
    "prepare_torch",
]

DEVICES = ("auto", "cpu", "cuda", "mps")

#: Layer name suffixes the annotator uses (``"<image> RECIST"``, ``"<image> lesions"``).
RECIST_SUFFIX = " RECIST"
LESIONS_SUFFIX = " lesions"


class PathPicker(QWidget):
    """A line edit with a Browse button. ``kind``: ``"dir"``, ``"file"`` or ``"save"``."""

    changed = Signal(str)

    def __init__(
        self,
        kind: str = "dir",
        *,
        placeholder: str = "",
        file_filter: str = "All files (*)",
        caption: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if kind not in ("dir", "file", "save"):
            raise ValueError(f"kind must be 'dir', 'file' or 'save', got {kind!r}")
        self.kind = kind
        self.file_filter = file_filter
        self.caption = caption or {"dir": "Choose a folder", "file": "Choose a file",
                                   "save": "Save as"}[kind]
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.textChanged.connect(self.changed.emit)
        self.button = QPushButton("Browse…")
        self.button.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.button)

    def browse(self) -> None:
        start = self.edit.text() or os.getcwd()
        if self.kind == "dir":
            path = QFileDialog.getExistingDirectory(self, self.caption, start)
        elif self.kind == "file":
            path, _ = QFileDialog.getOpenFileName(self, self.caption, start, self.file_filter)
        else:
            path, _ = QFileDialog.getSaveFileName(self, self.caption, start, self.file_filter)
        if path:
            self.edit.setText(path)

    def path(self) -> Path | None:
        """The path typed or chosen (``~`` expanded), ``None`` when empty."""
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_path(self, path: str | os.PathLike[str] | None) -> None:
        self.edit.setText("" if path is None else str(path))


class DeviceCombo(QComboBox):
    """``auto`` (CUDA, then Apple MPS, then CPU), or a device forced by the user."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItems(DEVICES)
        self.setToolTip("auto: CUDA when present, else Apple MPS, else CPU")

    def device(self) -> str:
        return self.currentText()


class ModelPicker(QWidget):
    """Which model to use: the shipped default, the annotator's active model, or a checkpoint.

    ``choices`` is a subset of ``("default", "active", "checkpoint", "scratch")`` in
    display order; ``"scratch"`` means a new, untrained network (training only).
    """

    changed = Signal()
    LABELS = {
        "default": "Default model (shipped)",
        "active": "Active model (annotator)",
        "checkpoint": "Checkpoint…",
        "scratch": "From scratch",
    }

    def __init__(
        self,
        choices: Sequence[str] = ("default", "checkpoint"),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self._keys = list(choices)
        for key in self._keys:
            self.combo.addItem(self.LABELS[key], key)
        self.picker = PathPicker(
            "dir", placeholder="checkpoint folder (with config.json) or .safetensors/.pt file"
        )
        self.picker.setToolTip(
            "A model folder written by training (config.json + weights); type a path to "
            "a .safetensors / .pt file if the weights are a single file"
        )
        # The path goes under the choice: side by side in a 480 px dock the path
        # field was squeezed to a few letters ("ch…").
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.picker)
        self.combo.currentIndexChanged.connect(self._update)
        self.picker.changed.connect(lambda _: self.changed.emit())
        self._update()

    def _update(self) -> None:
        self.picker.setVisible(self.choice() == "checkpoint")
        self.changed.emit()

    def choice(self) -> str:
        return self.combo.currentData()

    def set_choice(self, key: str, path: str | os.PathLike[str] | None = None) -> None:
        self.combo.setCurrentIndex(self._keys.index(key))
        if path is not None:
            self.picker.set_path(path)

    def checkpoint(self) -> Path | None:
        """The chosen checkpoint path (only for the "checkpoint" choice)."""
        return self.picker.path() if self.choice() == "checkpoint" else None

    def label(self) -> str:
        """Short name for tables and plots: ``default``, ``active`` or the folder name."""
        if self.choice() == "checkpoint":
            p = self.picker.path()
            return p.name if p is not None else "checkpoint"
        return self.choice()


def prepare_torch() -> None:
    """Call in the GUI thread before a worker imports torch.

    On Mesa's software OpenGL, triton (pulled in by ``torch._dynamo``, which every
    torch optimiser imports) segfaults napari unless it is loaded first with
    ``RTLD_DEEPBIND``; the annotator's :func:`prepare_ml_imports` does that (one
    mechanism for the whole plugin). Cheap when already done.
    """
    from napari_recist_seg._widgets.annotator_torch import prepare_ml_imports

    prepare_ml_imports()


# -- viewer helpers -----------------------------------------------------------------


def find_annotator(viewer):
    """The open annotator dock widget of ``viewer``, or ``None``.

    Looks through the docked widgets for the annotator class (by its module, so this
    works whichever name napari gave the dock).
    """
    window = getattr(viewer, "window", None)
    try:
        widgets = list(window.dock_widgets.values())  # public since napari 0.5
    except AttributeError:
        return None
    for widget in widgets:
        widget = getattr(widget, "native", widget)  # magicgui containers
        if not isinstance(widget, QWidget):
            continue
        for candidate in (widget, *widget.findChildren(QWidget)):
            if type(candidate).__module__.endswith("_widgets.annotator"):
                return candidate
    return None


#: Overlay colours: ground truth, then predictions (model A, model B, ...).
GROUND_TRUTH_COLOUR = "#ffd23f"
PREDICTION_COLOURS = ("#2de2e6", "#ff4fd8", "#7cff6b")


def _single_colour(colour: str):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: colour})


def _replace_or_add(viewer, name: str, kind: str, data: np.ndarray, **kwargs):
    """Update the layer ``name`` if it is of the same kind and shape, else add a new one."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        same_kind = type(layer).__name__.lower() == kind
        if same_kind and getattr(layer.data, "shape", None) == data.shape:
            layer.data = data
            for key, value in kwargs.items():
                if key not in ("scale", "rgb"):
                    setattr(layer, key, value)
            return layer
        viewer.layers.remove(layer)
    adder = getattr(viewer, f"add_{kind}")
    return adder(data, name=name, **kwargs)


def _stack(viewer, layers) -> None:
    """Put ``layers`` directly on top of each other, first at the bottom.

    napari inserts a new layer above the *selected* one, so without this an overlay
    can end up under its image.
    """
    for below, above in zip(layers, layers[1:]):
        i, j = viewer.layers.index(below), viewer.layers.index(above)
        if j != i + 1:
            viewer.layers.move(j, i + 1 if j > i else i)


def open_case(
    viewer,
    image_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    predictions: Sequence[tuple[str, str | os.PathLike[str]]] = (),
    labels_path: str | os.PathLike[str] | None = None,
    ground_truth: str | os.PathLike[str] | None = None,
):
    """Show an image with its predicted mask(s) / lesion labels and ground truth.

    - ``labels_path``: a label image (one id per lesion, as ``recist-seg segment``
      writes for several lesions), filled, one colour per lesion;
    - ``predictions``: ``(layer name, mask file)`` pairs; one prediction is filled
      (translucent cyan), several (models side by side) are drawn as contours in
      distinct colours;
    - ``ground_truth``: a mask file, drawn as a yellow contour on top.

    Layers of the same names are updated, not piled up, and stacked image ->
    predictions -> ground truth. Returns the image layer.
    """
    from napari_recist_seg.data import read_image, read_labels, read_mask

    img = read_image(image_path)
    name = name or Path(image_path).name.split(".")[0]
    kw = {"scale": tuple(img.spacing)} if img.spacing is not None else {}
    image_layer = _replace_or_add(viewer, name, "image", img.array, rgb=img.is_rgb, **kw)
    stack = [image_layer]
    if labels_path is not None and Path(labels_path).is_file():
        lab = read_labels(labels_path).astype(np.int32)
        stack.append(_replace_or_add(viewer, f"{name}{LESIONS_SUFFIX}", "labels", lab,
                                     opacity=0.45, **kw))
    several = len(predictions) > 1
    for i, (layer_name, path) in enumerate(predictions):
        mask = read_mask(path).astype(np.int32)
        colour = PREDICTION_COLOURS[i % len(PREDICTION_COLOURS)]
        layer = _replace_or_add(viewer, layer_name, "labels", mask,
                                colormap=_single_colour(colour),
                                opacity=1.0 if several else 0.4, **kw)
        layer.contour = 2 if several else 0
        stack.append(layer)
    if ground_truth is not None:
        gt = read_mask(ground_truth).astype(np.int32)
        layer = _replace_or_add(viewer, f"{name} ground truth", "labels", gt,
                                colormap=_single_colour(GROUND_TRUTH_COLOUR), opacity=1.0, **kw)
        layer.contour = 2
        stack.append(layer)
    _stack(viewer, stack)
    viewer.layers.selection.active = image_layer
    viewer.reset_view()
    return image_layer


# -- what the viewer holds, as core objects ------------------------------------------


def _image_data(layer) -> np.ndarray:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _source_path(layer) -> Path | None:
    meta = getattr(layer, "metadata", {}) or {}
    for key in ("image_path", "path"):
        if meta.get(key):
            return Path(meta[key])
    src = getattr(getattr(layer, "source", None), "path", None)
    return Path(src) if src else None


def _observe_lines(shapes) -> list:
    """The lines of a RECIST Shapes layer as the annotation session reads them."""
    from napari_recist_seg.annotation import LineObs

    feats = shapes.features
    n = len(shapes.data)

    def column(name: str, default):
        if name in feats.columns and len(feats) == n:
            return list(feats[name])
        return [default] * n

    def as_int(v, default=-1) -> int:
        try:
            return int(v)
        except (TypeError, ValueError):
            return default

    ids, hints, axes = column("line_id", -1), column("lesion", -1), column("axis", "")
    types = list(shapes.shape_type)
    obs = []
    for i, coords in enumerate(shapes.data):
        lid = as_int(ids[i])
        axis = axes[i] if isinstance(axes[i], str) else ""
        obs.append(LineObs(lid, np.asarray(coords, float), as_int(hints[i]) if lid < 0 else None,
                           axis, types[i]))
    return obs


def layer_recists(viewer, image_layer, annotator=None) -> list:
    """``[(lesion id, Recist), ...]`` of an image layer.

    From the annotator's session when the annotator is bound to the layer (exactly
    what it shows), else by reading ``"<image> RECIST"`` with the same pairing rules.
    """
    from napari_recist_seg.annotation import AnnotationSession, spacing_from_scale

    if annotator is not None:
        # binding_for unwraps napari's plugin proxies (id() of a proxy changes per access).
        binding = annotator.binding_for(image_layer) if hasattr(annotator, "binding_for") else None
        if binding is not None and binding.alive():
            return list(binding.session.recists())
    name = f"{image_layer.name}{RECIST_SUFFIX}"
    if name not in viewer.layers:
        return []
    shapes = viewer.layers[name]
    data = _image_data(image_layer)
    shape = tuple(data.shape[:-1]) if image_layer.rgb else tuple(data.shape)
    if len(shape) not in (2, 3):
        return []
    session = AnnotationSession(
        shape[-2:], n_slices=shape[0] if len(shape) == 3 else None,
        spacing=spacing_from_scale(image_layer.scale, spacing_stated(image_layer)),
    )
    session.sync(_observe_lines(shapes))
    return list(session.recists())


def spacing_stated(layer) -> bool | None:
    """What the image's reader says of its spacing: True (stated by the file, so a scale
    of ones is 1 mm), False (not known), ``None`` (not said: a scale of ones is unknown)."""
    known = (getattr(layer, "metadata", None) or {}).get("spacing_known")
    return None if known is None else bool(known)


def curated_flag(layer) -> bool:
    from napari_recist_seg.curation import CURATED_KEY

    return bool((getattr(layer, "metadata", None) or {}).get(CURATED_KEY, False))


def set_curated_flag(layer, value: bool) -> None:
    from napari_recist_seg.curation import CURATED_KEY

    layer.metadata[CURATED_KEY] = bool(value)


def image_layers(viewer) -> list:
    """Image layers that can carry RECIST (2D grey / RGB, 3D volumes)."""
    from napari.layers import Image

    out = []
    for layer in viewer.layers:
        # napari's ndim leaves out the colour axis of RGB images.
        if isinstance(layer, Image) and layer.ndim in (2, 3):
            out.append(layer)
    return out


def lesions_layer(viewer, image_layer):
    """The ``"<image> lesions"`` Labels layer of an image layer, or ``None``."""
    from napari.layers import Labels

    name = f"{image_layer.name}{LESIONS_SUFFIX}"
    if name in viewer.layers and isinstance(viewer.layers[name], Labels):
        return viewer.layers[name]
    return None


def annotated_image(viewer, image_layer, *, annotator=None, copy_labels: bool = True):
    """An :class:`~napari_recist_seg.curation.AnnotatedImage` from an image layer.

    Labels come from ``"<image> lesions"`` (copied, so that painting while a job runs
    does not change what it trains on); ``curated`` from that layer's metadata.
    """
    from napari_recist_seg.curation import AnnotatedImage

    labels_layer = lesions_layer(viewer, image_layer)
    labels = None
    if labels_layer is not None:
        labels = np.array(labels_layer.data, copy=True) if copy_labels else np.asarray(labels_layer.data)
    scale = tuple(float(s) for s in image_layer.scale)
    spacing = None if all(abs(s - 1.0) < 1e-12 for s in scale) else scale
    return AnnotatedImage(
        name=image_layer.name,
        image=np.asarray(_image_data(image_layer)),
        recists=layer_recists(viewer, image_layer, annotator),
        labels=labels,
        curated=labels_layer is not None and curated_flag(labels_layer),
        spacing=spacing,
        source=_source_path(image_layer),
    )
