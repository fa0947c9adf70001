"""Units of the annotator: napari layer scale -> spacing, lengths shown in mm or px."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["format_length", "spacing_from_scale"]


def spacing_from_scale(scale: Sequence[float], known: bool | None = None) -> tuple[float, float] | None:
    """In-plane spacing ``(row_mm, col_mm)`` from a napari layer scale, ``None`` if unknown.

    A scale of all ones is napari's default and means "unknown" (lengths in px), unless
    ``known`` is True: the image's file states its spacing (the reader's
    ``metadata["spacing_known"]``), and a 1 mm isotropic CT or MR is in mm. ``known``
    False: unknown whatever the scale.

    >>> spacing_from_scale((1.0, 1.0)) is None, spacing_from_scale((3.0, 0.7, 0.7))
    (True, (0.7, 0.7))
    >>> spacing_from_scale((1.0, 1.0, 1.0), known=True)
    (1.0, 1.0)
    """
    sc = tuple(float(s) for s in scale)
    if len(sc) < 2:
        raise ValueError(f"a scale needs at least two values, got {sc}")
    plane = sc[-2:]
    if known is False or (known is not True and all(abs(s - 1.0) < 1e-12 for s in sc)):
        return None
    if not all(math.isfinite(s) and s > 0 for s in plane):
        return None
    return plane


def format_length(px: float, spacing: tuple[float, float] | None, mm: float | None = None) -> str:
    """``'12.3 mm'`` when the spacing is known, else ``'12.3 px'``.

    >>> format_length(10.0, None), format_length(10.0, (0.5, 0.5), 5.0)
    ('10.0 px', '5.0 mm')
    """
    if spacing is not None and mm is not None:
        return f"{mm:.1f} mm"
    return f"{px:.1f} px"


def _segment_length(seg: np.ndarray, spacing: tuple[float, float] | None) -> tuple[float, float | None]:
    d = seg[1] - seg[0]
    px = float(np.hypot(d[0], d[1]))
    if spacing is None:
        return px, None
    dm = d * np.asarray(spacing)
    return px, float(np.hypot(dm[0], dm[1]))
