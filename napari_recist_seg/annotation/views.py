"""What the session shows: line labels, table rows, RECIST and measurement rows (a mixin)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_recist_seg.annotation.lesions import (
    DISAGREEMENT_THRESHOLD,
    FAILED,
    INVALID,
    OPEN,
    Lesion,
    LineView,
)
from napari_recist_seg.annotation.units import _segment_length
from napari_recist_seg.measurements import measurement_row
from napari_recist_seg.recist import Recist


class _SessionViews:
    """The read-only views of :class:`AnnotationSession` (see there)."""

    def _label_anchor(self, les: Lesion) -> np.ndarray:
        """Where napari puts a lesion's label: its long axis's upper-left corner (row, col)."""
        return self._plane_coords(self.lines[les.long_id]).min(axis=0)

    def _crowded_lesions(self) -> set[int]:
        """Lesions whose long label would run into another lesion's label on their slice.

        A label is ~40 % of the plane wide and ~6 % high at the zoom that shows the whole
        image (napari draws text at a fixed screen size): those get only ``"#id"`` (the
        table has their lengths), e.g. the tumours of the CT sample.
        """
        size = float(max(self.plane_shape))
        anchors = {les.id: (les.slice_index, self._label_anchor(les)) for les in self.lesions.values()}
        crowded: set[int] = set()
        for a, (sl_a, pa) in anchors.items():
            for b, (sl_b, pb) in anchors.items():
                if a != b and sl_a == sl_b:
                    d = np.abs(pa - pb)
                    if d[0] < 0.06 * size and d[1] < 0.4 * size:
                        crowded.add(a)
                        break
        return crowded

    def _lesion_label(self, les: Lesion, crowded: bool = False) -> str:
        """``"#3 L 27.7 × W 22.0 mm"``: one label per lesion, on its long axis.

        Both lengths sit in one label next to the long axis (two labels per lesion
        collide on small lesions: napari places every label at the same corner of its
        line's bounding box). An invalid pair (its axes do not cross, lie on two slices,
        ...) shows no lengths: they would read as a measurement (``"#3 invalid"``; the
        table's status says why). A ``crowded`` lesion shows ``"#3"`` only.
        """
        if les.short_id is not None and les.status == INVALID:
            return f"#{les.id} invalid"
        if crowded:
            return f"#{les.id}"
        long_px, long_mm = _segment_length(self._plane_coords(self.lines[les.long_id]), self.spacing)
        unit = self.unit
        long_v = long_mm if long_mm is not None else long_px
        if les.short_id is None:
            return f"#{les.id} {long_v:.1f} {unit}"
        short_px, short_mm = _segment_length(self._plane_coords(self.lines[les.short_id]), self.spacing)
        short_v = short_mm if short_mm is not None else short_px
        return f"#{les.id} L {long_v:.1f} × W {short_v:.1f} {unit}"

    def layer_lines(self) -> list[LineView]:
        """The lines as the layer should show them, in layer order."""
        owner = self._lesion_of_line()
        crowded = self._crowded_lesions()
        views = []
        for lid in self.order:
            coords = self.lines[lid]
            les = owner.get(lid)
            if les is None:
                views.append(LineView(lid, coords.copy(), -1, "", "", OPEN))
                continue
            axis = "" if les.short_id is None else ("long" if lid == les.long_id else "short")
            label = self._lesion_label(les, les.id in crowded) if axis != "short" else ""
            if les.committed:
                state = "committed"
            elif les.status in (INVALID, FAILED, OPEN):
                state = les.status
            else:
                state = "ok"  # pending or done: drawn the same
            views.append(LineView(lid, coords.copy(), les.id, axis, label, state))
        return views

    def _length_values(self, r: Recist | None) -> tuple[float | None, float | None]:
        if r is None:
            return None, None
        if self.spacing is not None:
            rr = r.with_spacing(self.spacing)
            return rr.long_length_mm, rr.short_length_mm
        return r.long_length, r.short_length

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per lesion (:data:`TABLE_COLUMNS`), lengths and area in mm / mm² or px.

        ``disagreement`` is the larger relative difference between the drawn and the
        mask-measured L and W; ``flag`` is set when it exceeds
        :data:`DISAGREEMENT_THRESHOLD`.
        """
        rows = []
        for les in sorted(self.lesions.values(), key=lambda les: les.id):
            ld, sd = self._length_values(les.recist)
            lm, sm = self._length_values(les.measured)
            dis = None
            if ld and sd and lm is not None and sm is not None:
                dis = max(abs(lm - ld) / ld, abs(sm - sd) / sd)
            area = None
            if les.area_px is not None:
                area = float(les.area_px)
                if self.spacing is not None:
                    area *= self.spacing[0] * self.spacing[1]
            status = les.status if not les.message else f"{les.status}: {les.message}"
            rows.append(
                {
                    "lesion": les.id,
                    "slice": les.slice_index,
                    "status": status,
                    "long_drawn": ld,
                    "short_drawn": sd,
                    "long_measured": lm,
                    "short_measured": sm,
                    "disagreement": dis,
                    "flag": bool(dis is not None and dis > DISAGREEMENT_THRESHOLD),
                    "area": area,
                    "cluster": les.cluster,
                    "confidence": les.confidence,
                    "committed": les.committed,
                    "unit": self.unit,
                    "edited": les.edited,
                    **_volume_cells(les),
                }
            )
        return rows

    def lesion_centre(self, lesion_id: int) -> tuple[float, ...]:
        """Centre of a lesion in layer data coordinates (``(z, row, col)`` for volumes)."""
        les = self.lesions[lesion_id]
        pts = np.vstack([self.lines[lid] for lid in les.line_ids])
        centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
        return tuple(float(v) for v in centre)

    def recists(self) -> list[tuple[int, Recist]]:
        """``(lesion id, snapped RECIST)`` of every valid lesion, by id."""
        return [
            (les.id, les.recist.with_spacing(self.spacing))
            for les in sorted(self.lesions.values(), key=lambda les: les.id)
            if les.recist is not None
        ]

    def measurement_rows(self, image: str) -> list[dict[str, Any]]:
        """Rows for ``measurements.csv`` (the columns ``recist-seg segment`` writes)."""
        rows = []
        for les_id, r in self.recists():
            les = self.lesions[les_id]
            m = les.measured.with_spacing(self.spacing) if les.measured is not None else None
            row = measurement_row(
                image, les_id, r, m, cluster=les.cluster, confidence=les.confidence,
                area_px=les.area_px, spacing=self.spacing,
            )
            rows.append(
                {**row, **(les.volume or {}), "status": les.status, "committed": les.committed,
                 "edited": les.edited}
            )
        return rows


def _volume_cells(les: Lesion) -> dict[str, Any]:
    """The table's 3D cells: volume in mm^3 when the spacing is known, else voxels;
    ``"pending"`` while the lesion is being propagated."""
    v = les.volume
    if v is None:
        return {"volume": None, "volume_unit": "pending" if les.want_volume else "",
                "z_first": None, "z_last": None, "n_slices": None}
    mm3 = v.get("volume_mm3")
    return {"volume": float(mm3) if mm3 is not None else int(v["volume_voxels"]),
            "volume_unit": "mm3" if mm3 is not None else "voxels",
            "z_first": v.get("z_first"), "z_last": v.get("z_last"), "n_slices": v.get("n_slices")}
