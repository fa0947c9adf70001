"""Measurement rows, and RECIST measured on a predicted mask against the ground truth.

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

import math
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.data.masks import read_mask
from napari_recist_seg.progress import CancelToken, describe_error
from napari_recist_seg.recist import Recist, RecistError, recist_from_mask

__all__ = [
    "MEASUREMENT_COLUMNS",
    "VOLUME_COLUMNS",
    "add_recist_errors",
    "measurement_row",
    "recist_errors",
    "volume_mm3_ml",
    "volume_values",
]

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


#: The 3D columns of ``measurements.csv`` (``segment --3d`` and the annotator's "3D
#: lesion"), computed by :func:`volume_values` from the lesion's label voxels.
VOLUME_COLUMNS: tuple[str, ...] = (
    "volume_voxels", "volume_mm3", "volume_ml", "z_first", "z_last", "n_slices", "extent_mm",
)


#: Decimals of the volume columns: 0.1 mm^3 and the same in mL (4 decimals), so that
#: ``volume_ml == volume_mm3 / 1000`` exactly as printed, and the extent to 0.001 mm.
#: The spacing of a NIfTI header is float32 (0.7 reads 0.699999988): without this a
#: volume prints as 2486.4001 mm^3 in the table, ``measurements.csv`` and the exports.
VOLUME_DECIMALS = {"volume_mm3": 1, "volume_ml": 4, "extent_mm": 3}


def volume_mm3_ml(voxels: int, spacing: Sequence[float] | None) -> tuple[float | None, float | None]:
    """``(mm^3, mL)`` of ``voxels`` at ``spacing`` (``z_mm, row_mm, col_mm``), rounded as
    :data:`VOLUME_DECIMALS` says; ``(None, None)`` when the spacing is not known.

    >>> volume_mm3_ml(4440, np.array([2.5, 0.7, 0.32], np.float32))  # 4440 * 0.56 mm^3
    (2486.4, 2.4864)
    """
    if spacing is None:
        return None, None
    mm3 = round(float(voxels) * float(np.prod([float(s) for s in spacing])), VOLUME_DECIMALS["volume_mm3"])
    return mm3, round(mm3 / 1000.0, VOLUME_DECIMALS["volume_ml"])


def volume_values(mask: np.ndarray, spacing: Sequence[float] | None) -> dict[str, Any]:
    """The :data:`VOLUME_COLUMNS` of one lesion's ``(Z, H, W)`` mask.

    ``spacing`` is ``(z_mm, row_mm, col_mm)``; ``None`` (unknown) leaves the mm / mL
    columns empty. The extent is the number of slices from the first to the last one
    holding the lesion, times the slice spacing. Volumes and extent are rounded here
    (:data:`VOLUME_DECIMALS`), the one place for the CLI's ``measurements.csv``, the
    annotator's table and its exports.

    >>> m = np.zeros((5, 4, 4), bool); m[1:4, :2, :2] = True
    >>> v = volume_values(m, (2.0, 0.5, 0.5))
    >>> v["volume_voxels"], v["volume_mm3"], v["z_first"], v["n_slices"], v["extent_mm"]
    (12, 6.0, 1, 3, 6.0)
    >>> volume_values(m, None)["volume_mm3"] is None
    True
    """
    mask = np.asarray(mask, bool)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    voxels = int(np.count_nonzero(mask))
    mm3, ml = volume_mm3_ml(voxels, spacing)
    n = int(zs[-1] - zs[0] + 1) if len(zs) else 0
    extent = None if spacing is None or not n else n * float(spacing[0])
    return {
        "volume_voxels": voxels,
        "volume_mm3": mm3,
        "volume_ml": ml,
        "z_first": int(zs[0]) if len(zs) else None,
        "z_last": int(zs[-1]) if len(zs) else None,
        "n_slices": n,
        "extent_mm": None if extent is None else round(extent, VOLUME_DECIMALS["extent_mm"]),
    }


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


def recist_errors(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Long / short axis error of a predicted mask against the ground truth (2D).

    Both masks are measured like a reader would
    (:func:`~napari_recist_seg.recist.recist_from_mask`, largest component); the
    errors are absolute differences of the long (``long_error``) and short
    (``short_error``) diameters, in mm with ``spacing`` ``(row_mm, col_mm)``, else px.
    NaN when either mask has no measurable lesion or the masks are volumes.

    Two 6-pixel-high bars, 20 and 18 pixels long: the long axes (pixel-centre
    diagonals) are sqrt(19**2 + 5**2) and sqrt(17**2 + 5**2), 1.93 px apart.

    >>> g = np.zeros((30, 30), bool); g[12:18, 5:25] = True
    >>> p = np.zeros((30, 30), bool); p[12:18, 5:23] = True
    >>> round(recist_errors(p, g)["long_error"], 2)
    1.93
    """
    nan = {"long_error": math.nan, "short_error": math.nan}
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim != 2 or g.ndim != 2:
        return nan
    sp = tuple(float(s) for s in spacing) if spacing is not None and len(spacing) == 2 else None
    try:
        rp = recist_from_mask(p > 0, spacing=sp)
        rg = recist_from_mask(g > 0, spacing=sp)
    except RecistError:
        return nan
    if sp is not None:
        return {"long_error": abs(rp.long_length_mm - rg.long_length_mm),
                "short_error": abs(rp.short_length_mm - rg.short_length_mm)}
    return {"long_error": abs(rp.long_length - rg.long_length),
            "short_error": abs(rp.short_length - rg.short_length)}


def add_recist_errors(cases: list[dict[str, Any]], spacing: Sequence[float] | None = None,
                      cancel: CancelToken | None = None) -> None:
    """Add ``long_error`` / ``short_error`` to evaluation cases (with ``pred``/``gt`` paths)."""
    for case in cases:
        if cancel is not None and cancel.cancelled:
            return
        try:
            case.update(recist_errors(read_mask(case["pred"]), read_mask(case["gt"]), spacing))
        except Exception as exc:  # a metric extra never fails the evaluation
            case.update({"long_error": math.nan, "short_error": math.nan,
                         "recist_error_note": describe_error(exc)})
