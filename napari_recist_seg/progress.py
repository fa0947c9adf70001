"""Progress and cancellation: the primitives every long job shares (no I/O, no Qt).

The CLI prints :class:`ProgressEvent` s on stderr; the napari widgets forward them from
a worker thread to a progress bar; the Python API takes any callable. A
:class:`CancelToken` is set by a GUI button or the CLI's Ctrl-C handler and checked by
the job between units of work. This module is at the bottom of the package (it imports
nothing from it), so ``data``, ``training`` and ``curation`` can use it as well as
``jobs``; :mod:`napari_recist_seg.jobs.common` re-exports these names and adds the
per-file failure report.

>>> events = []
>>> tracker = ProgressTracker(2, events.append)
>>> tracker.step("a.png")
>>> events[-1].done, events[-1].total, events[-1].message
(1, 2, 'a.png')
>>> token = CancelToken()
>>> token.cancel()
>>> token.raise_if_cancelled()
Traceback (most recent call last):
...
napari_recist_seg.progress.Cancelled: cancelled by the user
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "CancelToken",
    "Cancelled",
    "InputError",
    "ProgressCallback",
    "ProgressEvent",
    "ProgressTracker",
    "describe_error",
    "phase_progress",
]


class Cancelled(Exception):
    """Raised inside a job when the user cancelled it; work done so far is kept."""


class InputError(ValueError):
    """A user input that cannot be processed; the message is shown as is (no traceback)."""


@dataclass(frozen=True)
class ProgressEvent:
    """How far a job is: ``done`` of ``total`` units, with an ETA in seconds."""

    done: int
    total: int
    message: str = ""
    elapsed: float = 0.0
    eta: float | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def format(self) -> str:
        eta = f", ETA {self.eta:.0f}s" if self.eta is not None else ""
        msg = f" {self.message}" if self.message else ""
        return f"[{self.done}/{self.total}] {self.elapsed:.1f}s{eta}{msg}"


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """Thread-safe cancel flag passed from a GUI (or signal handler) into a job."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class ProgressTracker:
    """Counts units of work and reports events with elapsed time and ETA."""

    def __init__(self, total: int, callback: ProgressCallback | None = None) -> None:
        self.total = int(total)
        self.done = 0
        self.callback = callback
        self.start = time.perf_counter()

    def event(self, message: str = "") -> ProgressEvent:
        elapsed = time.perf_counter() - self.start
        eta = None
        if 0 < self.done < self.total:
            eta = elapsed / self.done * (self.total - self.done)
        return ProgressEvent(self.done, self.total, message, elapsed, eta)

    def step(self, message: str = "", n: int = 1) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.event(message))


def phase_progress(
    progress: ProgressCallback | None, phase: str, index: int, count: int
) -> ProgressCallback | None:
    """Map the events of phase ``index`` of ``count`` onto one overall bar.

    A composite job (segment with model A, then B, then evaluate) reports each phase
    with its own ``done / total``; this rescales them to per-mille of the whole job
    and prefixes the message with the phase name. The ETA stays the phase's own.

    >>> seen = []
    >>> cb = phase_progress(seen.append, "evaluate", 1, 2)
    >>> cb(ProgressEvent(5, 10, "case_3"))
    >>> seen[0].done, seen[0].total, seen[0].message
    (750, 1000, 'evaluate 5/10: case_3')
    """
    if progress is None:
        return None
    count = max(1, int(count))

    def forward(event: ProgressEvent) -> None:
        overall = (index + event.fraction) / count
        msg = f"{phase} {event.done}/{event.total}"
        if event.message:
            msg += f": {event.message}"
        progress(ProgressEvent(int(round(1000 * overall)), 1000, msg, event.elapsed, event.eta))

    return forward


def describe_error(exc: BaseException) -> str:
    """A one-line, user-readable reason for a failure (no traceback)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if isinstance(exc, (InputError,)) or name == "RecistError":
        return text or name
    return f"{name}: {text}" if text else name
