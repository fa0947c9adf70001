"""The "Train / fine-tune" dock: A1 / A1+L training and fine-tuning on curated masks.

Data: a dataset folder (what ``recist-seg train`` reads) or the layers in the viewer
(each image with its ``"<image> RECIST"`` lines and, optionally, its ``"<image>
lesions"`` masks). A Labels layer corrected by hand is marked *curated* with the
checkbox in the layer table (stored in the layer's metadata under
:data:`napari_recist_seg.curation.CURATED_KEY`).

- **Train** runs :func:`napari_recist_seg.training.train` (RECIST only, weak targets;
  curated masks too when "train on curated masks" is ticked).
- **Fine-tune on curated** runs :func:`napari_recist_seg.curation.fine_tune`: the
  curation is saved to disk first, some curated images are held out, the model
  starts from the active one, and the Dice before / after on the held-out images is
  shown.

Both run in a background worker (:class:`~._jobs.JobPanel`) with a live loss / Dice
plot; the best checkpoint and its ``train_log.json`` are written by the core, and
"Use this model" loads it into the RECIST annotator.
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path
from typing import Any

import napari
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidgetItem,
    QWidget,
)

from napari_recist_seg._widgets._common import (
    annotated_image,
    curated_flag,
    find_annotator,
    image_layers,
    layer_recists,
    lesions_layer,
    prepare_torch,
    set_curated_flag,
)
from napari_recist_seg._widgets._jobs import JobPanel
from napari_recist_seg._widgets._layout import scroll_layout
from napari_recist_seg._widgets._plot import PlotStyle, TrainingPlot
from napari_recist_seg._widgets.train_jobs import (  # noqa: F401 - warm_up / warmed_up re-exported
    _fine_tune_job,
    _train_folder_job,
    _train_layers_job,
    warm_up,
    warmed_up,
)
from napari_recist_seg._widgets.train_ui import ENCODERS, data_box, settings_box  # noqa: F401
from napari_recist_seg.annotation import free_path
from napari_recist_seg.curation import FineTuneResult, curation_conflicts, epoch_dict
from napari_recist_seg.jobs.common import InputError

__all__ = ["TrainWidget"]

PLUGIN = "napari-recist-seg"
ANNOTATOR = "RECIST annotator"


class TrainWidget(QWidget):
    """Dock widget: train A1 / A1+L, fine-tune on curated masks, watch the curves."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        prepare_torch()  # before any worker imports torch (see _common.prepare_torch)
        self.viewer = napari_viewer
        self.result: Any = None  # TrainResult or FineTuneResult of the last run
        self.checkpoint: Path | None = None
        self._updating = False
        self._use_choice: dict[str, bool] = {}  # "use" ticks the user changed

        layout = scroll_layout(self)  # fits a 1366 x 768 screen (scrolls)
        layout.addWidget(data_box(self))
        layout.addWidget(settings_box(self))
        buttons = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train on the RECIST of the data (weak supervision)")
        self.train_button.clicked.connect(self.start_training)
        self.finetune_button = QPushButton("Fine-tune on curated")
        self.finetune_button.setToolTip(
            "Start from the model above (the active one by default), train on the curated "
            "masks plus the RECIST of the other images; Dice before / after on held-out "
            "curated images"
        )
        self.finetune_button.clicked.connect(self.start_fine_tune)
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.finetune_button)
        layout.addLayout(buttons)

        self.jobs = JobPanel("Training")
        self.jobs.busy_changed.connect(self._busy)
        self.jobs.job_event.connect(self._on_job_event)
        self.jobs.job_finished.connect(self._on_finished)
        layout.addWidget(self.jobs)
        self.plot = TrainingPlot(PlotStyle.from_viewer(napari_viewer))
        layout.addWidget(self.plot, 1)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.summary)
        self.use_button = QPushButton("Use this model in the annotator")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.use_model)
        layout.addWidget(self.use_button)

        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self._source_changed()
        self.refresh_layers()
        # Import the training stack in the background while the user fills the form.
        QTimer.singleShot(0, warm_up)

    # -- UI -------------------------------------------------------------------------------

    def _init_changed(self) -> None:
        # Training from a model keeps its architecture, crop rule and clusters.
        scratch = self.init_model.choice() == "scratch"
        tip = "" if scratch else "kept from the model training starts from"
        for w in (self.mode, self.encoder, self.input_size, self.clusters):
            w.setEnabled(scratch)
            w.setToolTip(tip)
        if scratch:
            self._mode_changed()

    def _mode_changed(self) -> None:
        a1l = self.mode.currentData() == "a1l"
        self.clusters.setEnabled(a1l)
        self.aux_weight.setEnabled(a1l)

    def _source_changed(self) -> None:
        layers = self.from_layers.isChecked()
        self.folder.setVisible(not layers)
        self.layer_table.setVisible(layers)
        self.use_curated.setVisible(layers)
        self.refresh_button.setVisible(layers)
        if layers:
            self.refresh_layers()

    def _busy(self, busy: bool) -> None:
        self.train_button.setEnabled(not busy)
        self.finetune_button.setEnabled(not busy)
        if busy:
            self.use_button.setEnabled(False)

    # -- layer table ----------------------------------------------------------------------
    def _layers_changed(self, event: Any = None) -> None:
        self.refresh_layers()

    def refresh_layers(self) -> None:
        """Rebuild the table of image layers (RECIST count, curated flag)."""
        annotator = find_annotator(self.viewer)
        self._updating = True
        try:
            layers = image_layers(self.viewer)
            self.layer_table.setRowCount(len(layers))
            for row, layer in enumerate(layers):
                n = len(layer_recists(self.viewer, layer, annotator))
                labels = lesions_layer(self.viewer, layer)
                use = QTableWidgetItem()
                use.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
                ticked = self._use_choice.get(layer.name, n > 0)
                use.setCheckState(Qt.Checked if ticked else Qt.Unchecked)
                name = QTableWidgetItem(layer.name)
                name.setFlags(Qt.ItemIsEnabled)
                count = QTableWidgetItem(str(n))
                count.setFlags(Qt.ItemIsEnabled)
                count.setTextAlignment(Qt.AlignCenter)
                cur = QTableWidgetItem()
                if labels is not None:
                    cur.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
                    cur.setCheckState(Qt.Checked if curated_flag(labels) else Qt.Unchecked)
                else:
                    cur.setFlags(Qt.NoItemFlags)
                    cur.setToolTip("no lesions layer: nothing to curate")
                self.layer_table.setItem(row, 0, use)
                self.layer_table.setItem(row, 1, name)
                self.layer_table.setItem(row, 2, count)
                self.layer_table.setItem(row, 3, cur)
        finally:
            self._updating = False

    def _used_names(self) -> dict[str, bool]:
        out = {}
        for row in range(self.layer_table.rowCount()):
            use, name = self.layer_table.item(row, 0), self.layer_table.item(row, 1)
            if use is not None and name is not None:
                out[name.text()] = use.checkState() == Qt.Checked
        return out

    def _table_item_changed(self, item: QTableWidgetItem) -> None:
        if self._updating:
            return
        if item.column() == 0:
            name = self.layer_table.item(item.row(), 1).text()
            self._use_choice[name] = item.checkState() == Qt.Checked
            return
        if item.column() != 3:
            return
        name = self.layer_table.item(item.row(), 1).text()
        if name in self.viewer.layers:
            labels = lesions_layer(self.viewer, self.viewer.layers[name])
            if labels is not None:
                set_curated_flag(labels, item.checkState() == Qt.Checked)

    def set_curated(self, image_name: str, curated: bool = True) -> None:
        """Mark the lesions layer of ``image_name`` as curated (or not)."""
        labels = lesions_layer(self.viewer, self.viewer.layers[image_name])
        if labels is None:
            raise InputError(f"{image_name} has no lesions layer to mark curated")
        set_curated_flag(labels, curated)
        self.refresh_layers()

    def gather_images(self) -> list:
        """The ticked image layers as :class:`~napari_recist_seg.curation.AnnotatedImage` s."""
        annotator = find_annotator(self.viewer)
        used = self._used_names()
        images = []
        for layer in image_layers(self.viewer):
            if used.get(layer.name, False):
                images.append(annotated_image(self.viewer, layer, annotator=annotator))
        return images

    # -- settings -------------------------------------------------------------------------
    def train_settings(self) -> dict[str, Any]:
        """The form as keyword arguments of :class:`~napari_recist_seg.training.TrainConfig`.

        The config itself is built in the worker: importing the training stack (torch,
        segmentation-models-pytorch) takes seconds and must not freeze the viewer.
        """
        return {
            "mode": self.mode.currentData(),
            "epochs": self.epochs.value(),
            "batch_size": self.batch_size.value(),
            "aux_weight": self.aux_weight.value(),
            "n_clusters": self.clusters.currentData(),
            "target": self.target.currentData(),
            "val_fraction": self.val_fraction.value(),
            "device": self.device.device(),
            "encoder": self.encoder.currentText().strip() or "resnet18",
            "input_size": self.input_size.value(),
        }

    def active_model(self) -> Path | None:
        """The annotator's model checkpoint, ``None`` for the shipped default model."""
        annotator = find_annotator(self.viewer)
        seg = getattr(annotator, "segmenter", None) if annotator is not None else None
        path = getattr(seg, "path", None)
        return Path(path) if path else None

    def init_checkpoint(self, *, required: bool) -> Path | str | None:
        """Where training starts: ``None`` = from scratch, ``"default"`` = the shipped model."""
        choice = self.init_model.choice()
        if choice == "scratch":
            if not required:
                return None
            choice = "active"  # fine-tuning always starts from a model: the active one
            # ... and the "Start from" field says so (it said "From scratch", issue 13).
            self.init_model.set_choice("active")
        if choice == "checkpoint":
            path = self.init_model.checkpoint()
            if path is None or not path.exists():
                raise InputError(f"choose the checkpoint to start from (not found: {path})")
            return path
        if choice == "active":
            active = self.active_model()
            if active is not None:
                return active
        return "default"

    def output_folder(self) -> Path:
        out = self.output.path()
        if out is None:
            raise InputError("choose the output folder for the model")
        if (out / "config.json").exists():
            answer = QMessageBox.question(
                self, "Replace the model?",
                f"{out} already holds a model; training writes its best checkpoint there. "
                "Continue?",
            )
            if answer != QMessageBox.Yes:
                raise InputError(f"not replacing the model in {out}: choose another output folder")
        return out

    # -- running --------------------------------------------------------------------------
    def _start(self, job, message: str):
        self.plot.clear()
        self.summary.setText("")
        self.result = None
        self.checkpoint = None
        return self.jobs.run(job, on_result=self._show_result, start_message=message)

    def start_training(self):
        """Train with the form's settings (the Train button). Returns the worker or ``None``."""
        try:
            config = self.train_settings()
            init = self.init_checkpoint(required=False)
            out = self.output_folder()
            on_epoch = self.jobs.relay("epoch")
            if self.from_folder.isChecked():
                folder = self.folder.path()
                if folder is None or not folder.is_dir():
                    raise InputError(f"choose the dataset folder (not found: {folder})")
                job = functools.partial(_train_folder_job, folder, out, config, init, on_epoch)
            else:
                images = [im for im in self.gather_images() if im.recists]
                if not images:
                    raise InputError("no image layer with RECIST is ticked: draw RECIST with "
                                     "the annotator or open a RECIST CSV first")
                job = functools.partial(_train_layers_job, images, out, config, init, on_epoch,
                                        self.use_curated.isChecked())
        except (InputError, ValueError) as exc:
            self.jobs.show_error(str(exc))
            return None
        return self._start(job, "preparing the weak targets…")

    def start_fine_tune(self, *, overwrite: bool | None = None):
        """Fine-tune on the curated layers (the button). Returns the worker or ``None``.

        Existing curated files that would change are not replaced silently: the user is
        asked (``overwrite`` answers that question in scripts and tests; ``False``
        saves into a new folder).
        """
        try:
            config = self.train_settings()
            init = self.init_checkpoint(required=True)
            out = self.output_folder()
            images = [im for im in self.gather_images() if im.recists]
            if not any(im.curated for im in images):
                raise InputError("no curated image: correct masks in a lesions layer and tick "
                                 "'curated' in the table above")
            curated_dir = out / "curated"
            conflicts = curation_conflicts(images, curated_dir)
            if conflicts:
                if overwrite is None:
                    overwrite = self._ask_overwrite(conflicts)
                    if overwrite is None:
                        return None
                if not overwrite:
                    curated_dir = free_path(curated_dir)
        except (InputError, ValueError) as exc:
            self.jobs.show_error(str(exc))
            return None
        job = functools.partial(
            _fine_tune_job, images, out, config, init, curated_dir, bool(overwrite),
            self.jobs.relay("epoch"),
        )
        return self._start(job, f"saving the curated masks to {curated_dir}…")

    def _ask_overwrite(self, conflicts: list[Path]) -> bool | None:
        box = QMessageBox(self)
        box.setWindowTitle("Curated files exist")
        box.setText(f"{len(conflicts)} saved file(s) differ from the current layers, e.g. "
                    f"{conflicts[0]}.")
        replace = box.addButton("Replace them", QMessageBox.DestructiveRole)
        new = box.addButton("Save to a new folder", QMessageBox.AcceptRole)
        box.addButton(QMessageBox.Cancel)
        box.exec_()
        if box.clickedButton() is replace:
            return True
        if box.clickedButton() is new:
            return False
        return None

    def cancel(self) -> None:
        self.jobs.cancel()

    # -- results ---------------------------------------------------------------------------
    def _on_job_event(self, name: str, payload: Any) -> None:
        if name == "epoch":
            log = epoch_dict(payload)
            self.plot.add_epoch(log)

    def _show_result(self, result: Any) -> None:
        self.result = result
        train = result.train if isinstance(result, FineTuneResult) else result
        lines = []
        if train is not None:
            self.checkpoint = train.checkpoint
            if train.best_epoch is not None:
                self.plot.mark_best(train.best_epoch)
            dice = train.best_val_dice
            best = (f"best epoch {train.best_epoch}"
                    + (f", validation Dice {dice:.3f}" if dice is not None and math.isfinite(dice) else ""))
            state = "cancelled: " if train.cancelled else ""
            if isinstance(result, FineTuneResult):  # a fixed schedule: no epochs, no best one
                lines.append(f"{state}fine-tuned on {train.n_train} curated lesion(s); before / after below.")
            else:
                lines.append(f"{state}{train.epochs_run} epoch(s) on {train.n_train} lesions "
                             f"({train.n_val} for validation); {best}.")
            if train.checkpoint is not None:
                lines.append(f"Checkpoint (with train_log.json): {train.checkpoint}")
            else:
                lines.append("No checkpoint was written (cancelled before the first epoch ended).")
        if isinstance(result, FineTuneResult):
            lines.append(result.summary())
            lines.append(f"Curated masks saved in {result.saved.folder}")
        self.summary.setText("\n".join(lines))
        self.use_button.setEnabled(self.checkpoint is not None)

    def _on_finished(self, outcome) -> None:
        if outcome.status == "error":
            self.summary.setText("Training failed; see the message above. Checkpoints written "
                                 "before the failure are kept.")

    def use_model(self):
        """Load the trained checkpoint into the RECIST annotator (opened if needed)."""
        if self.checkpoint is None:
            return None
        annotator = find_annotator(self.viewer)
        if annotator is None:
            _, annotator = self.viewer.window.add_plugin_dock_widget(PLUGIN, ANNOTATOR)
        path = str(self.checkpoint)
        loading = f"Loading {self.checkpoint.name} into the annotator…"
        self.summary.setText(self.summary.text() + f"\n{loading}")
        # The annotator's last load request wins, even over its own default-model load;
        # the "Loading…" line gives way to the outcome.
        ended = functools.partial(self._model_loaded, Path(path), loading)
        return annotator.load_segmenter("checkpoint", path, on_done=ended)

    def _model_loaded(self, path: Path, loading: str, loaded: bool) -> None:
        """Replace the "Loading…" line by what came of it."""
        if loaded:
            outcome = f"The annotator now uses {path.name}."
        else:
            outcome = f"{path.name} was not loaded into the annotator (see its message)."
        with contextlib.suppress(RuntimeError):  # the dock may be gone
            self.summary.setText(self.summary.text().replace(loading, outcome))

