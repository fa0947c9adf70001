"""The annotator's "Correct" mode: corrective clicks on a lesion's mask.

A click (left button) inside or next to a lesion adds what the mask missed; a
Shift- or Alt-click removes what it wrongly covers. Each click re-runs
:func:`~napari_recist_seg.corrective.correct_lesion` from the mask the click series
started on, with all clicks of the series (so clicks accumulate, as in micro-sam /
nnInteractive). The corrected mask is written to the lesions layer and recorded as a
hand edit (the lesion is marked edited: never re-segmented without the user asking).
A series restarts when the mask changed otherwise (a brush stroke, a re-segmentation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_recist_seg.corrective import Click, correct_lesion
from napari_recist_seg.hand_edits import measure_lesion

__all__ = ["Corrector", "NEGATIVE_MODIFIERS"]

#: Holding one of these makes a click negative (remove).
NEGATIVE_MODIFIERS = ("Shift", "Alt")


class Corrector:
    """Corrective clicks for one :class:`~._widgets.annotator_binding.ImageBinding`."""

    def __init__(self, binding: Any) -> None:
        self.binding = binding
        self.active = False
        #: lesion id -> (mask the series started on, clicks so far, last result)
        self._series: dict[int, tuple[np.ndarray, list[Click], np.ndarray]] = {}
        self._installed = False

    def install(self) -> None:
        """Listen to mouse presses on the lesions layer (once)."""
        if not self._installed:
            self.binding.labels.mouse_drag_callbacks.append(self._on_press)
            self._installed = True

    def forget(self, lesion_id: int) -> None:
        """A lesion was re-segmented or deleted: its click series ends."""
        self._series.pop(int(lesion_id), None)

    def _on_press(self, layer: Any, event: Any) -> None:
        if not self.active or getattr(event, "type", "mouse_press") != "mouse_press":
            return
        if getattr(layer, "mode", "pan_zoom") != "pan_zoom":
            return  # painting / erasing: the brush handles it
        point = np.asarray(layer.world_to_data(event.position), float)
        mods = {str(getattr(m, "name", m)) for m in (getattr(event, "modifiers", ()) or ())}
        self.click(tuple(point), positive=not (mods & set(NEGATIVE_MODIFIERS)))

    def _slice_and_plane(self, point: tuple[float, ...]) -> tuple[int | None, float, float]:
        if self.binding.ndim == 3:
            return int(round(point[-3])), float(point[-2]), float(point[-1])
        return None, float(point[-2]), float(point[-1])

    def _lesion_at(self, labels_plane: np.ndarray, row: float, col: float, z: int | None) -> int | None:
        """The lesion under the click, else the nearest lesion mask on this plane."""
        r, c = int(round(row)), int(round(col))
        h, w = labels_plane.shape
        if 0 <= r < h and 0 <= c < w and labels_plane[r, c] > 0:
            return int(labels_plane[r, c])
        best, best_d = None, np.inf
        for les in self.binding.session.lesions.values():
            if z is not None and les.slice_index != z:
                continue
            rows, cols = np.nonzero(labels_plane == les.id)
            if rows.size:
                d = float(np.min((rows - row) ** 2 + (cols - col) ** 2))
                if d < best_d:
                    best, best_d = les.id, d
        return best

    def click(self, point: tuple[float, ...], *, positive: bool = True) -> str:
        """Correct the lesion at (or nearest to) ``point`` (layer data coordinates).

        Returns the message shown to the user.
        """
        b = self.binding
        z, row, col = self._slice_and_plane(point)
        data = b.labels.data
        labels_plane = np.asarray(data if z is None else data[z])
        h, w = labels_plane.shape
        if not (0 <= row < h and 0 <= col < w):
            return self._say("correct: click on the image", warn=True)
        lesion_id = self._lesion_at(labels_plane, row, col, z)
        if lesion_id is None:
            return self._say(
                "correct: no lesion mask here to correct: draw or click a lesion first", warn=True
            )
        les = b.session.lesions.get(lesion_id)
        if les is not None and les.committed:
            return self._say(f"lesion {lesion_id} is committed: uncommit it to correct it", warn=True)
        current = labels_plane == lesion_id
        start, clicks, last = self._series.get(lesion_id, (None, [], None))
        if start is None or last is None or not np.array_equal(last, current):
            start, clicks = current.copy(), []  # a new series on the mask as it is now
        clicks = [*clicks, Click(row, col, positive)]
        image = np.asarray(b.image_plane(z))
        out = correct_lesion(image, start, clicks, b.probability_plane(lesion_id, (h, w)))
        out &= (labels_plane == 0) | (labels_plane == lesion_id)  # other lesions keep theirs
        self._write(lesion_id, z, current, out)
        self._series[lesion_id] = (start, clicks, out)
        kind = "added" if positive else "removed"
        m = measure_lesion(b.labels.data, lesion_id, z, b.session.spacing)
        return self._say(
            f"lesion {lesion_id}: corrected ({len(clicks)} click(s); last {kind}); "
            f"area {m.area_px} px. Shift/Alt-click removes, click adds"
        )

    def _write(self, lesion_id: int, z: int | None, before: np.ndarray, after: np.ndarray) -> None:
        b = self.binding
        for mask, value in ((before & ~after, 0), (after & ~before, lesion_id)):
            idx = np.nonzero(mask)
            if idx[0].size:
                full = idx if z is None else (np.full(idx[0].shape, z), *idx)
                # Recorded below, not as a paint event; the binding's labels shadow stays
                # "before", the undo step of record_edits.
                with b._guard():
                    b.labels.data_setitem(full, value)
        b.record_edits([lesion_id])

    def _say(self, text: str, warn: bool = False) -> str:
        self.binding.message.emit(text, warn)
        return text
