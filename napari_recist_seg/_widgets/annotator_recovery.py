"""The annotator's autosave and restore (the dock side of :mod:`annotation.recovery`).

:class:`RecoveryMixin` is part of :class:`~._widgets.annotator.AnnotatorWidget`. A
change of a bound image (``ImageBinding.changed``: a lesion drawn, segmented,
committed, corrected, deleted, undone) marks it dirty; :data:`AUTOSAVE_DELAY_MS`
later (a burst of changes is one write) its state is snapshotted in the GUI thread
and written in a worker thread. A write that fails warns once in the message line and
never raises. Binding an image with an entry whose lesions are not in its layers
shows "Restore unsaved annotations (N lesions, saved HH:MM)" and "Dismiss"; until the
user picks one, that image is not autosaved (its entry would be replaced by the
half-empty session); while a restore lands, neither. A pending autosave is written at
once before a layer leaves the viewer (the window closing clears the layers first). It
uses the dock's ``binding``, ``bindings``, ``viewer`` and ``_say``.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets.annotator_binding import ImageBinding
from napari_recist_seg._widgets.annotator_files import image_source_path
from napari_recist_seg.annotation import recovery

#: The autosave waits this long after the last change (drawing bursts are one write).
AUTOSAVE_DELAY_MS = 2000
#: Labels up to this size are copied in the GUI thread (~18 ms at 16 MB); bigger ones
#: (a full CT: 100 MB, ~120 ms) are read by the writer thread (see recovery.snapshot).
COPY_IN_GUI_BYTES = 16 << 20
# How often a restore checks whether its lesions' masks are in (then pastes the saved ones).
RESTORE_POLL_MS = 50


class _Relay(QObject):
    """Carries a worker thread's result into the GUI thread (a queued signal)."""

    done = Signal(object, object)  # (binding id, exception or None)


