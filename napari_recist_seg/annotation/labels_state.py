"""The lesion label image as an undo step keeps it (sparse), and how to put it back.

An undo step of the annotator must give back the Labels layer exactly as it was before
the undone action (a 3D lesion's propagated slices, a deleted lesion's hand-edited mask,
a corrective click). Lesion labels are sparse, so a step keeps only the non-zero voxels
(flat indices and values): a few kB per lesion rather than a copy of a CT volume per step.

>>> lab = np.zeros((3, 4), np.int32); lab[1, 1:3] = 2
>>> kept = LabelsState.of(lab)
>>> lab[1, 1:3] = 0; lab[2, 0] = 5
>>> [(v, idx[0].tolist(), idx[1].tolist()) for v, idx in kept.changes(lab)]
[(0, [2], [0]), (2, [1, 1], [1, 2])]
>>> sorted(kept.changed_ids(lab)), kept.changed_ids(kept.dense())
([2, 5], set())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = ["LabelsState"]


@dataclass(frozen=True)
class LabelsState:
    """The non-zero voxels of a label image: ``flat`` indices, their ``values``, ``shape``."""

    flat: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def of(cls, labels: np.ndarray) -> "LabelsState":
        arr = np.asarray(labels)
        flat = np.flatnonzero(arr)
        return cls(flat, arr.reshape(-1)[flat].copy(), tuple(arr.shape))

    def written(self, indices: tuple[np.ndarray, ...], value: int) -> "LabelsState":
        """This state with ``value`` written at the fancy ``indices``: cost by the
        number of lesion voxels, not by the image (a CT volume is tens of millions).

        >>> s = LabelsState.of(np.array([[0, 2], [2, 0]]))
        >>> s.written((np.array([0, 1]), np.array([1, 0])), 0).flat.tolist()
        []
        >>> s.written((np.array([1]), np.array([1])), 7).dense().tolist()
        [[0, 2], [2, 7]]
        """
        where = np.unique(np.ravel_multi_index(tuple(np.asarray(i) for i in indices), self.shape))
        keep = ~np.isin(self.flat, where)
        flat, values = self.flat[keep], self.values[keep]
        if int(value) != 0:
            flat = np.concatenate([flat, where])
            values = np.concatenate([values, np.full(where.size, value, self.values.dtype)])
            order = np.argsort(flat, kind="stable")
            flat, values = flat[order], values[order]
        return LabelsState(flat, values, self.shape)

    def dense(self, dtype: np.dtype | type = np.int64) -> np.ndarray:
        out = np.zeros(self.shape, dtype)
        out.reshape(-1)[self.flat] = self.values
        return out

    def changes(self, current: np.ndarray) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
        """``(value, fancy indices)`` writes turning ``current`` into this state, only
        where they differ (so a napari layer's history gets the real change)."""
        current = np.asarray(current)
        if tuple(current.shape) != self.shape:
            raise ValueError(f"labels are {current.shape}, the undo step kept {self.shape}")
        target = self.dense(current.dtype)
        differ = np.flatnonzero(target.reshape(-1) != current.reshape(-1))
        wanted = target.reshape(-1)[differ]
        for value in np.unique(wanted):
            yield int(value), np.unravel_index(differ[wanted == value], self.shape)

    def changed_ids(self, current: np.ndarray) -> set[int]:
        """Labels (0 left out) whose voxels differ between this state and ``current``.

        Cheap when nothing changed (the usual case: napari re-slices a layer on every
        step of a slider): this state's voxels are read where they are and the non-zero
        voxels of ``current`` are counted; the full comparison runs only when they differ.
        """
        current = np.asarray(current)
        if tuple(current.shape) != self.shape:  # a new array: every label it or this holds
            ids = {int(v) for v in np.unique(current)} | {int(v) for v in np.unique(self.values)}
            return ids - {0}
        flat = current.reshape(-1)
        if np.array_equal(flat[self.flat], self.values) and np.count_nonzero(flat) == self.flat.size:
            return set()
        target = self.dense(current.dtype).reshape(-1)
        differ = np.flatnonzero(target != flat)
        ids = {int(v) for v in np.unique(target[differ])} | {int(v) for v in np.unique(flat[differ])}
        ids.discard(0)
        return ids
