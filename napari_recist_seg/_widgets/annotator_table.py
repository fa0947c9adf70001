"""The RECIST annotator's lesion table and mask colours.

:class:`LesionTableMixin` is part of :class:`~._widgets.annotator.AnnotatorWidget`:
the per-lesion table (rows from the session's ``table_rows``), selecting a lesion
(and centring the view on it), stepping through the lesions, and colouring the masks
by lesion or by shape cluster. It uses the dock's ``table``, ``colour_combo``,
``binding``, ``bindings``, ``viewer`` and ``_say``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from qtpy.QtCore import QItemSelectionModel, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QTableWidgetItem

from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets._layout import elide
from napari_recist_seg._widgets.annotator_binding import ImageBinding
from napari_recist_seg._widgets.annotator_ui import CLUSTER_COLOURS, LESION_COLOURS, TABLE_TIPS
from napari_recist_seg._widgets.annotator_volume import extent_cell, volume_cell


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row_values(row: dict[str, Any], status: str) -> list[str]:
    """The texts of one table row (``status``: the row's status, or "committed")."""
    return [
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
        elide(status, 18),  # long "invalid: ..." texts: full text in the tooltip
        "edited" if row.get("edited") else "",
        volume_cell(row),
        extent_cell(row),
    ]


def _row_item(row: dict[str, Any], j: int, v: str, status: str) -> QTableWidgetItem:
    """Cell ``j`` of a row: its lesion id as data, the flag and failure colours."""
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
    return item


class LesionTableMixin:
    """The lesion table, lesion selection and mask colours of the annotator dock."""

    def _refresh_table(self) -> None:
        rows = self.binding.session.table_rows() if self.binding is not None else []
        selected = self.selected_lesions()
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(len(rows))
            self._set_headers(rows[0]["unit"] if rows else "px")
            for i, row in enumerate(rows):
                status = "committed" if row["committed"] else row["status"]
                for j, v in enumerate(_row_values(row, status)):
                    self.table.setItem(i, j, _row_item(row, j, v, status))
                if int(row["lesion"]) in selected:  # (not selectRow: see select_lesion)
                    self.table.selectionModel().select(
                        self.table.model().index(i, 0),
                        QItemSelectionModel.Select | QItemSelectionModel.Rows,
                    )
            self.table.setColumnHidden(1, self.binding is None or self.binding.ndim == 2)
            # "edited" only once some lesion is hand-edited (room for the lengths).
            self.table.setColumnHidden(11, not any(row.get("edited") for row in rows))
            is_3d = any(row.get("volume_unit") for row in rows)  # a 3D lesion, or pending
            for j in (12, 13):
                self.table.setColumnHidden(j, not is_3d)
        finally:
            self.table.blockSignals(False)

    def _set_headers(self, unit: str) -> None:
        area_unit = "mm²" if unit == "mm" else "px"
        self.table.setHorizontalHeaderLabels(
            [
                "#", "slice", f"L ({unit})", f"W ({unit})", "L\nmask", "W\nmask", "Δ",
                f"area\n({area_unit})", "cluster", "conf.", "status", "edited", "volume", "slices",
            ]
        )
        for j, tip in enumerate(TABLE_TIPS):
            header = self.table.horizontalHeaderItem(j)
            if header is not None:
                header.setToolTip(tip)

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
            # Each image starts further along the palette: its lesion 1 is not the
            # previous image's lesion 1 colour.
            start = self._colour_starts.setdefault(id(binding), len(self._colour_starts))
            start %= len(LESION_COLOURS)
            name = f"recist lesions {start}"
            if getattr(labels.colormap, "name", "") != name:
                palette = LESION_COLOURS[start:] + LESION_COLOURS[:start]
                labels.colormap = CyclicLabelColormap(colors=["transparent", *palette], name=name)
            return
        colours: dict[Any, Any] = {None: "transparent", 0: "transparent"}
        for les in binding.session.lesions.values():
            colours[les.id] = (
                "#9e9e9e" if les.cluster is None else CLUSTER_COLOURS[les.cluster % len(CLUSTER_COLOURS)]
            )
        labels.colormap = DirectLabelColormap(color_dict=colours)

    # -- stepping through the lesions -----------------------------------------------------------
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

