"""The annotator's CT windows and "3D lesion" option (the Qt side; the logic is in
:mod:`napari_recist_seg.annotation.volume3d`).

:class:`VolumeMixin` is part of :class:`~._widgets.annotator_binding.ImageBinding`:
the image's modality and CT window (the contrast limits and the segmenter's input
windowing), and the 3D propagation of committed lesions in a ``napari.qt.threading``
worker, one lesion at a time (progress per slice, cancellable; a result for a lesion
changed meanwhile is dropped). :class:`RadiologyDockMixin` is part of the dock: the
window combo box (shown for CT only), the "3D lesion" checkbox (volumes only), the
progress line and its Cancel button.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets._common import spacing_stated
from napari_recist_seg._widgets.annotator_layers import image_array
from napari_recist_seg.hand_edits import measure_lesion
from napari_recist_seg.intensity import DEFAULT_WINDOW
from napari_recist_seg.progress import Cancelled, CancelToken

WINDOW_LABELS = {"soft_tissue": "soft tissue", "liver": "liver", "lung": "lung", "bone": "bone"}


class VolumeMixin:
    """The binding's modality, CT window and 3D lesions."""

    def _init_volumes(self) -> None:
        meta = getattr(self.image, "metadata", None) or {}
        self.modality = ann.image_modality(image_array(self.image), meta.get("modality"),
                                           rgb=bool(self.image.rgb))
        self.window: str = DEFAULT_WINDOW
        #: The dock's "3D lesion" checkbox (volumes only).
        self.volume_mode = False
        self._volumes: set[int] = set()  # lesions whose label spans slices
        self._volume_queue: list[int] = []
        self._volume_worker: Any = None
        self._volume_cancel: CancelToken | None = None
        self._volume_lesion = -1

    def segmenter_for_image(self) -> Any:
        """The current segmenter reading this image by its modality and CT window."""
        return ann.with_intensity(self._segmenter(), self.modality, self.window)

    def set_window(self, window: str) -> None:
        """Show a CT preset and let the segmenter read the image through it (CT only);
        the uncommitted, unedited lesions are segmented again through it."""
        if not ann.window_choices(self.modality):
            raise ValueError(f"{self.name} is not CT ({self.modality}): no CT window")
        self.image.contrast_limits = ann.window_limits(window)
        if window != self.window:
            self.window = window
            self.resegment()

    # -- 3D lesions ------------------------------------------------------------------
    def start_volumes(self, ids: list[int]) -> None:
        """Propagate these committed lesions through the volume (3D mode, volumes only)."""
        if self.volume_mode:
            self.make_volumes(ids)

    def make_volumes(self, ids: list[int] | None = None) -> list[int]:
        """Propagate committed lesions through the volume now, 3D mode or not (the dock's
        "Make 3D": lesions committed before "3D lesion" was ticked). ``None`` or ``[]``:
        every committed lesion that is not 3D yet. A lesion that is 3D already is left as
        it is (its label may hold hand edits on other slices). Returns the ids queued."""
        if self.ndim != 3:
            return []
        lesions = self.session.lesions
        ids = ids or list(lesions)
        queued = [i for i in ids if i in lesions and lesions[i].committed and lesions[i].volume is None]
        for lesion_id in queued:
            lesions[lesion_id].want_volume = True
            self._after_mask(lesion_id)
        self.changed.emit()
        return queued

    def _after_mask(self, lesion_id: int) -> None:
        """A lesion's slice mask is in: queue its 3D propagation if it waits for one."""
        les = self.session.lesions.get(lesion_id)
        if (les is None or not les.want_volume or not les.committed or les.status != "done"
                or lesion_id in self._volume_queue):
            return
        self._volume_queue.append(lesion_id)
        self._kick_volume()

    def _kick_volume(self) -> None:
        if self._volume_worker is not None or self._closed:
            return
        segmenter = self.segmenter_for_image()
        while self._volume_queue and segmenter is not None:
            request = self.session.volume_request(self._volume_queue.pop(0), self.labels.data)
            if request is not None:
                self._run_volume(segmenter, request)
                return

    def _run_volume(self, segmenter: Any, request: ann.VolumeRequest) -> None:
        from napari.qt.threading import create_worker

        cancel = CancelToken()
        lesion_id = request.lesion_id

        def progress(z: int, done: int) -> None:  # worker thread: a queued signal
            self.volume_progress.emit(f"3D: lesion {lesion_id}, slice {z} ({done} slices)")

        worker = create_worker(
            ann.propagate_request, segmenter, image_array(self.image), request,
            spacing=ann.volume_spacing(self.image.scale, spacing_stated(self.image)), progress=progress, cancel=cancel,
            _start_thread=False, _ignore_errors=True,
        )
        worker.returned.connect(lambda lesion: self._on_volume(request, lesion))
        worker.errored.connect(lambda exc: self._on_volume_error(request, exc))
        worker.finished.connect(self._on_volume_finished)
        self._volume_worker, self._volume_cancel = worker, cancel
        self._volume_lesion = lesion_id
        self.volume_progress.emit(f"3D: lesion {lesion_id}…")
        self.busy_changed.emit(True)
        worker.start()

    def cancel_volumes(self) -> None:
        """Stop the running 3D propagation (at its next slice) and drop the queue."""
        for lesion_id in [*self._volume_queue, *self._running_volume()]:
            les = self.session.lesions.get(lesion_id)
            if les is not None and les.volume is None:
                les.want_volume = False
        self._volume_queue.clear()
        if self._volume_cancel is not None:
            self._volume_cancel.cancel()
        self.changed.emit()

    def _running_volume(self) -> list[int]:
        return [] if self._volume_worker is None else [self._volume_lesion]

    def _on_volume(self, request: ann.VolumeRequest, lesion: Any) -> None:
        if not self.alive():
            return
        if not self.session.is_volume_current(request):
            self.message.emit(f"lesion {request.lesion_id}: 3D result dropped (the lesion "
                              "changed while it was computed)", False)
            return
        paste, clear = ann.volume_paste_indices(self.labels.data, request.lesion_id, lesion.mask)
        if clear[0].size:  # not a hand edit
            self._write_labels(clear, 0)
        if paste[0].size:
            self._write_labels(paste, request.lesion_id)
        if not np.array_equal(lesion.mask[request.z0], request.seed):  # the seed's blend won
            m = measure_lesion(self.labels.data, request.lesion_id, request.z0, self.session.spacing)
            self.session.set_slice_measure(request.lesion_id, m.area_px, m.measured, m.box)
        self._volumes.add(request.lesion_id)
        self._measure_volume(request.lesion_id)
        v = self.session.lesions[request.lesion_id].volume or {}
        self.message.emit(f"lesion {request.lesion_id}: 3D over slices {v.get('z_first')}–"
                          f"{v.get('z_last')}, {_volume_text(v)}", False)
        self.changed.emit()

    def _on_volume_error(self, request: ann.VolumeRequest, exc: BaseException) -> None:
        les = self.session.lesions.get(request.lesion_id)
        if les is not None and les.volume is None:
            les.want_volume = False
        if isinstance(exc, Cancelled):
            self.message.emit(f"lesion {request.lesion_id}: 3D cancelled (its slice mask is kept)", False)
        else:
            self.message.emit(f"lesion {request.lesion_id}: 3D failed ({exc})", True)
        self.changed.emit()

    def _on_volume_finished(self) -> None:
        self._volume_worker = self._volume_cancel = None
        self.volume_progress.emit("")
        self._kick_volume()
        if self._volume_worker is None and not self.busy:
            self.busy_changed.emit(False)

    def _measure_volume(self, lesion_id: int) -> None:
        spacing = ann.volume_spacing(self.image.scale, spacing_stated(self.image))
        self.session.set_volume(lesion_id, ann.measure_volume(self.labels.data, lesion_id, spacing))

    def remeasure_volumes(self, ids: Any = None) -> None:
        """The volume columns of 3D lesions as their labels now are (hand edits, spacing)."""
        for lesion_id in list(self._volumes if ids is None else ids):
            if lesion_id in self._volumes and lesion_id in self.session.lesions:
                self._measure_volume(lesion_id)

    def _clear_volume(self, lesion_id: int) -> bool:
        """Clear every voxel of a 3D lesion (its lines or mask were replaced); ``False``
        for a lesion on one slice."""
        if lesion_id not in self._volumes:
            return False
        self._volumes.discard(lesion_id)
        self.session.set_volume(lesion_id, None)
        idx = np.nonzero(np.asarray(self.labels.data) == int(lesion_id))
        if idx[0].size:
            self._write_labels(idx, 0)
        return True

    def _close_volumes(self) -> None:
        self._volume_queue.clear()
        if self._volume_cancel is not None:
            with contextlib.suppress(Exception):
                self._volume_cancel.cancel()