class RecoveryMixin:
    """Autosave of every bound image, and the restore offer (see the module docstring)."""

    def _init_recovery(self) -> None:
        self.recovery_root = recovery.recovery_root()
        self.autosaves = 0  # entries written (scripts, tests)
        self._autosave_dirty: set[int] = set()
        self._autosave_keys: dict[int, str] = {}
        self._autosave_warned = False
        self._autosave_in_flight = 0
        self._offers: dict[int, recovery.RecoveryEntry] = {}
        self._restoring: dict[int, tuple[ImageBinding, np.ndarray | None, list[int], set[int]]] = {}
        self._autosave_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recist-autosave")
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_autosaved)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.timeout.connect(self.autosave_now)
        self._restore_timer = QTimer(self)
        self._restore_timer.setInterval(RESTORE_POLL_MS)
        self._restore_timer.timeout.connect(self._finish_restores)
        with contextlib.suppress(Exception):  # a start never fails on the cache folder
            recovery.remove_old_entries(self.recovery_root)
        # napari's window closing clears the layers before any close event reaches the
        # dock (and then deletes the autosave timer): write the pending change first.
        self.viewer.layers.events.removing.connect(self._flush_before_removal)

    @property
    def autosave_pending(self) -> bool:
        """Whether an autosave is scheduled or being written."""
        return self._autosave_timer.isActive() or self._autosave_in_flight > 0

    # -- autosave --------------------------------------------------------------------
    def _recovery_key(self, b: ImageBinding) -> str:
        key = self._autosave_keys.get(id(b))
        if key is None:
            key = recovery.image_key(b.image.data, image_source_path(b.image), b.name)
            self._autosave_keys[id(b)] = key
        return key

    def _schedule_autosave(self, b: ImageBinding) -> None:
        if id(b) in self._offers or id(b) in self._restoring:
            return  # the user has not chosen yet / the restore is still landing
        self._autosave_dirty.add(id(b))
        self._autosave_timer.start(AUTOSAVE_DELAY_MS)

    def autosave_now(self, *, wait: bool = False) -> None:
        """Write the dirty images' entries (in the worker thread; ``wait``: before returning)."""
        dirty, self._autosave_dirty = self._autosave_dirty, set()
        futures = []
        for b in list(self.bindings.values()):
            if id(b) not in dirty or not b.alive():
                continue
            if id(b) in self._offers or id(b) in self._restoring:
                self._autosave_dirty.add(id(b))  # the entry is still the user's only copy
                continue
            try:
                data = b.labels.data
                snap = recovery.snapshot(self._recovery_key(b), b.session, data,
                                         image_source_path(b.image), b.name,
                                         copy_labels=np.asarray(data).nbytes <= COPY_IN_GUI_BYTES)
            except Exception as exc:  # noqa: BLE001 - autosave never breaks the dock
                self._on_autosaved(id(b), exc)
                continue
            try:
                futures.append(self._autosave_pool.submit(self._write, id(b), snap))
            except RuntimeError:  # the dock was closed: its worker is gone
                return
            self._autosave_in_flight += 1
        if wait:
            for future in futures:
                future.result()

    def _write(self, binding_id: int, snap: recovery.Snapshot) -> None:
        """Worker thread: write one entry, report back through the relay."""
        error: BaseException | None = None
        try:
            recovery.write_snapshot(self.recovery_root, snap)
        except Exception as exc:  # noqa: BLE001 - read-only / full disk, a foreign file...
            error = exc
        self._relay.done.emit(binding_id, error)

    def _on_autosaved(self, binding_id: int, error: Any) -> None:
        self._autosave_in_flight = max(0, self._autosave_in_flight - 1)
        if error is None:
            self.autosaves += 1
            return
        if not self._autosave_warned:
            self._autosave_warned = True
            self._say(f"autosave failed ({error}); your work is not backed up in "
                      f"{self.recovery_root}: export it (or set {recovery.ENV_VAR})", warn=True)

    def _flush_before_removal(self, event: Any = None) -> None:
        """A layer is about to leave the viewer (deleted, or the window closing): write
        the pending autosave now, while its image is still bound."""
        if self._autosave_timer.isActive():
            self._autosave_timer.stop()
            with contextlib.suppress(Exception):
                self.autosave_now(wait=True)

    def _close_recovery(self) -> None:
        """The dock closes: write what is not written yet, then stop the worker."""
        self._autosave_timer.stop()
        self._restore_timer.stop()
        with contextlib.suppress(Exception):
            self.viewer.layers.events.removing.disconnect(self._flush_before_removal)
        with contextlib.suppress(Exception):
            self.autosave_now()
        self._autosave_pool.shutdown(wait=True)

    # -- the restore offer -----------------------------------------------------------
    def _offer_recovery(self, b: ImageBinding) -> None:
        """Offer an entry of ``b``'s image whose lesions are not all in its layers."""
        try:
            entry = recovery.read_entry(self.recovery_root, self._recovery_key(b), b.labels.data.shape)
        except Exception:  # noqa: BLE001 - a broken cache folder offers nothing
            entry = None
        if entry is None or not entry.records or not (recovery.missing_lesions(entry, b.session)
                                                      or recovery.unrestored_edits(entry, b.session)):
            return
        self._offers[id(b)] = entry
        self._show_recovery_offer()
        if b is not self.binding:
            return
        self._say(f"{b.name}: {len(entry.records)} lesion(s) autosaved at {entry.saved_hhmm} hold work "
                  "the layers do not (lesions or hand-edited masks): Restore unsaved annotations, "
                  "or Dismiss (autosave of this image waits for your choice)")

    def _show_recovery_offer(self) -> None:
        entry = self._offers.get(id(self.binding)) if self.binding is not None else None
        if entry is not None:
            self.restore_button.setText(
                f"Restore unsaved annotations ({len(entry.records)} lesions, saved {entry.saved_hhmm})")
        self.restore_button.setVisible(entry is not None)
        self.dismiss_restore_button.setVisible(entry is not None)

    def dismiss_recovery(self) -> None:
        """Do not restore; the entry stays on disk until this image's next autosave."""
        b = self.binding
        if b is None or self._offers.pop(id(b), None) is None:
            return
        self._show_recovery_offer()
        self._say(f"{b.name}: autosave kept on disk until the next change replaces it")

    def restore_recovery(self) -> int:
        """Load the offered entry into the current image: lines, states, then masks.

        Returns how many lesions were restored: added, or given back their hand-edited
        masks (:func:`recovery.unrestored_edits`). The masks are pasted once the
        segmenter has answered for the restored lines (their results would overwrite them).
        """
        b = self.binding
        entry = self._offers.pop(id(b), None) if b is not None else None
        if b is not None and entry is not None:
            # Before any change below: its autosave must not replace the entry yet.
            self._restoring[id(b)] = (b, None, [], set())
        self._show_recovery_offer()
        if b is None or entry is None:
            return 0
        flat = b.ndim == 2
        missing = [rec for rec in recovery.missing_lesions(entry, b.session)
                   if (rec.recist.slice_index is None) == flat]
        edits = [rec for rec in recovery.unrestored_edits(entry, b.session)
                 if (rec.recist.slice_index is None) == flat]
        taken = set(b.session.lesions)
        b.add_recists([(rec.lesion, rec.recist) for rec in missing])
        b.apply(ann.restore_states(b.session, missing))
        # Masks only for lesions that got their saved id (not one taken by a lesion here).
        same_id = [int(rec.lesion) for rec in missing if int(rec.lesion) not in taken
                   and int(rec.lesion) in b.session.lesions] + [int(rec.lesion) for rec in edits]
        edited = {int(rec.lesion) for rec in missing + edits if "+edited" in (rec.status or "")}
        self._restoring[id(b)] = (b, entry.labels, same_id, edited)
        self._restore_timer.start()
        self._say(f"{b.name}: restored {len(missing) + len(edits)} lesion(s) autosaved at {entry.saved_hhmm}")
        return len(missing) + len(edits)

    def _finish_restores(self) -> None:
        for key, (b, labels, ids, edited) in list(self._restoring.items()):
            if not b.alive():
                del self._restoring[key]
            elif not b.busy:
                del self._restoring[key]
                self._paste_restored(b, labels, ids, edited)
        if not self._restoring:
            self._restore_timer.stop()

    def _paste_restored(self, b: ImageBinding, labels: np.ndarray | None, ids: list[int],
                        edited: set[int]) -> None:
        """Put the saved masks of ``ids`` in the layer. A lesion whose saved mask on its
        slice is not the segmenter's (hand-edited, or another model) is recorded as
        edited; one whose label spans slices is a 3D lesion again (volume measured)."""
        if labels is not None:  # a lesion with no saved pixel keeps the segmenter's mask
            ids = [i for i in ids if (labels == i).any()]  # (an entry written half-way)
        if labels is not None and ids:
            current = np.asarray(b.labels.data)
            region = np.isin(labels, ids) | np.isin(current, ids)
            target = np.where(np.isin(labels, ids), labels, 0).astype(current.dtype)
            differs = {i for i in ids if not np.array_equal(
                _on_slice(current, b, i) == i, _on_slice(target, b, i) == i)}
            for value in np.unique(target[region]):
                idx = np.nonzero(region & (target == value))
                with b._guard():  # not a hand stroke: the edits are recorded below
                    b.labels.data_setitem(idx, int(value))
            edited = edited | differs
            if b.ndim == 3:
                for i in ids:
                    if int((target == i).any(axis=(1, 2)).sum()) > 1:
                        b._volumes.add(i)  # as a propagation result would register it
                        b._measure_volume(i)
        if edited:
            b.record_edits(sorted(i for i in edited if i in b.session.lesions))
        self._schedule_autosave(b)
        b.changed.emit()
        if b is self.binding:
            self._say(f"{b.name}: restored {len(ids)} lesion mask(s) as autosaved")


def _on_slice(labels: np.ndarray, b: ImageBinding, lesion_id: int) -> np.ndarray:
    """The plane of ``labels`` that lesion ``lesion_id`` is drawn on (all of a 2D image)."""
    les = b.session.lesions.get(lesion_id)
    z = None if les is None else les.slice_index
    return labels if z is None or labels.ndim == 2 else labels[z]
