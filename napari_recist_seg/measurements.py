"""Measurement rows: one lesion's RECIST, drawn and measured on its mask (no I/O).

``recist-seg segment`` writes these rows to ``measurements.csv``
(:mod:`napari_recist_seg.jobs.segment`) and the annotator exports the same columns
(:mod:`napari_recist_seg.annotation`), so both files read alike.

>>> from napari_recist_seg.recist import Recist
>>> r = Recist([[10, 0], [10, 20]], [[5, 10], [15, 10]], spacing=(0.5, 0.5))
>>> row = measurement_row("a.png", 1, r, None, cluster=None, confidence=None, area_px=100,
...                       spacing=(0.5, 0.5))
>>> row["long_px"], row["long_mm"], row["area_mm2"], list(row) == list(MEASUREMENT_COLUMNS)
(20.0, 10.0, 25.0, True)
"""

from __future__ import annotations

from napari_recist_seg.recist import Recist

__all__ = ["MEASUREMENT_COLUMNS", "measurement_row"]

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "image",
    "lesion",
    "slice",
    "cluster",
    "confidence",
    "area_px",
    "area_mm2",
    "long_px",
    "short_px",
    "long_mm",
    "short_mm",
    "measured_long_px",
    "measured_short_px",
    "measured_long_mm",
    "measured_short_mm",
)


def measurement_row(
    image: str,
    lesion: int,
    recist: Recist,
    measured: Recist | None,
    *,
    cluster: int | None,
    confidence: float | None,
    area_px: int | None,
    spacing: tuple[float, float] | None,
) -> dict[str, object]:
    """One ``measurements.csv`` row (``MEASUREMENT_COLUMNS``): the drawn RECIST, the one
    measured on the mask, the area and the cluster; mm columns when the spacing is known.
    The annotator's measurement export uses it too, so both files agree."""
    m = measured
    area_mm2 = area_px * spacing[0] * spacing[1] if spacing is not None and area_px is not None else None
    return {
        "image": image,
        "lesion": lesion,
        "slice": "" if recist.slice_index is None else recist.slice_index,
        "cluster": cluster,
        "confidence": confidence,
        "area_px": area_px,
        "area_mm2": area_mm2,
        "long_px": recist.long_length,
        "short_px": recist.short_length,
        "long_mm": recist.long_length_mm,
        "short_mm": recist.short_length_mm,
        "measured_long_px": m.long_length if m is not None else None,
        "measured_short_px": m.short_length if m is not None else None,
        "measured_long_mm": m.long_length_mm if m is not None else None,
        "measured_short_mm": m.short_length_mm if m is not None else None,
    }