def _volume_text(v: dict[str, Any]) -> str:
    if v.get("volume_ml") is not None:
        return f"{float(v['volume_ml']):.2f} mL"
    return f"{int(v.get('volume_voxels') or 0)} voxels"


def volume_cell(row: dict[str, Any]) -> str:
    """The table's volume cell: mL when the spacing is known, else voxels."""
    if row.get("volume") is None:
        return "…" if row.get("volume_unit") == "pending" else ""
    if row.get("volume_unit") == "mm3":
        return f"{float(row['volume']) / 1000.0:.2f} mL"
    return f"{int(row['volume'])} vox"


def extent_cell(row: dict[str, Any]) -> str:
    """The table's slice extent cell: ``"40–52"``."""
    if row.get("z_first") is None:
        return ""
    return f"{row['z_first']}–{row['z_last']}"


class RadiologyDockMixin:
    """The dock's CT window and 3D rows (see the module notes)."""

    def _show_radiology(self) -> None:
        """Window presets for a CT image only; "3D lesion" enabled for volumes only."""
        b = self.binding
        choices = ann.window_choices(b.modality) if b is not None else []
        for w in (self.window_label, self.window_combo):
            w.setVisible(bool(choices))
        if choices:
            self.window_combo.blockSignals(True)
            self.window_combo.setCurrentIndex(max(self.window_combo.findData(b.window), 0))
            self.window_combo.blockSignals(False)
        is_volume = b is not None and b.ndim == 3
        self.volume_check.setEnabled(is_volume)
        self.volume_make_button.setEnabled(is_volume)
        if b is not None:
            b.volume_mode = is_volume and self.volume_check.isChecked()
        self._on_volume_progress("")

    def set_window(self, window: str) -> None:
        """Apply a CT window preset to the current image (display and model input)."""
        b = self._need_binding()
        if b is None:
            return
        try:
            b.set_window(window)
        except ValueError as exc:
            self._say(str(exc), warn=True)
            return
        idx = self.window_combo.findData(window)
        if idx >= 0 and self.window_combo.currentIndex() != idx:
            self.window_combo.setCurrentIndex(idx)
        self._say(f"{b.name}: CT window {WINDOW_LABELS.get(window, window)} "
                  f"({ann.window_limits(window)[0]:.0f} to {ann.window_limits(window)[1]:.0f} HU)")

    def _on_window_combo(self, index: int) -> None:
        key = self.window_combo.itemData(index)
        if key:
            self.set_window(key)

    def _on_volume_check(self, checked: bool) -> None:
        for b in self.bindings.values():
            b.volume_mode = bool(checked) and b.ndim == 3

    def _on_volume_progress(self, text: str) -> None:
        sender = self.sender()
        if sender is not None and sender is not self.binding:
            return  # another image's propagation: its own line when it is shown
        self.volume_status.setText(text)
        self.volume_cancel_button.setVisible(bool(text))

    def make_volumes(self) -> None:
        """Make the selected committed lesions 3D (every committed 2D lesion if none is
        selected), whether or not "3D lesion" is ticked."""
        b = self._need_binding()
        if b is None:
            return
        selected = self.selected_lesions()
        queued = b.make_volumes(selected)
        if queued:
            self._say(f"{b.name}: 3D propagation of lesion(s) {', '.join(map(str, queued))}")
        elif selected and all(b.session.lesions[i].volume is not None for i in selected
                              if i in b.session.lesions):
            self._say("Make 3D: the selected lesion(s) are 3D already", warn=True)
        elif selected:
            self._say("Make 3D: commit the selected lesion(s) first", warn=True)
        else:
            self._say("Make 3D: no committed 2D lesion to propagate", warn=True)

    def cancel_volumes(self) -> None:
        """Stop the 3D propagation of the current image."""
        if self.binding is not None:
            self.binding.cancel_volumes()
