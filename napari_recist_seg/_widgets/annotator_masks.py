"""The annotator's lesion masks for one image: pasting results and hand edits.

:class:`MasksMixin` is part of :class:`~._widgets.annotator_binding.ImageBinding`:
it pastes a segmentation into the Labels layer (clearing the lesion's old mask),
keeps each lesion's last probability (for corrective clicks), and turns brush /
eraser / fill strokes and imported label images into edits of the session (area
and mask-measured L / W updated, a painted label with no lesion becomes one). It
uses the binding's ``session``, ``labels``, ``image``, ``ndim``, ``message``,
``changed``, ``apply``, ``alive`` and ``_guard``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from napari_recist_seg._widgets.annotator_layers import image_array
from napari_recist_seg.annotation import SegmentRequest, clear_indices, paste_indices
from napari_recist_seg.hand_edits import lesion_ids_of_edit, lesions_in_label_image, measure_lesion


class MasksMixin:
    """The binding's Labels layer: pasted results and hand edits."""

    def _clear_mask(self, lesion_id: int, box: Any) -> None:
        if self._clear_volume(lesion_id):  # a 3D lesion: every slice it spans
            return
        idx = clear_indices(self.labels.data, lesion_id, box)
        if idx[0].size:
            self._write_labels(idx, 0)  # not a hand edit

    def _paste(self, request: SegmentRequest, result: Any) -> None:
        les = self.session.lesions[request.lesion_id]
        self._clear_mask(les.id, les.box)
        idx, box = paste_indices(self.labels.data, les.id, result, les.slice_index)
        if idx[0].size:
            self._write_labels(idx, les.id)
        self.session.accept(request, result, box)
        prob = getattr(result, "probability", None)
        offset = getattr(result, "offset", None)
        if prob is not None and offset is not None:
            self._probabilities[les.id] = (tuple(int(v) for v in offset), np.asarray(prob))
        else:
            self._probabilities.pop(les.id, None)

    def image_plane(self, z: int | None) -> np.ndarray:
        """The image plane a lesion lies on (the whole 2D image, or slice ``z``)."""
        data = image_array(self.image)
        return np.asarray(data if z is None else data[z])

    def probability_plane(self, lesion_id: int, shape: tuple[int, int]) -> np.ndarray | None:
        """The model probability of a lesion's last segmentation on its plane, if any."""
        stored = self._probabilities.get(int(lesion_id))
        if stored is None:
            return None
        (r0, c0), prob = stored
        out = np.zeros(shape, np.float32)
        r1, c1 = min(shape[0], r0 + prob.shape[0]), min(shape[1], c0 + prob.shape[1])
        out[max(r0, 0):r1, max(c0, 0):c1] = prob[max(-r0, 0):r1 - r0, max(-c0, 0):c1 - c0]
        return out

    # -- hand edits of the masks -------------------------------------------------------
    def _on_paint(self, event: Any) -> None:
        """A brush / eraser / fill stroke ended: re-measure the lesions it touched."""
        if self._writing or self._closed:
            return
        ids = lesion_ids_of_edit(getattr(event, "value", None) or [])
        if ids is None:
            ids = set(lesions_in_label_image(self.labels.data)) | set(self.session.lesions)
        # napari emits ``paint`` before a fill / polygon writes its pixels: measure on
        # the next loop turn, when the layer holds the edit.
        if not self._edited_ids:
            QTimer.singleShot(0, self._flush_edits)
        self._edited_ids |= set(ids)

    def _on_labels_written(self, event: Any = None) -> None:
        """The layer was refreshed or its data set: if from code (not us, not a brush
        stroke, which ``paint`` reports), its changed labels are hand edits too. Checked
        on the next loop turn, once however many refreshes came (a slider step is one)."""
        if self._writing or self._closed or self._labels_check_scheduled:
            return
        self._labels_check_scheduled = True
        QTimer.singleShot(0, self._check_labels_written)

    def _check_labels_written(self) -> None:
        self._labels_check_scheduled = False
        if self._edited_ids or not self.alive():
            return  # a paint event's flush is due: it records the edit
        ids = self._labels_shadow.changed_ids(self.labels.data)
        if ids:
            self.record_edits(sorted(ids))

    def _flush_edits(self) -> None:
        ids, self._edited_ids = sorted(self._edited_ids), set()
        if ids and self.alive():
            self.record_edits(ids)

    def record_edits(self, ids: list[int]) -> None:
        """Store the masks of ``ids`` as painted; a label with no lesion becomes one.

        One undo step (the labels before it: the shadow, not yet refreshed); a label
        adopted as a new lesion is the undo step of its :meth:`add_recist`.
        """
        spacing = self.session.spacing
        if any(i in self.session.lesions for i in ids):
            self.session.push_edit_step(self._labels_shadow)
        adopted = []
        for lesion_id in ids:
            les = self.session.lesions.get(lesion_id)
            if les is not None:
                m = measure_lesion(self.labels.data, lesion_id, les.slice_index, spacing)
                self.session.record_edit(lesion_id, m.area_px, m.measured, m.box)
            else:
                adopted.append(lesion_id)
        if adopted:
            self._adopt_masks(adopted)
        self.remeasure_volumes(ids)  # a 3D label edited by hand: its volume as painted
        self._refresh_labels_shadow()
        self.message.emit(
            f"lesion(s) {', '.join(map(str, ids))}: mask edited by hand; area and mask L / W updated",
            False,
        )
        self.changed.emit()

    def _adopt_masks(self, ids: list[int]) -> list[int]:
        """Make lesions of labels painted with no lesion: RECIST measured on the mask."""
        made = []
        for lesion_id in ids:
            slices = [None] if self.ndim == 2 else [
                int(z) for z in np.flatnonzero((np.asarray(self.labels.data) == lesion_id).any(axis=(1, 2)))
            ]
            for z in slices[:1]:  # a volume label: its first slice carries the RECIST
                m = measure_lesion(self.labels.data, lesion_id, z, self.session.spacing)
                if m.measured is None:
                    continue
                out = self.session.add_recist(m.measured, lesion_id=lesion_id)
                out.segment = []  # the painted mask is the lesion's mask
                les = self.session.lesions.get(lesion_id)
                if les is None:
                    continue
                self.session.record_edit(lesion_id, m.area_px, m.measured, m.box)
                les.status = "done" if les.recist is not None else les.status
                self.apply(out)
                made.append(lesion_id)
                if len(slices) > 1:  # e.g. segment --3d labels: a 3D lesion, volume measured
                    self._volumes.add(lesion_id)
                    self._measure_volume(lesion_id)
        return made

    def import_masks(self, labels: np.ndarray) -> list[int]:
        """Load a label image (0 = background, k = lesion k) to continue editing.

        Lesions already here keep their masks: imported pixels go only where the layer
        is empty, and an imported label whose id is taken gets the next free id.
        """
        labels = np.asarray(labels)
        if labels.shape != tuple(self.labels.data.shape):
            raise ValueError(
                f"the mask is {'x'.join(map(str, labels.shape))} but the image is "
                f"{'x'.join(map(str, self.labels.data.shape))}"
            )
        target = np.asarray(self.labels.data)
        free = target == 0
        ids = []
        for value in lesions_in_label_image(labels):
            new_id = value
            if new_id in self.session.lesions or (target == new_id).any():
                new_id = max([0, *self.session.lesions, int(target.max())]) + 1
            idx = np.nonzero((labels == value) & free)
            if idx[0].size:
                with self._guard():  # the shadow stays "before": the adoption's undo step
                    self.labels.data_setitem(idx, new_id)
                ids.append(new_id)
        made = self._adopt_masks(ids)
        self._refresh_labels_shadow()
        return made

