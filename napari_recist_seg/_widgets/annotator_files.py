"""The RECIST annotator's files: export and import, with their dialogs.

:class:`FilesMixin` is part of :class:`~._widgets.annotator.AnnotatorWidget`: the RECIST
CSV (all annotated images, or the current one), the lesion masks and the
measurements out; a RECIST CSV or a label image in. A file that exists is never
overwritten silently (the user is asked: overwrite, save under a free name, cancel);
a failure is one message. It uses the dock's ``binding``, ``bindings``,
``_need_binding`` and ``_say``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets.annotator_binding import ImageBinding
from napari_recist_seg.data import read_image, read_recist_csv
from napari_recist_seg.hand_edits import as_label_image


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


class FilesMixin:
    """Export / import of the annotator dock (RECIST CSV, masks, measurements)."""

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
            if all_images:  # images opened with RECIST lines after the dock: theirs too
                self._adopt_annotated()
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
            labels = np.asarray(b.labels.data)
            # The file's geometry, so the masks overlay the scan in other viewers.
            affine = b.image.metadata.get("affine") if labels.shape == b.image.data.shape else None
            out = ann.export_masks(path, labels, spacing, if_exists=mode, affine=affine)
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
        items, kept = [], []
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
            kept.append(rec)
        b.add_recists(items)
        # Lesions exported as committed come back committed (the CSV's status column).
        b.apply(ann.restore_states(b.session, kept))
        self._say(f"imported {len(items)} lesions from {Path(path).name}")
        return len(items)

    def import_masks(self, path: str | Path) -> int:
        """Load a label image file into the current image's lesions layer; returns how many."""
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

