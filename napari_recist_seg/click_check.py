"""Did a click find a lesion? Checks on a click-to-segment result before it is added.

The model always returns *some* mask for a click (its best candidate among circular
pseudo-RECIST); on plain skin or tissue that is a large, confident blob. These checks
refuse such a result with the reason, so the annotator says "no lesion found" rather
than adding a confident false lesion:

- the mask fills (nearly) all of its crop box, or most of the image: the network found
  no boundary;
- the mask hardly stands out from the ring of image around it (low contrast).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_recist_seg.click import _click_features, _region_contrast

__all__ = ["FILL_LIMIT", "IMAGE_LIMIT", "MIN_CONTRAST", "click_problem", "mask_contrast"]

#: A mask covering more than this fraction of its crop box has no boundary in it.
FILL_LIMIT = 0.9
#: ... or more than this fraction of the image plane (ISIC lesion clicks: at most 0.41;
#: a skin click on ISIC_0000019: 0.55).
IMAGE_LIMIT = 0.5
#: Below this contrast (difference of means over summed spreads) the mask does not
#: separate a lesion from its surroundings. Calibrated on 6 ISIC test-split images with
#: the default model: clicks at the expert mask's centre 0.95-2.39, clicks on the skin
#: corner farthest from it 0.38-0.97 (4 of 6 refused, no lesion refused).
MIN_CONTRAST = 0.6


def click_problem(plane: np.ndarray, result: Any, cfg: Any = None) -> str | None:
    """Why a click result is not a lesion, or ``None`` when it looks like one.

    Parameters
    ----------
    plane : np.ndarray
        The image plane clicked (grey ``(H, W)`` or RGB ``(H, W, 3)``).
    result : LesionResult
        ``mask`` (bool, its crop) and ``offset`` (crop top-left in the plane).
    cfg : object, optional
        The model's preprocessing config (its ``ct_window`` for CT); default: none.
    """
    mask = np.asarray(result.mask, bool)
    area = int(mask.sum())
    if area == 0:
        return "the mask is empty"
    h, w = plane.shape[:2]
    if area > IMAGE_LIMIT * h * w:
        return f"the mask covers {100 * area / (h * w):.0f}% of the image"
    if mask.size >= 64 and area > FILL_LIMIT * mask.size:
        return f"the mask fills {100 * area / mask.size:.0f}% of its box (no lesion border)"
    contrast = mask_contrast(plane, mask, tuple(int(v) for v in result.offset), cfg)
    if contrast < MIN_CONTRAST:
        return f"low contrast: the mask hardly differs from its surroundings ({contrast:.2f})"
    return None


def mask_contrast(plane: np.ndarray, mask: np.ndarray, offset: tuple[int, int], cfg: Any = None) -> float:
    """Contrast of a crop mask with the ring of image around it (``predict`` measure)."""
    h, w = plane.shape[:2]
    width = max(2, int(round(0.1 * max(mask.shape))))
    r0, c0 = max(0, offset[0] - width), max(0, offset[1] - width)
    r1 = min(h, offset[0] + mask.shape[0] + width)
    c1 = min(w, offset[1] + mask.shape[1] + width)

    class _Grey:  # 8-bit / RGB images need no CT window
        ct_window = (40.0, 400.0)

    feats = _click_features(plane[r0:r1, c0:c1], cfg if cfg is not None else _Grey())
    return float(_region_contrast(feats, (r0, c0), mask, offset, width))
