"""Progress, cancellation and failure reporting: one mechanism for every long job.

The CLI prints :class:`ProgressEvent` s on stderr; the napari widgets forward them
from a worker thread to a progress bar. Failures are collected per input file and
written to ``failures.csv`` so a bulk run keeps going past bad files.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from napari_recist_seg.data.atomic import atomic_write_text

# The progress / cancel primitives live at the bottom of the package (``data`` and the
# core use them too); re-exported here, where the jobs and the docks import them.
from napari_recist_seg.progress import (
    Cancelled,
    CancelToken,
    InputError,
    ProgressCallback,
    ProgressEvent,
    ProgressTracker,
    describe_error,
)

__all__ = [
    "FAILURES_CSV",
    "CancelToken",
    "Cancelled",
    "InputError",
    "JobReport",
    "ProgressCallback",
    "ProgressEvent",
    "ProgressTracker",
    "describe_error",
]

FAILURES_CSV = "failures.csv"


@dataclass
class JobReport:
    """What a bulk job did. ``failures`` lists ``(file, reason)`` pairs."""

    processed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    cancelled: bool = False
    outputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed after the summary

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
