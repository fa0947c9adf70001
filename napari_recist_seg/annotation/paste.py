"""Pasting a lesion's mask into the label image, and clearing it (fancy indices, no copies)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Box", "clear_indices", "lesion_at", "paste_indices"]

Box = tuple[int | None, int, int, int, int]  # (slice, row0, col0, rows, cols)


def _box_slices(labels: np.ndarray, box: Box) -> tuple[Any, ...]:
    z, r0, c0, h, w = box
    sl = (slice(r0, r0 + h), slice(c0, c0 + w))
    return sl if z is None else (int(z),) + sl


def clear_indices(labels: np.ndarray, lesion_id: int, box: Box | None) -> tuple[np.ndarray, ...]:
    """Fancy indices of the pixels of ``lesion_id`` inside ``box`` (its last pasted mask)."""
    if box is None:
        return tuple(np.zeros(0, np.intp) for _ in range(labels.ndim))
    z, r0, c0, h, w = box
    region = np.asarray(labels[_box_slices(labels, box)])
    rr, cc = np.nonzero(region == lesion_id)
    rr = rr + r0
    cc = cc + c0
    if z is None:
        return rr, cc
    return np.full(rr.shape, int(z), np.intp), rr, cc


def lesion_at(labels: np.ndarray, row: float, col: float, slice_index: int | None = None) -> int:
    """The lesion id at pixel ``(row, col)`` (of slice ``slice_index`` of a volume);
    0 for background or a point outside the image.

    >>> lab = np.zeros((4, 4), np.uint8); lab[1:3, 1:3] = 5
    >>> lesion_at(lab, 1.6, 2.2), lesion_at(lab, 0.0, 3.0), lesion_at(lab, 9.0, 1.0)
    (5, 0, 0)
    """
    r, c = int(round(row)), int(round(col))
    plane = labels if slice_index is None else labels[int(slice_index)]
    h, w = plane.shape[-2:]
    if not (0 <= r < h and 0 <= c < w):
        return 0
    return int(plane[r, c])


def paste_indices(
    labels: np.ndarray, lesion_id: int, result: Any, slice_index: int | None
) -> tuple[tuple[np.ndarray, ...], Box]:
    """Fancy indices where ``result``'s mask goes, and its box.

    Pixels already owned by another lesion are left alone: a lesion never eats its
    neighbour's mask. Parts of the crop outside the image are dropped.
    """
    mask = np.asarray(result.mask, bool)
    r0, c0 = (int(v) for v in result.offset)
    rows, cols = labels.shape[-2:]
    h, w = mask.shape
    # Clip the crop to the image (the predictor already does; be safe for others).
    mr0, mc0 = max(0, -r0), max(0, -c0)
    mr1, mc1 = min(h, rows - r0), min(w, cols - c0)
    if mr1 <= mr0 or mc1 <= mc0:
        empty = tuple(np.zeros(0, np.intp) for _ in range(labels.ndim))
        return empty, (slice_index, max(r0, 0), max(c0, 0), 0, 0)
    mask = mask[mr0:mr1, mc0:mc1]
    box: Box = (slice_index, r0 + mr0, c0 + mc0, mr1 - mr0, mc1 - mc0)
    region = np.asarray(labels[_box_slices(labels, box)])
    ok = mask & ((region == 0) | (region == lesion_id))
    rr, cc = np.nonzero(ok)
    rr = rr + box[1]
    cc = cc + box[2]
    if slice_index is None:
        return (rr, cc), box
    return (np.full(rr.shape, int(slice_index), np.intp), rr, cc), box
