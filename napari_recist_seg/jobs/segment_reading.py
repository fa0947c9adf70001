"""How ``recist-seg segment`` reads images and words its notes: the options a job
gives its predictor (CT window, modality, polarity, test-time augmentation), OpenCV's
threads during a run, and one-line failure reasons. Shared by the 2D job
(:mod:`.segment`), its worker processes (:mod:`.segment_processes`) and the 3D job.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from napari_recist_seg.jobs.common import describe_error
from napari_recist_seg.tta import resolve_tta

if TYPE_CHECKING:  # pragma: no cover
    from napari_recist_seg.predict import Predictor

__all__ = ["set_reading"]


def set_reading(predictor: "Predictor | None", *, window: object = None, modality: str | None = None,
                polarity: str | None = None, tta: str | None = None) -> None:
    """Give a job's ``predictor`` the options its caller set (``None``: keep the
    predictor's): CT ``window`` and ``modality`` (napari_recist_seg.intensity), lesion
    ``polarity`` (napari_recist_seg.polarity), test-time augmentation (napari_recist_seg.tta)."""
    if predictor is None:
        return
    if window is not None or modality is not None:
        predictor.window, predictor.modality = window, modality
    if polarity is not None:
        predictor.polarity = polarity
    if tta is not None:
        predictor.tta = resolve_tta(tta)


def _window_note(names: Sequence[str]) -> str:
    """One line for the images a ``--window`` did not apply to."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"note: --window applies to CT only; {len(names)} image(s) are not CT ({shown}): "
            "they were read as colour / by the percentile rule (--modality ct if they are CT)")


@contextlib.contextmanager
def _opencv_threads(n: int):
    """OpenCV's own thread pool off for the run (restored after): the job already
    runs a reader, two segmenters and a writer on the cores, and OpenCV's workers
    on small crops cost more CPU in hand-overs than they save."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _reason(exc: BaseException, path: Path) -> str:
    """A one-line reason without repeating the file name (failures.csv has it)."""
    text = describe_error(exc)
    if isinstance(exc, ValueError):  # our readers' errors: the message is the reason
        for prefix in (f"{type(exc).__name__}: ", f"{path}: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
    return text
