"""Progress, cancellation and failure reporting: one mechanism for every long job.

The CLI prints :class:`ProgressEvent` s on stderr; the napari widgets forward them
from a worker thread to a progress bar. Failures are collected per input file and
written to ``failures.csv`` so a bulk run keeps going past bad files.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from napari_recist_seg.data.atomic import atomic_write_text

FAILURES_CSV = "failures.csv"


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


@dataclass
class JobReport:
    """What a bulk job did. ``failures`` lists ``(file, reason)`` pairs."""

    processed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    cancelled: bool = False
    outputs: list[Path] = field(default_factory=list)

    def fail(self, file: str | Path, reason: str) -> None:
        self.failures.append((str(file), reason))

    def write_failures(self, out_dir: str | Path) -> Path | None:
        """Write ``out_dir/failures.csv`` (header ``file,reason``); remove a stale one."""
        path = Path(out_dir) / FAILURES_CSV
        if not self.failures:
            if path.exists():
                path.unlink()
            return None
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", "reason"])
        writer.writerows(self.failures)
        atomic_write_text(path, buf.getvalue())
        return path

    @property
    def exit_code(self) -> int:
        """CLI exit status: 0 all good, 3 some files failed, 130 cancelled."""
        if self.cancelled:
            return 130
        return 3 if self.failures else 0

    def summary(self) -> str:
        parts = [f"{self.processed} processed", f"{self.skipped} skipped (already done)"]
        parts.append(f"{len(self.failures)} failed")
        if self.cancelled:
            parts.append("cancelled")
        return ", ".join(parts)


def describe_error(exc: BaseException) -> str:
    """A one-line, user-readable reason for a failure (no traceback)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if isinstance(exc, (InputError,)) or name == "RecistError":
        return text or name
    return f"{name}: {text}" if text else name
