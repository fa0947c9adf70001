"""Weak targets from RECIST: the ellipse, and its GrabCut refinement.

This module gathers the public names of two rooms: :mod:`napari_recist_seg.ellipse`
(``ellipse_mask``, ``ellipse_crop``, ``crop_box``) and :mod:`napari_recist_seg.grabcut`
(``grabcut_mask``, ``GrabCutResult``, ``to_uint8_rgb``);
``from napari_recist_seg.targets import X`` keeps working for each of them.

Both work inside a box around the measurement only (the cost and the memory depend on
the lesion, not on the image); the ellipse's construction from the two diameters is
described in :mod:`napari_recist_seg.ellipse`.

Examples
--------
>>> import math
>>> from napari_recist_seg.recist import Recist
>>> r = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]])
>>> m = ellipse_mask(r, (32, 64))
>>> m.shape, m.dtype.name, bool(m[10, 30]), bool(m[10, 10]), bool(m[10, 9])
((32, 64), 'bool', True, True, False)
>>> round(int(m.sum()) / (math.pi * 20 * 10), 2)  # area close to pi * a * b
1.0
"""

from __future__ import annotations

from napari_recist_seg.ellipse import EllipseMode, crop_box, ellipse_crop, ellipse_mask
from napari_recist_seg.grabcut import (
    GRABCUT_SEED,
    MAX_AREA_RATIO,
    MAX_BOX_FILL,
    MIN_AREA_RATIO,
    GrabCutResult,
    grabcut_mask,
    to_uint8_rgb,
)

__all__ = [
    "GRABCUT_SEED",
    "MAX_AREA_RATIO",
    "MAX_BOX_FILL",
    "MIN_AREA_RATIO",
    "EllipseMode",
    "GrabCutResult",
    "crop_box",
    "ellipse_crop",
    "ellipse_mask",
    "grabcut_mask",
    "to_uint8_rgb",
]
