"""Filling a mask's holes, as ``scipy.ndimage.binary_fill_holes`` does, fast.

``binary_fill_holes`` grows the background in from the border by repeated binary
dilation: about 9 ms for a 768 x 576 mask, and the click mode and the refinement fill
dozens of masks per lesion (a third of a click's time). One OpenCV flood fill from a
padded corner gives the same pixels (background 4-connected to the border stays
background, every other background pixel is a hole) in well under a millisecond.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["fill_holes"]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: a bool array equal to
    ``scipy.ndimage.binary_fill_holes(mask)`` (its default, 4-connected background).

    Parameters
    ----------
    mask : np.ndarray
        Any dtype; non-zero = foreground. 2D masks take the fast path; other
        dimensions go to SciPy.

    Returns
    -------
    np.ndarray
        bool, the shape of ``mask``.

    Examples
    --------
    >>> ring = np.zeros((7, 7), bool); ring[1:6, 1:6] = True; ring[3, 3] = False
    >>> bool(fill_holes(ring)[3, 3]), int(fill_holes(ring).sum())
    (True, 25)
    >>> cup = ring.copy(); cup[3, 1:3] = False  # the hole opens to the outside
    >>> bool(fill_holes(cup)[3, 3])
    False
    >>> corner = ring.copy(); corner[2, 2] = False; corner[1, 1] = False
    >>> bool(fill_holes(corner)[2, 2])  # touches the outside only diagonally: a hole
    True
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        from scipy import ndimage  # lazy: the CLI's cold start does not load SciPy

        return ndimage.binary_fill_holes(m)
    h, w = m.shape
    work = np.zeros((h + 2, w + 2), np.uint8)
    work[1:-1, 1:-1] = m != 0
    cv2.floodFill(work, None, (0, 0), 2, flags=4)
    return work[1:-1, 1:-1] != 2
