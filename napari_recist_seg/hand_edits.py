"""Hand corrections of lesion masks: which lesions a paint touched, and their new measures.

The annotator's Labels layer is painted, erased and filled by hand; each stroke is a
napari history item (a list of ``(indices, old values, new value)`` atoms). These pure
functions turn such an edit into "lesions 2 and 3 changed" and measure a lesion on the
mask as it now is (area, mask-measured long / short axes, bounding box), so that the
table and the exports show what the user sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from napari_recist_seg.recist import Recist, RecistError, recist_from_mask

__all__ = [
    "MaskMeasure",
    "as_label_image",
    "lesion_ids_of_edit",
    "lesions_in_label_image",
    "measure_lesion",
]

#: ``(slice or None, row0, col0, height, width)``, as in :mod:`annotation`.
Box = tuple


@dataclass
class MaskMeasure:
    """A lesion measured on its (hand-edited) mask."""

    area_px: int
    measured: Recist | None
    box: Box | None


def lesion_ids_of_edit(atoms: Iterable[Any]) -> set[int] | None:
    """Label values an edit replaced or wrote (0, the background, left out).

    ``None`` when the atoms are not in the expected ``(indices, old, new)`` form
    (callers then re-measure every lesion).

    >>> idx = (np.array([1, 2]), np.array([3, 4]))
    >>> sorted(lesion_ids_of_edit([(idx, np.array([0, 2]), 3)]))
    [2, 3]
    >>> sorted(lesion_ids_of_edit([(idx, np.array([2, 2]), 0)]))  # erased
    [2]

    napari's brush / fill / polygon atoms (``_MaskedPaintAtom``: ``slice_key``, ``mask``,
    ``old_values``, ``new_value``) are read by their field names.
    """
    ids: set[int] = set()
    try:
        for atom in atoms:
            if hasattr(atom, "old_values") and hasattr(atom, "new_value"):
                old, new = atom.old_values, atom.new_value
            else:
                _, old, new = atom
            ids.update(int(v) for v in np.unique(np.asarray(old)))
            ids.update(int(v) for v in np.unique(np.asarray(new)))
    except (TypeError, ValueError):
        return None
    ids.discard(0)
    return ids


def measure_lesion(
    labels: np.ndarray,
    lesion_id: int,
    slice_index: int | None = None,
    spacing: tuple[float, float] | None = None,
) -> MaskMeasure:
    """Area, mask-measured RECIST and box of ``lesion_id`` in a label plane or volume.

    Only the lesion's plane is read (its slice of a volume). The measured RECIST is in
    plane coordinates; ``None`` when the mask is empty or too small to measure.

    >>> lab = np.zeros((20, 20), np.int32); lab[5:10, 2:17] = 4
    >>> m = measure_lesion(lab, 4)
    >>> m.area_px, m.box, round(m.measured.long_length, 1)
    (75, (None, 5, 2, 5, 15), 14.6)
    """
    plane = np.asarray(labels[int(slice_index)] if slice_index is not None else labels)
    mask = plane == int(lesion_id)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return MaskMeasure(0, None, None)
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = mask[r0:r1, c0:c1]
    area = int(np.count_nonzero(crop))
    try:
        measured = recist_from_mask(crop, spacing=spacing, slice_index=slice_index, min_area=1)
        measured = measured.transformed((-r0, -c0), 1.0) if measured is not None else None
    except (RecistError, ValueError):
        measured = None
    return MaskMeasure(area, measured, (slice_index, r0, c0, r1 - r0, c1 - c0))


def lesions_in_label_image(labels: np.ndarray) -> list[int]:
    """The lesion ids (non-zero labels) of an imported label image, ascending.

    >>> lesions_in_label_image(np.array([[0, 3], [3, 1]]))
    [1, 3]
    """
    values = np.unique(np.asarray(labels))
    return [int(v) for v in values if v > 0]


def as_label_image(array: np.ndarray, plane_ndim: int = 2) -> np.ndarray:
    """A mask file's pixels as lesion labels: binary masks (0 / 255) become lesion 1.

    An RGB(A) mask counts as lesion wherever a channel is non-zero.

    >>> as_label_image(np.array([[0, 255], [255, 0]], np.uint8)).tolist()
    [[0, 1], [1, 0]]
    >>> as_label_image(np.array([[0, 2], [5, 0]])).tolist()
    [[0, 2], [5, 0]]
    """
    arr = np.asarray(array)
    if arr.ndim == plane_ndim + 1 and arr.shape[-1] in (3, 4):
        arr = (arr[..., :3] != 0).any(axis=-1)
    if arr.dtype == bool:
        return arr.astype(np.uint16)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(arr)
    values = np.unique(arr)
    if values.size and values.min() < 0:
        raise ValueError("a label image has no negative values")
    if values[values > 0].size == 1:
        return (arr > 0).astype(np.uint16)
    return arr.astype(np.uint16)
