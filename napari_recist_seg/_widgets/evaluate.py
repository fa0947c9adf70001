"""The "Evaluate" dock: segment a validation set with one or two models and score them.

For each model, the job runs :func:`napari_recist_seg.jobs.segment.run_segment` into
``OUT/pred_<model>`` and then :func:`napari_recist_seg.jobs.evaluate.evaluate_folders`
against the ground-truth masks, the two functions behind ``recist-seg segment`` and
``recist-seg evaluate``: the numbers in the table are the command line's. The
long / short axis errors of the masks (:func:`napari_recist_seg.curation.recist_errors`)
are added per case.

The validation set is a dataset folder with ``masks/``, or the curated layers of the
viewer (saved first as a dataset folder under ``OUT``). Click a row to open that case
with the prediction filled and the ground truth as a contour; export CSV / JSON;
compare two models (e.g. A1 vs A1+L) case by case.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import napari
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_recist_seg._widgets._common import (
    DeviceCombo,
    ModelPicker,
    PathPicker,
    annotated_image,
    find_annotator,
    image_layers,
    open_case,
    prepare_torch,
)
from napari_recist_seg._widgets._jobs import JobPanel
from napari_recist_seg._widgets._layout import elide, scroll_layout, set_row_visible  # noqa: F401
from napari_recist_seg._widgets._plot import MetricPlot, PlotStyle
from napari_recist_seg._widgets.evaluate_table import (
    ALL_KEYS,
    COLUMNS,
    DISTANCE_KEYS,
    HIGHER_IS_BETTER,
)
from napari_recist_seg._widgets.evaluate_table import NumberItem as _NumberItem
from napari_recist_seg.annotation import free_path
from napari_recist_seg.curation import curation_conflicts, safe_name
from napari_recist_seg.data import scan_dataset
from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.jobs.common import InputError
from napari_recist_seg.jobs.compare import EvaluationRun, ModelRun, run_compare, score_predictions
from napari_recist_seg.jobs.compare import finite as _finite
from napari_recist_seg.metrics import summarize

__all__ = ["ALL_KEYS", "COLUMNS", "EvaluateWidget", "EvaluationRun", "ModelRun"]

class EvaluateWidget(QWidget):
    """Dock widget: per-case metrics of one or two models on a validation set."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        prepare_torch()  # before any worker imports torch
        self.viewer = napari_viewer
        self.outcome: EvaluationRun | None = None
        self._images: dict[str, Path] = {}

        box = self._build_form()
        export = self._build_results()
        view_row = self._build_table()
        layout = scroll_layout(self)  # fits a 1366 x 768 screen (scrolls)
        layout.addWidget(box)
        layout.addWidget(QLabel("Mean ± sd"))
        layout.addWidget(self.summary_table)
        layout.addLayout(view_row)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.plot, 1)
        layout.addLayout(export)
        self.source.currentIndexChanged.connect(self._source_changed)
        self._source_changed()
        self._mode_changed()

    def _build_form(self) -> QGroupBox:
        """The "Evaluate" box: models, validation set, predictions, output, the job panel."""
        self.model_a = ModelPicker(("default", "active", "checkpoint"))
        self.compare = QCheckBox("Compare with a second model (B)")
        self.model_b = ModelPicker(("checkpoint", "default", "active"))
        self.source = QComboBox()
        self.source.addItem("Folder with ground-truth masks", "folder")
        self.source.addItem("Curated layers in the viewer", "layers")
        self.folder = PathPicker("dir", placeholder="validation folder: images/, masks/ [recist.csv]")
        self.recist = QComboBox()
        self.recist.addItem("Folder's recist.csv (else derived from masks)", "folder")
        self.recist.addItem("Derived from the ground-truth masks", "masks")
        self.recist.setToolTip("Where the RECIST prompts come from: drawn ones, or simulated "
                               "from the ground truth as in the paper's HAM10000 protocol")
        self.spacing = QLineEdit()
        self.spacing.setPlaceholderText("optional: row_mm col_mm (distances in mm)")
        self.output = PathPicker("dir", placeholder="output folder (predictions per model)")
        # Score folders `recist-seg segment` already wrote, instead of segmenting again.
        self.use_predictions = QCheckBox("Score existing predictions (no segmenting)")
        self.pred_a = PathPicker("dir", placeholder="predictions of A (recist-seg segment --out)")
        self.pred_b = PathPicker("dir", placeholder="predictions of B")
        self.use_predictions.toggled.connect(self._mode_changed)
        self.compare.toggled.connect(self._mode_changed)
        self.device = DeviceCombo()
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(self.start)

        form = self._form = QFormLayout()
        form.addRow("Model A", self.model_a)
        form.addRow("", self.compare)
        form.addRow("Model B", self.model_b)
        form.addRow("Validation", self.source)
        form.addRow("", self.folder)
        form.addRow("RECIST", self.recist)
        form.addRow("", self.use_predictions)
        form.addRow("Predictions A", self.pred_a)
        form.addRow("Predictions B", self.pred_b)
        form.addRow("Spacing", self.spacing)
        form.addRow("Output", self.output)
        form.addRow("Device", self.device)
        box = QGroupBox("Evaluate")
        inner = QVBoxLayout(box)
        inner.addLayout(form)
        inner.addWidget(self.run_button)
        self.jobs = JobPanel("Evaluate")
        self.jobs.busy_changed.connect(lambda busy: self.run_button.setEnabled(not busy))
        inner.addWidget(self.jobs)
        return box

    def _build_results(self) -> QHBoxLayout:
        """The mean ± sd table, the plot and the export buttons (returned as a row)."""
        self.summary_table = QTableWidget(0, 1 + len(COLUMNS))
        self.summary_table.verticalHeader().setVisible(False)
        self.summary_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.summary_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.plot = MetricPlot(PlotStyle.from_viewer(self.viewer))
        export = QHBoxLayout()
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_json_button = QPushButton("Export JSON…")
        self.export_csv_button.clicked.connect(lambda: self._export_dialog("csv"))
        self.export_json_button.clicked.connect(lambda: self._export_dialog("json"))
        for b in (self.export_csv_button, self.export_json_button):
            b.setEnabled(False)
            export.addWidget(b)
        return export

    def _build_table(self) -> QHBoxLayout:
        """The "Show" / "Plot" pickers above the per-case table; the table itself."""
        view_row = QHBoxLayout()
        self.view = QComboBox()
        self.view.currentIndexChanged.connect(self._fill_table)
        self.metric = QComboBox()
        for key, header, _ in COLUMNS:
            self.metric.addItem(header, key)
        self.metric.currentIndexChanged.connect(self._update_plot)
        view_row.addWidget(QLabel("Show"))
        view_row.addWidget(self.view, 1)
        view_row.addWidget(QLabel("Plot"))
        view_row.addWidget(self.metric)

        self.table = QTableWidget(0, 1 + len(COLUMNS))
        self._set_headers()
        self.spacing.textChanged.connect(lambda _text: self._set_headers())
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setSortingEnabled(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.setToolTip("Click a case to open it: prediction filled, ground truth as a contour")
        self.table.cellClicked.connect(self._row_clicked)
        self.table.horizontalHeader().sectionClicked.connect(self._header_clicked)
        self.table.setMinimumHeight(160)
        return view_row

    # -- form ------------------------------------------------------------------------------
    def _source_changed(self) -> None:
        folder = self.source.currentData() == "folder"
        self.folder.setVisible(folder)
        self.recist.setEnabled(folder)

    def _mode_changed(self, *_args: object) -> None:
        """Existing predictions: their folders instead of the models, device and output."""
        scoring = self.use_predictions.isChecked()
        set_row_visible(self._form, self.pred_a, scoring)
        set_row_visible(self._form, self.pred_b, scoring and self.compare.isChecked())
        for w in (self.model_a, self.device, self.output):
            w.setEnabled(not scoring)
        self.model_b.setEnabled(self.compare.isChecked() and not scoring)
        self.run_button.setText("Score predictions" if scoring else "Evaluate")

    def _model_path(self, picker: ModelPicker, name: str) -> Path | None:
        choice = picker.choice()
        if choice == "checkpoint":
            path = picker.checkpoint()
            if path is None or not path.exists():
                raise InputError(f"choose the checkpoint of model {name} (not found: {path})")
            return path
        if choice == "active":
            annotator = find_annotator(self.viewer)
            path = getattr(getattr(annotator, "segmenter", None), "path", None)
            if not path:
                raise InputError(f"model {name}: the annotator has no model loaded (it is "
                                 "closed, or uses the ellipse / GrabCut); choose a checkpoint")
            return Path(path)
        return None

    def _labels(self) -> list[str]:
        a = f"A {self.model_a.label()}"
        if not self.compare.isChecked():
            return [a]
        b = f"B {self.model_b.label()}"
        return [a, b]

    def _set_headers(self) -> None:
        """Distance headers in mm when a spacing is given, else px."""
        try:
            unit = "px" if self.parse_spacing() is None else "mm"
        except InputError:
            unit = "px"
        heads = [f"{h} ({unit})" if k in DISTANCE_KEYS else h for k, h, _ in COLUMNS]
        for table, first in ((self.summary_table, ""), (self.table, "case")):
            table.setHorizontalHeaderLabels([first] + heads)

    def parse_spacing(self) -> tuple[float, ...] | None:
        text = self.spacing.text().replace(",", " ").split()
        if not text:
            return None
        try:
            values = tuple(float(t) for t in text)
        except ValueError as exc:
            raise InputError(f"spacing must be numbers (mm), got {self.spacing.text()!r}") from exc
        if len(values) not in (2, 3) or not all(v > 0 and math.isfinite(v) for v in values):
            raise InputError(f"spacing needs 2 (or 3) positive values in mm, got {values}")
        return values

    def job_arguments(self, *, replace_predictions: bool | None = None) -> dict | None:
        """The job's arguments from the form; ``None`` when the user declined."""
        if self.use_predictions.isChecked():
            return self._scoring_arguments()
        out = self.output.path()
        if out is None:
            raise InputError("choose an output folder for the predictions")
        spacing = self.parse_spacing()
        models = [self._model_path(self.model_a, "A")]
        if self.compare.isChecked():
            models.append(self._model_path(self.model_b, "B"))
        labels = self._labels()
        pred_dirs = [out / f"pred_{safe_name(label)}" for label in labels]
        curated = None
        if self.source.currentData() == "folder":
            dataset = self.folder.path()
            if dataset is None or not dataset.is_dir():
                raise InputError(f"choose the validation folder (not found: {dataset})")
            derive = self.recist.currentData() == "masks"
        else:
            annotator = find_annotator(self.viewer)
            curated = [
                im for im in (annotated_image(self.viewer, layer, annotator=annotator)
                              for layer in image_layers(self.viewer))
                if im.curated and im.recists
            ]
            if not curated:
                raise InputError("no curated layer with RECIST in the viewer: correct masks, "
                                 "tick 'curated' in the Train / fine-tune dock")
            dataset = out / "curated_validation"
            if curation_conflicts(curated, dataset):
                dataset = free_path(dataset)
            derive = False
        existing = [d for d in pred_dirs if d.is_dir() and any(d.iterdir())]
        if existing:
            if replace_predictions is None:
                answer = QMessageBox.question(
                    self, "Replace predictions?",
                    f"{existing[0]} holds predictions from an earlier evaluation. Replace them?",
                )
                replace_predictions = answer == QMessageBox.Yes
            if not replace_predictions:
                return None
        return {
            "dataset": dataset, "out": out, "models": list(zip(labels, models, pred_dirs)),
            "derive": derive, "device": self.device.device(), "spacing": spacing,
            "curated": curated,
        }

    def _scoring_arguments(self) -> dict:
        """Arguments of :func:`score_predictions`: the validation folder and prediction folders."""
        dataset = self.folder.path()
        if self.source.currentData() != "folder" or dataset is None or not dataset.is_dir():
            raise InputError(f"scoring predictions needs the validation folder (not found: {dataset})")
        pickers = [("A", self.pred_a)] + ([("B", self.pred_b)] if self.compare.isChecked() else [])
        predictions = []
        for name, picker in pickers:
            folder = picker.path()
            if folder is None or not folder.is_dir():
                raise InputError(f"choose the predictions folder of {name} (not found: {folder})")
            predictions.append((f"{name} {folder.name}", folder))
        return {"dataset": dataset, "predictions": predictions, "spacing": self.parse_spacing()}

    # -- running ----------------------------------------------------------------------------
    def start(self, *, replace_predictions: bool | None = None):
        """Run the evaluation (the button). Returns the worker, or ``None``."""
        try:
            args = self.job_arguments(replace_predictions=replace_predictions)
        except (InputError, ValueError) as exc:
            self.jobs.show_error(str(exc))
            return None
        if args is None:
            return None
        self._clear()
        scoring = "predictions" in args
        job = score_predictions if scoring else _evaluate_job
        return self.jobs.run(functools.partial(job, **args), on_result=self.show_outcome,
                             start_message="scoring…" if scoring else "loading the model…")

    def cancel(self) -> None:
        self.jobs.cancel()

    def _clear(self) -> None:
        self.outcome = None
        self.table.setRowCount(0)
        self.summary_table.setRowCount(0)
        self.view.clear()
        self.plot.message("per-case distribution appears here")
        for b in (self.export_csv_button, self.export_json_button):
            b.setEnabled(False)

    # -- results ----------------------------------------------------------------------------
    def show_outcome(self, outcome: EvaluationRun) -> None:
        self.outcome = outcome
        try:
            self._images = {it.stem: it.image_path for it in scan_dataset(outcome.dataset).items}
        except Exception:  # the table still shows; only opening cases needs the images
            self._images = {}
        self.view.blockSignals(True)
        self.view.clear()
        for i, run in enumerate(outcome.runs):
            if run.evaluation is not None:
                self.view.addItem(run.label, i)
        if len(outcome.runs) > 1 and all(r.evaluation is not None for r in outcome.runs):
            self.view.addItem(f"{outcome.runs[1].label} − {outcome.runs[0].label} (per case)", -1)
        self.view.blockSignals(False)
        self._set_headers()
        self._fill_summary()
        self._fill_table()
        for b in (self.export_csv_button, self.export_json_button):
            b.setEnabled(bool(self.view.count()))

    def _fill_summary(self) -> None:
        out = self.outcome
        rows: list[tuple[str, dict[str, Any], bool]] = []
        for run in out.runs:
            if run.evaluation is None:
                continue
            rows.append((f"{run.label} mean", run.evaluation.mean, False))
            rows.append((f"{run.label} sd", run.evaluation.sd, False))
        diffs = out.differences()
        if diffs:
            mean, sd = summarize(diffs)
            rows.append(("B − A mean", mean, True))
            rows.append(("B − A sd", sd, False))  # a spread: no sign
        self.summary_table.setRowCount(len(rows))
        bold = QFont()
        bold.setBold(True)
        for r, (name, values, is_diff) in enumerate(rows):
            head = QTableWidgetItem(name)
            head.setFont(bold)
            self.summary_table.setItem(r, 0, head)
            for c, (key, _, spec) in enumerate(COLUMNS, start=1):
                item = _NumberItem(values.get(key), ("+" + spec) if is_diff else spec)
                self.summary_table.setItem(r, c, item)
        # As tall as its rows: the summary is read at a glance, never scrolled.
        self.summary_table.resizeRowsToContents()
        height = self.summary_table.horizontalHeader().height() + 2 * self.summary_table.frameWidth()
        height += sum(self.summary_table.rowHeight(r) for r in range(len(rows)))
        self.summary_table.setFixedHeight(height + 2)

    def current_rows(self) -> list[dict[str, Any]]:
        """The per-case dicts the table shows (one model, or the B − A differences)."""
        if self.outcome is None or self.view.count() == 0:
            return []
        which = self.view.currentData()
        if which == -1:
            return self.outcome.differences()
        return list(self.outcome.runs[which].evaluation.cases)

    def _fill_table(self) -> None:
        rows = self.current_rows()
        is_diff = self.view.currentData() == -1
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for r, case in enumerate(rows):
            name = QTableWidgetItem(str(case["case"]))
            name.setData(Qt.UserRole, case["case"])
            self.table.setItem(r, 0, name)
            for c, (key, _, spec) in enumerate(COLUMNS, start=1):
                item = _NumberItem(case.get(key), ("+" + spec) if is_diff else spec)
                if is_diff and _finite(case.get(key)) and case[key] != 0:
                    better = (case[key] > 0) == (key in HIGHER_IS_BETTER)
                    item.setForeground(QColor("#59d65a") if better else QColor("#ff6b6b"))
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.AscendingOrder)
        self._update_plot()

    def table_values(self, key: str) -> dict[str, float]:
        """``{case: value}`` of one column as shown (for scripts and tests)."""
        col = 1 + [k for k, _, _ in COLUMNS].index(key)
        return {self.table.item(r, 0).data(Qt.UserRole): self.table.item(r, col).data(Qt.UserRole)
                for r in range(self.table.rowCount())}

    def _header_clicked(self, section: int) -> None:
        if section >= 1:
            self.metric.setCurrentIndex(section - 1)

    def _update_plot(self) -> None:
        if self.outcome is None:
            return
        key = self.metric.currentData()
        header = self.metric.currentText()
        values = {}
        for run in self.outcome.runs:
            if run.evaluation is not None:
                values[run.label] = [c.get(key, math.nan) for c in run.evaluation.cases]
        unit = ""
        if key in ("hd", "hd95", "avd", "centre_error", "long_error", "short_error"):
            ev = next((r.evaluation for r in self.outcome.runs if r.evaluation is not None), None)
            unit = f" ({ev.unit})" if ev is not None else ""
        self.plot.show_values(values, header + unit)

    def _row_clicked(self, row: int, column: int = 0) -> None:
        item = self.table.item(row, 0)
        if item is None:
            return
        try:
            self.open_case(item.data(Qt.UserRole))
        except Exception as exc:  # never raise into Qt's event loop
            self.jobs.show_error(f"cannot open {item.text()}: {exc}")

    def open_case(self, case: str):
        """Open ``case``: the image, the prediction(s) of the shown model(s), the ground truth."""
        if self.outcome is None:
            return None
        which = self.view.currentData()
        runs = self.outcome.runs if which == -1 else [self.outcome.runs[which]]
        image = self._images.get(case)
        if image is None:
            raise InputError(f"the image of case {case} is not in {self.outcome.dataset}")
        preds = [(f"{case} prediction {run.label}", run.by_case()[case]["pred"])
                 for run in runs if case in run.by_case()]
        gt = next(run.by_case()[case]["gt"] for run in runs if case in run.by_case())
        return open_case(self.viewer, image, name=case, predictions=preds, ground_truth=gt)

    # -- export -------------------------------------------------------------------------------
    def _export_dialog(self, kind: str) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, f"Export {kind.upper()}", str(self.output.path() or Path.home()),
            "CSV (*.csv)" if kind == "csv" else "JSON (*.json)",
        )
        if path:
            try:
                self.export(path, kind=kind)
            except OSError as exc:
                self.jobs.show_error(f"cannot write {path}: {exc}")

    def export(self, path: str | Path, *, kind: str | None = None) -> Path:
        """Write the results as CSV or JSON (by ``kind`` or the extension), atomically."""
        if self.outcome is None:
            raise InputError("nothing to export yet: run an evaluation first")
        path = Path(path)
        kind = kind or ("json" if path.suffix.lower() == ".json" else "csv")
        text = (json.dumps(self.outcome.to_dict(), indent=2) if kind == "json"
                else self.outcome.to_csv())
        atomic_write_text(path, text)
        self.jobs.set_status(f"exported {path}")
        return path


_evaluate_job = run_compare  # the job behind the dock; also ``recist-seg compare``
