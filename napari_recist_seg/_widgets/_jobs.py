"""One progress / cancel / error mechanism for every long job started from a dock widget.

:class:`JobPanel` is a small Qt panel (progress bar, elapsed time and ETA, Cancel
button, a failure list and an error line) that runs a *core* job function in a
``napari.qt.threading`` worker. The job is called as ``job(progress=..., cancel=...)``
with a :data:`~napari_recist_seg.jobs.common.ProgressCallback` and a
:class:`~napari_recist_seg.jobs.common.CancelToken`, exactly what the CLI passes, so the
widgets and ``recist-seg`` run the same code.

Threading: the job runs in a worker thread and calls ``progress`` there. The panel
never touches Qt widgets from that thread; the callback stores the latest event and
emits a queued Qt signal, and the GUI thread picks the newest event up. Bursts of
events are coalesced (a bulk run over 10 000 small files must not flood the event loop);
named events sent through :meth:`JobPanel.relay` (e.g. one per training epoch) are all
delivered, in order.

Examples
--------
In a widget::

    panel = JobPanel("Bulk segment")
    panel.run(functools.partial(run_segment, folder, out), on_result=self._show_report)
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_recist_seg.jobs.common import (
    Cancelled,
    CancelToken,
    ProgressCallback,
    ProgressEvent,
    describe_error,
)

# The composite-job progress mapping lives with the other progress primitives (a job
# outside Qt uses it too); re-exported here for the docks.
from napari_recist_seg.progress import phase_progress

__all__ = ["JobOutcome", "JobPanel", "format_duration", "phase_progress"]

#: The progress display is refreshed at most this often (seconds): each refresh repaints
#: part of the window, and a job may report thousands of steps per second.
MIN_DISPLAY_INTERVAL = 0.1

#: Signature of what :meth:`JobPanel.run` runs: ``job(progress=..., cancel=...)``.
Job = Callable[..., Any]


def format_duration(seconds: float | None) -> str:
    """Short human duration: ``"7 s"``, ``"2 min 05 s"``, ``"1 h 03 min"``.

    >>> format_duration(7.2), format_duration(125), format_duration(3790), format_duration(None)
    ('7 s', '2 min 05 s', '1 h 03 min', '')
    """
    if seconds is None:
        return ""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


@dataclass
class JobOutcome:
    """How a job ended: ``status`` is ``"ok"``, ``"cancelled"`` or ``"error"``."""

    status: str
    result: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Relay(QObject):
    """Lives in the GUI thread; signals emitted from the worker arrive queued."""

    progress_ready = Signal(int)  # job id; the event itself waits in JobPanel._pending
    event = Signal(int, str, object)  # job id, name, payload


class JobPanel(QWidget):
    """Progress bar, ETA, Cancel button and failure / error display for one job at a time.

    Signals
    -------
    busy_changed(bool)
        A job started (True) or ended (False); widgets disable their Run buttons.
    job_finished(JobOutcome)
        After the ``on_result`` / ``on_error`` callbacks ran.
    job_event(str, object)
        A named payload sent from the job through :meth:`relay`.
    """

    busy_changed = Signal(bool)
    job_finished = Signal(object)
    job_event = Signal(str, object)

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._title = title
        self._worker = None
        self._token: CancelToken | None = None
        self._job_id = 0
        self._lock = threading.Lock()
        self._pending: ProgressEvent | None = None
        self._t0 = 0.0
        self._last_shown = 0.0
        self._drain_scheduled = False
        self._last_event: ProgressEvent | None = None
        self._on_result: Callable[[Any], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None
        self.last_outcome: JobOutcome | None = None

        self._relay = _Relay(self)
        self._relay.progress_ready.connect(self._drain_progress)
        self._relay.event.connect(self._forward_event)

        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.bar.setFormat("idle")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop after the current item; finished outputs are kept")
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #ff6b6b;")
        self.error.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.error.hide()
        self.failures_label = QLabel("")
        self.failures = QListWidget()
        # One line per file (elided; the whole reason is in the tooltip): rows keep a
        # fixed height, so the list can be sized to its content.
        self.failures.setWordWrap(False)
        self.failures.setTextElideMode(Qt.ElideRight)
        self.failures.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.failures.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)
        self.failures_label.hide()
        self.failures.hide()

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.error)
        layout.addWidget(self.failures_label)
        layout.addWidget(self.failures)

    # -- state -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a job is running (until its result has been handled)."""
        return self._worker is not None

    @property
    def cancel_token(self) -> CancelToken | None:
        """The running job's token (``None`` when idle)."""
        return self._token

    @property
    def last_event(self) -> ProgressEvent | None:
        """The last progress event shown (GUI thread)."""
        return self._last_event

    def failure_texts(self) -> list[str]:
        """The failure list as shown, one ``"file: reason"`` per entry."""
        return [self.failures.item(i).text() for i in range(self.failures.count())]

    # -- running -----------------------------------------------------------------------
    def run(
        self,
        job: Job,
        *,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        start_message: str = "starting…",
    ):
        """Run ``job(progress=..., cancel=...)`` in a worker thread.

        ``on_result(result)`` runs in the GUI thread when the job returns (also when it
        returns a cancelled :class:`~napari_recist_seg.jobs.common.JobReport`);
        ``on_error(exc)`` when it raises (not for :class:`Cancelled`). A result or
        exception with ``failures`` (``(file, reason)`` pairs) fills the failure list.

        Returns the napari worker (already started).

        Raises
        ------
        RuntimeError
            If a job is already running in this panel.
        """
        from napari.qt.threading import create_worker

        if self.busy:
            raise RuntimeError("a job is already running; cancel it or wait for it to finish")
        self._job_id += 1
        job_id = self._job_id
        token = CancelToken()
        self._token = token
        self._on_result, self._on_error = on_result, on_error
        self._pending = None
        self._last_event = None
        self.last_outcome = None
        self._reset_display(start_message)

        progress = self._make_progress_callback(job_id)

        def work() -> Any:
            return job(progress=progress, cancel=token)

        # Errors are this panel's to show (one line + details): not re-raised into
        # napari's event loop, which would add a traceback dialog on top.
        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        # Bind the job id now: a late signal of an old job must not touch a new one.
        worker.returned.connect(lambda result, j=job_id: self._finish(j, "ok", result, None))
        worker.errored.connect(lambda exc, j=job_id: self._finish(j, "error", None, exc))
        self._worker = worker
        self._t0 = time.perf_counter()
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")
        self.busy_changed.emit(True)
        worker.start()
        return worker

    def relay(self, name: str) -> Callable[[Any], None]:
        """A thread-safe callable that delivers ``payload`` to :attr:`job_event` in the GUI thread.

        Every call is delivered, in order (use it for per-epoch logs, not per-pixel
        updates). Must be created before or during the job it belongs to.
        """
        job_id = self._job_id if self.busy else self._job_id + 1

        def send(payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the panel was deleted (viewer closed): drop it
                self._relay.event.emit(job_id, name, payload)

        return send

    def cancel(self) -> None:
        """Ask the running job to stop; it stops at its next check, keeping finished work."""
        if self._token is None or self._token.cancelled:
            return
        self._token.cancel()
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.status.setText(self.status.text() + "\ncancelling: finishing the current item…")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.cancel()
        super().closeEvent(event)

    # -- display helpers (GUI thread) -------------------------------------------------
    def show_failures(self, failures) -> None:
        """Replace the failure list with ``failures`` (``(file, reason)`` pairs or strings)."""
        self.failures.clear()
        for f in failures or ():
            self.add_failure(f)

    def add_failure(self, failure) -> None:
        """Append one failure (a ``(file, reason)`` pair or a string)."""
        if isinstance(failure, (tuple, list)) and len(failure) == 2:
            # The file name keeps the list readable; the full path is in the tooltip.
            text = f"{Path(str(failure[0])).name}: {failure[1]}"
            tip = f"{failure[0]}\n{failure[1]}"
        else:
            text = tip = str(failure)
        item = QListWidgetItem(text)
        item.setToolTip(tip)
        self.failures.addItem(item)
        n = self.failures.count()
        # As tall as up to four entries; more scroll.
        rows = sum(self.failures.sizeHintForRow(i) for i in range(min(n, 4)))
        self.failures.setFixedHeight(rows + 2 * self.failures.frameWidth() + 4)
        self.failures_label.setText(f"{n} failure{'s' if n != 1 else ''} (the rest went on):")
        self.failures_label.show()
        self.failures.show()

    def show_error(self, text: str, details: str = "") -> None:
        self.error.setText(text)
        self.error.setToolTip(details or text)
        self.error.show()

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def _reset_display(self, message: str) -> None:
        self.bar.setRange(0, 0)  # busy indicator until the first event says how many
        self.bar.setFormat("")
        self.status.setText(message)
        self.error.hide()
        self.error.setText("")
        self.failures.clear()
        self.failures.hide()
        self.failures_label.hide()

    # -- worker -> GUI ---------------------------------------------------------------
    def _make_progress_callback(self, job_id: int) -> ProgressCallback:
        def progress(event: ProgressEvent) -> None:
            # Worker thread: store the newest event; ask for one GUI update at a time.
            with self._lock:
                already = self._pending is not None
                self._pending = event
            if not already:
                with contextlib.suppress(RuntimeError):  # panel deleted
                    self._relay.progress_ready.emit(job_id)

        return progress

    def _drain_progress(self, job_id: int, *, now: bool = False) -> None:
        if job_id != self._job_id or self._worker is None:
            with self._lock:
                self._pending = None
            return
        wait = self._last_shown + MIN_DISPLAY_INTERVAL - time.perf_counter()
        if wait > 0 and not now:
            # Leave the event pending (the worker keeps replacing it with newer ones
            # without signalling) and show the newest one a little later.
            if not self._drain_scheduled:
                self._drain_scheduled = True
                QTimer.singleShot(int(wait * 1000) + 1, lambda j=job_id: self._scheduled_drain(j))
            return
        with self._lock:
            event, self._pending = self._pending, None
        if event is not None:
            self._last_shown = time.perf_counter()
            self._show_event(event)

    def _scheduled_drain(self, job_id: int) -> None:
        self._drain_scheduled = False
        self._drain_progress(job_id)

    def _show_event(self, event: ProgressEvent) -> None:
        self._last_event = event
        total = max(int(event.total), 0)
        if total == 0:
            self.bar.setRange(0, 0)
        else:
            self.bar.setRange(0, total)
            self.bar.setValue(min(max(int(event.done), 0), total))
            self.bar.setFormat(f"{100 * event.fraction:.0f}%")
        parts = [f"{event.done}/{event.total}" if total != 1000 else ""]
        parts.append(f"{format_duration(event.elapsed)} elapsed")
        if event.eta is not None:
            parts.append(f"ETA {format_duration(event.eta)}")
        text = " · ".join(p for p in parts if p)
        if event.message:
            text += f"\n{event.message}"
        if self._token is not None and self._token.cancelled:
            text += "\ncancelling: finishing the current item…"
        self.status.setText(text)

    def _forward_event(self, job_id: int, name: str, payload: object) -> None:
        if job_id == self._job_id:
            self.job_event.emit(name, payload)

    def _finish(self, job_id: int, status: str, result: Any, error: BaseException | None) -> None:
        if job_id != self._job_id:
            return
        self._drain_progress(job_id, now=True)  # show the last event before the summary
        elapsed = time.perf_counter() - self._t0
        if (status == "error" and isinstance(error, Cancelled)) or (
                status == "ok" and getattr(result, "cancelled", False)):
            status = "cancelled"
        outcome = JobOutcome(status, result, error, elapsed)
        self._worker = None
        token, self._token = self._token, None
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancel")
        if self.bar.maximum() == 0:
            self.bar.setRange(0, 1)
            self.bar.setValue(1 if status == "ok" else 0)
        failures = getattr(result if result is not None else error, "failures", None)
        if failures:
            self.show_failures(failures)
        summary = getattr(result, "summary", None)
        summary_text = summary() if callable(summary) else ""
        took = format_duration(elapsed)
        if status == "ok":
            self.bar.setFormat("done")
            self.status.setText(f"Done in {took}." + (f" {summary_text}" if summary_text else ""))
        elif status == "cancelled":
            self.bar.setFormat("cancelled")
            self.status.setText(
                f"Cancelled after {took}; finished outputs are kept."
                + (f" {summary_text}" if summary_text else "")
            )
        else:
            self.bar.setFormat("failed")
            self.status.setText(f"Failed after {took}.")
            details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            self.show_error(describe_error(error), details)
        del token
        on_result, on_error = self._on_result, self._on_error
        self._on_result = self._on_error = None
        try:
            if status in ("ok", "cancelled") and result is not None and on_result is not None:
                on_result(result)
            elif status == "error" and on_error is not None:
                on_error(error)
        except Exception as exc:  # a bug in a result handler must not leave us "busy"
            details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.show_error(f"showing the result failed: {describe_error(exc)}", details)
        finally:
            self.last_outcome = outcome
            self.busy_changed.emit(False)
            self.job_finished.emit(outcome)
