"""The "Bulk segment" dock: a folder of images + stored RECIST -> masks and measurements.

It runs :func:`napari_recist_seg.jobs.segment.run_segment`, the function behind
``recist-seg segment``, in a background worker, so the outputs are exactly the CLI's:
``OUT/<stem>.png``, ``<stem>_labels.png``, ``measurements.csv``, ``failures.csv``.
Finished images are skipped on the next run (resume) unless "Redo finished outputs"
is ticked; files that fail are listed with their reason and the run goes on.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import napari
from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_recist_seg._widgets._common import (
    LESIONS_SUFFIX,
    DeviceCombo,
    ModelPicker,
    PathPicker,
    open_case,
    prepare_torch,
)
from napari_recist_seg._widgets._jobs import JobPanel
from napari_recist_seg._widgets._layout import elide, scroll_layout  # noqa: F401
from napari_recist_seg.jobs.common import InputError

__all__ = ["BulkSegmentWidget", "RecistSource", "ResultRow"]


class RecistSource:
    """Where the RECIST come from (the combo's data values)."""

    FOLDER = "folder"  # recist.csv of the folder, else derived from its masks
    CSV = "csv"  # another RECIST CSV (the interchange format)
    DEEPLESION = "deeplesion"  # DeepLesion DL_info.csv
    MASKS = "masks"  # derived from masks/, even when a recist.csv exists

    LABELS = {
        FOLDER: "Folder's recist.csv (else derived from masks/)",
        CSV: "Another RECIST CSV…",
        DEEPLESION: "DeepLesion DL_info.csv…",
        MASKS: "Derived from masks/ (ignore recist.csv)",
    }


@dataclass
class ResultRow:
    """One line of the results list."""

    stem: str
    image_path: Path
    status: str  # "done", "failed", "pending"
    reason: str = ""
    mask_path: Path | None = None
    labels_path: Path | None = None

    def text(self) -> str:
        mark = {"done": "✓", "failed": "✗", "pending": "·"}[self.status]
        tail = f" — {self.reason}" if self.reason else ""
        return f"{mark} {self.stem}{tail}"


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.normcase(os.path.abspath(path))


class BulkSegmentWidget(QWidget):
    """Dock widget: segment every stored RECIST of a folder, with progress and resume."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        prepare_torch()  # before any worker imports torch
        self.viewer = napari_viewer
        self.rows: list[ResultRow] = []
        self.report = None

        self.input = PathPicker("dir", placeholder="dataset folder: images/, masks/, recist.csv")
        self.input.setToolTip(
            "A dataset folder: images/ (png, jpg, bmp, tif, nii, dcm), optional masks/ "
            "and recist.csv"
        )
        self.source = QComboBox()
        for key, label in RecistSource.LABELS.items():
            self.source.addItem(label, key)
        self.csv = PathPicker("file", placeholder="RECIST CSV or DL_info.csv",
                              file_filter="CSV files (*.csv);;All files (*)")
        self.model = ModelPicker(("default", "checkpoint"))
        self.output = PathPicker("dir", placeholder="output folder (masks + measurements.csv)")
        self.device = DeviceCombo()
        self.overwrite = QCheckBox("Redo finished outputs")
        self.overwrite.setToolTip("Unticked: images whose mask exists in the output are skipped (resume)")
        self.run_button = QPushButton("Segment folder")
        self.run_button.clicked.connect(self.start)

        form = QFormLayout()
        form.addRow("Images", self.input)
        form.addRow("RECIST", self.source)
        form.addRow("", self.csv)
        form.addRow("Model", self.model)
        form.addRow("Output", self.output)
        form.addRow("Device", self.device)
        form.addRow("", self.overwrite)

        self.jobs = JobPanel("Bulk segment")
        self.jobs.busy_changed.connect(self._busy)

        self.results_label = QLabel("Results (double-click to open in the viewer)")
        self.results_label.setWordWrap(True)
        self.results = QListWidget()
        self.results.setWordWrap(True)
        self.results.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.results.itemDoubleClicked.connect(self._open_item)
        self.results.setMinimumHeight(120)

        box = QGroupBox("Bulk segment")
        inner = QVBoxLayout(box)
        inner.addLayout(form)
        inner.addWidget(self.run_button)
        inner.addWidget(self.jobs)
        layout = scroll_layout(self)  # fits a 1366 x 768 screen (scrolls)
        layout.addWidget(box)
        layout.addWidget(self.results_label)
        layout.addWidget(self.results, 1)

        self.source.currentIndexChanged.connect(self._source_changed)
        self.input.changed.connect(self._suggest_output)
        self._source_changed()

    # -- form --------------------------------------------------------------------------
    def _source_changed(self) -> None:
        key = self.source.currentData()
        self.csv.setVisible(key in (RecistSource.CSV, RecistSource.DEEPLESION))

    def _suggest_output(self, text: str) -> None:
        # A sibling folder, never inside images/ or masks/ (run_segment refuses those).
        if text and not self.output.edit.text():
            folder = Path(text).expanduser()
            self.output.edit.setPlaceholderText(str(folder.parent / f"{folder.name}_segmented"))

    def output_folder(self) -> Path | None:
        out = self.output.path()
        if out is None and self.input.path() is not None:
            folder = self.input.path()
            out = folder.parent / f"{folder.name}_segmented"
        return out

    def _busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)

    # -- running -------------------------------------------------------------------------
    def job_arguments(self) -> dict:
        """The keyword arguments of ``run_segment`` from the form.

        Raises
        ------
        InputError
            A missing folder or file, with what to do about it.
        """
        folder = self.input.path()
        if folder is None:
            raise InputError("choose the folder of images to segment")
        if not folder.is_dir():
            raise InputError(f"the images folder does not exist: {folder}")
        out = self.output_folder()
        source = self.source.currentData()
        recist_csv = None
        if source in (RecistSource.CSV, RecistSource.DEEPLESION):
            recist_csv = self.csv.path()
            if recist_csv is None or not recist_csv.is_file():
                raise InputError(f"choose the RECIST CSV file (not found: {recist_csv})")
        model = None
        if self.model.choice() == "checkpoint":
            model = self.model.checkpoint()
            if model is None or not model.exists():
                raise InputError(f"choose the checkpoint to use (not found: {model})")
        return {
            "inputs": folder,
            "out": out,
            "recist_csv": recist_csv,
            "derive_from_masks": source == RecistSource.MASKS,
            "model": model,
            "device": self.device.device(),
            "overwrite": self.overwrite.isChecked(),
        }

    def start(self):
        """Start the run (the Run button). Returns the worker, or ``None`` on bad input."""
        try:
            args = self.job_arguments()
        except InputError as exc:
            self.jobs.show_error(str(exc))
            return None
        if args["overwrite"] and self._has_outputs(args["out"]):
            answer = QMessageBox.question(
                self, "Redo finished outputs?",
                f"{args['out']} already holds masks. Replace them?",
            )
            if answer != QMessageBox.Yes:
                return None
        self.results.clear()
        self.rows = []
        self._args = args
        job = functools.partial(_segment_job, **args)
        return self.jobs.run(job, on_result=self._show_report,
                             start_message="loading the model and reading the RECIST…")

    @staticmethod
    def _has_outputs(out: Path) -> bool:
        return out.is_dir() and any(p.suffix in (".png", ".gz") for p in out.iterdir())

    def cancel(self) -> None:
        self.jobs.cancel()

    # -- results -------------------------------------------------------------------------
    def _show_report(self, report) -> None:
        self.report = report
        self.rows = result_rows(self._args["inputs"], self._args["out"], report.failures)
        self.results.clear()
        red, grey = QColor("#ff6b6b"), QColor("#9aa0a6")
        for row in self.rows:
            item = QListWidgetItem(row.text())
            item.setData(Qt.UserRole, row)
            item.setToolTip(f"{row.image_path}\n{row.reason}" if row.reason else str(row.image_path))
            if row.status == "failed":
                item.setForeground(QBrush(red))
            elif row.status == "pending":
                item.setForeground(QBrush(grey))
            self.results.addItem(item)
        done = sum(r.status == "done" for r in self.rows)
        failed = sum(r.status == "failed" for r in self.rows)
        self.results_label.setText(
            f"Results: {done} segmented, {failed} failed, {len(self.rows) - done - failed} "
            f"not done — double-click to open; outputs in {self._args['out']}"
        )

    def _open_item(self, item: QListWidgetItem) -> None:
        row: ResultRow = item.data(Qt.UserRole)
        try:
            self.open_row(row)
        except Exception as exc:  # an unreadable file must not raise into Qt
            self.jobs.show_error(f"cannot open {row.image_path.name}: {exc}")

    def open_row(self, row: ResultRow):
        """Open ``row``'s image with its mask (labels when several lesions) in the viewer."""
        done = row.status == "done"
        several = done and row.labels_path is not None
        single = [(f"{row.stem}{LESIONS_SUFFIX}", row.mask_path)] if done and not several else []
        return open_case(self.viewer, row.image_path, name=row.stem, predictions=single,
                         labels_path=row.labels_path if several else None)


def result_rows(folder: Path, out: Path, failures) -> list[ResultRow]:
    """Per input image: done (its mask exists in ``out``), failed (with the reason) or not done."""
    from napari_recist_seg.data import scan_dataset

    reasons: dict[str, list[str]] = {}
    for file, reason in failures:
        reasons.setdefault(_key(file), []).append(reason)
    rows = []
    for item in scan_dataset(folder).items:
        mask = labels = None
        for ext in (".png", ".nii.gz"):
            if (out / f"{item.stem}{ext}").is_file():
                mask = out / f"{item.stem}{ext}"
                lab = out / f"{item.stem}_labels{ext}"
                labels = lab if lab.is_file() else None
                break
        why = "; ".join(reasons.get(_key(item.image_path), []))
        if mask is not None:
            status = "done"
        elif why:
            status = "failed"
        else:
            status = "pending"
        rows.append(ResultRow(item.stem, Path(item.image_path), status, why, mask, labels))
    known = {_key(r.image_path) for r in rows}
    for file, reason in failures:  # failures outside the dataset listing (e.g. the CSV)
        if _key(file) not in known:
            rows.append(ResultRow(Path(file).name, Path(file), "failed", reason))
            known.add(_key(file))
    return rows


def _segment_job(
    *,
    inputs: Path,
    out: Path,
    recist_csv: Path | None,
    derive_from_masks: bool,
    model: Path | None,
    device: str,
    overwrite: bool,
    progress=None,
    cancel=None,
):
    """Worker side: the same call ``recist-seg segment`` makes."""
    from napari_recist_seg.jobs.segment import run_segment

    if derive_from_masks:
        from napari_recist_seg.curation import write_derived_recist

        recist_csv = write_derived_recist(inputs, Path(out) / "recist_from_masks.csv")
    return run_segment(
        inputs, out, recist_csv=recist_csv, model=model, device=device,
        overwrite=overwrite, progress=progress, cancel=cancel,
    )
