"""The annotator's segmentation worker for one image, and its click tool.

:class:`SegmentationMixin` is part of :class:`~._widgets.annotator_binding.ImageBinding`:
segmentation requests are queued (a newer request for a lesion replaces the older) and
run in one ``napari.qt.threading`` worker at a time, never in the GUI thread; results
are pasted only while their lesion is unchanged since the request. The click tool is a
Points layer: every point added asks the model for the lesion under it, and the RECIST
measured on its mask becomes a new lesion (unless :mod:`napari_recist_seg.click_check`
says it is no lesion). It uses the binding's ``session``, ``image``, ``ndim``,
``points``, ``message``, ``changed``, ``busy_changed``, ``apply``, ``alive``,
``ensure_points``, ``_paste``, ``_guard`` and ``_segmenter``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from napari_recist_seg._widgets.annotator_layers import image_array
from napari_recist_seg.annotation import ClickRequest, SegmentOutcome, SegmentRequest, lesion_at, run_requests
from napari_recist_seg.click_check import click_problem


class SegmentationMixin:
    """The binding's worker queue and click tool."""

    @property
    def busy(self) -> bool:
        """A sync, segmentation or click is scheduled, pending or running."""
        return (
            self._sync_scheduled
            or self._click_scheduled
            or self._worker is not None
            or bool(self._pending)
            or self._volume_worker is not None
            or bool(self._volume_queue)
        )

    def enqueue(self, requests: list[SegmentRequest | ClickRequest]) -> None:
        for r in requests:
            key = ("lesion", r.lesion_id) if isinstance(r, SegmentRequest) else ("click", r.token)
            self._pending[key] = r  # a newer request for a lesion replaces the older
        self.kick()

    def kick(self) -> None:
        """Start a worker for the pending requests if none is running and a segmenter is ready."""
        if self._worker is not None or not self._pending or self._closed:
            return
        segmenter = self.segmenter_for_image()  # this image's modality and CT window
        if segmenter is None:
            return
        from napari.qt.threading import create_worker

        requests = [
            r for r in self._pending.values()
            if not isinstance(r, SegmentRequest) or self.session.is_current(r)
        ]
        self._pending.clear()
        if not requests:
            return
        worker = create_worker(
            run_requests, segmenter, image_array(self.image), requests,
            _start_thread=False, _ignore_errors=True,
        )
        worker.yielded.connect(self._on_outcome)
        worker.finished.connect(self._on_worker_finished)
        worker.errored.connect(self._on_worker_error)
        self._worker = worker
        self.busy_changed.emit(True)
        worker.start()

    def _on_worker_finished(self) -> None:
        self._worker = None
        if self._pending:
            self.kick()
        else:
            self._write_colours()
            self._release_canvas()
            self.busy_changed.emit(False)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.message.emit(f"segmentation failed: {exc}", True)

    def _on_outcome(self, outcome: SegmentOutcome) -> None:
        if not self.alive():
            return
        req = outcome.request
        if isinstance(req, ClickRequest):
            self._on_click_outcome(outcome)
            return
        if not self.session.is_current(req):
            return  # the lesion was edited (or deleted) meanwhile: a newer request runs
        if outcome.error is not None:
            box = self.session.fail(req, outcome.error)
            if box is not False:
                self._clear_mask(req.lesion_id, box)
            self.message.emit(
                f"lesion {req.lesion_id}: segmentation failed ({outcome.error}); its lines are kept",
                True,
            )
            self._write_shapes()  # drawn red
        else:
            try:
                self._paste(req, outcome.result)
            except Exception as exc:  # noqa: BLE001 - a bad result must not lose the lines
                self.session.fail(req, str(exc))
                self.message.emit(f"lesion {req.lesion_id}: could not paste the mask ({exc})", True)
            else:
                self.message.emit(self.describe(req.lesion_id), False)
                self._after_mask(req.lesion_id)  # a committed "3D lesion" waits for it
        self.changed.emit()

    def describe(self, lesion_id: int) -> str:
        """One line about a segmented lesion: drawn and measured axes, area, cluster."""
        row = next((r for r in self.session.table_rows() if r["lesion"] == lesion_id), None)
        if row is None or row["long_drawn"] is None:
            return f"lesion {lesion_id}"
        unit = row["unit"]
        text = f"lesion {lesion_id}: L {row['long_drawn']:.1f} × W {row['short_drawn']:.1f} {unit}"
        if row["long_measured"] is not None:
            text += f"; mask L {row['long_measured']:.1f} × W {row['short_measured']:.1f}"
            if row["flag"]:
                text += f" (differs by {100 * row['disagreement']:.0f}%)"
        if row["area"] is not None:
            text += f", area {row['area']:.0f} {'mm²' if unit == 'mm' else 'px'}"
        if row["cluster"] is not None:
            conf = "" if row["confidence"] is None else f" ({row['confidence']:.2f})"
            text += f", cluster {row['cluster']}{conf}"
        return text

    # -- click tool --------------------------------------------------------------------
    def _on_points_data(self, event: Any) -> None:
        if self._writing or self._closed:
            return
        action = str(getattr(event, "action", "added"))
        if action != "added" or self._click_scheduled:
            return
        self._click_scheduled = True
        QTimer.singleShot(0, self._consume_points)

    def _consume_points(self) -> None:
        self._click_scheduled = False
        if self.points is None or not len(self.points.data):
            return
        pts = np.asarray(self.points.data, float)
        with self._guard():
            self.points.data = np.zeros((0, self.ndim))
        requests = []
        for p in pts:
            (row, col), z = (p[1:], int(round(p[0]))) if self.ndim == 3 else (p, None)
            here = lesion_at(np.asarray(self.labels.data), row, col, z) if self.labels is not None else 0
            if here:  # a second lesion there would hide under the first (paste never overlaps)
                self.message.emit(f"click: lesion {here} is already segmented here; use Correct to "
                                  "change its mask, or delete it first", True)
                continue
            self._click_token += 1
            requests.append(ClickRequest(self._click_token, (float(row), float(col)), z, self.session.spacing))
        if requests:
            self.message.emit("segmenting the clicked lesion…", False)
            self.enqueue(requests)

    def click(self, point: tuple[float, ...]) -> None:
        """Segment the lesion at ``point`` (layer data coordinates), as the click tool does."""
        layer = self.ensure_points()
        layer.add(np.asarray([point], float))

    def _on_click_outcome(self, outcome: SegmentOutcome) -> None:
        if outcome.error is not None:
            self.message.emit(f"click: {outcome.error}", True)
            return
        res = outcome.result
        recist = getattr(res, "measured", None) or getattr(res, "recist", None)
        if recist is None:
            self.message.emit("click: no lesion found there; draw the RECIST axes instead", True)
            return
        problem = self._click_problem(outcome, recist)
        if problem is not None:
            self.message.emit(
                f"click: no lesion found there ({problem}); nothing added. Click nearer the "
                "lesion's centre, or draw its RECIST axes",
                True,
            )
            return
        out = self.session.add_recist(recist.with_spacing(self.session.spacing))
        # The click result is the mask of this RECIST already: paste it, no second run.
        reqs, out.segment = out.segment, []
        self.apply(out)
        for req in reqs:
            try:
                self._paste(req, res)
            except Exception as exc:  # noqa: BLE001
                self.session.fail(req, str(exc))
        for req in reqs:
            self.message.emit("click: " + self.describe(req.lesion_id), False)
        self.changed.emit()

    def _click_problem(self, outcome: SegmentOutcome, recist: Any) -> str | None:
        """Why a click result is no lesion (:mod:`click_check`), for model results only."""
        res = outcome.result
        if not hasattr(res, "mask") or not hasattr(res, "offset"):
            return None
        image = image_array(self.image)
        z = getattr(outcome.request, "slice_index", None)
        plane = np.asarray(image[int(z)] if z is not None and self.ndim == 3 else image)
        cfg = getattr(self._segmenter(), "preprocess", None)
        try:
            return click_problem(plane, res, cfg)
        except Exception:  # noqa: BLE001 - a check must never lose a good result
            return None

