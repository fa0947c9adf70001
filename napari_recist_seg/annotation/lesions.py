"""What the session holds and returns: lines as observed and shown, lesions, sync results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_recist_seg.annotation.paste import Box
from napari_recist_seg.annotation.requests import SegmentRequest
from napari_recist_seg.recist import Recist

__all__ = [
    "DEFAULT_QUICK_RATIO",
    "DISAGREEMENT_THRESHOLD",
    "TABLE_COLUMNS",
    "UNDO_LIMIT",
    "Lesion",
    "LineObs",
    "LineView",
    "SyncResult",
]

#: Quick mode: the proposed short axis is this fraction of the long axis.
DEFAULT_QUICK_RATIO = 0.6
#: Drawn vs mask-measured L or W differing by more than this fraction is flagged.
DISAGREEMENT_THRESHOLD = 0.2
#: Undo depth.
UNDO_LIMIT = 100
# Coordinates closer than this (px) count as unchanged (napari round-trips floats).
_SAME_ATOL = 1e-4

# Lesion states.
OPEN = "open"  # one line, waiting for its partner
INVALID = "invalid"  # two lines that do not make a RECIST (message says why)
PENDING = "pending"  # valid RECIST, segmentation requested
DONE = "done"  # mask pasted
FAILED = "failed"  # the segmenter failed (message says why)


@dataclass
class LineObs:
    """One shape as observed in the napari layer.

    ``line_id`` is the id the session gave it (``-1`` for a new shape);
    ``lesion_hint`` / ``axis_hint`` pair lines that arrive with known roles (a reader
    or an import sets them); ``status_hint`` is the RECIST CSV's ``status`` of such a
    line (a pair whose two lines say ``committed...`` comes in committed);
    ``shape_type`` other than ``"line"`` is refused.
    """

    line_id: int
    coords: np.ndarray
    lesion_hint: int | None = None
    axis_hint: str | None = None
    shape_type: str = "line"
    status_hint: str | None = None


@dataclass
class LineView:
    """How the session wants one line shown: its id, coordinates, role and text."""

    line_id: int
    coords: np.ndarray
    lesion_id: int
    axis: str  # "long", "short" or "" (open line)
    label: str  # text shown next to the line (the lesion's L and W on its long axis)
    state: str  # "ok", "open", "invalid", "failed" or "committed"


@dataclass
class Lesion:
    """One lesion: its lines, snapped RECIST, segmentation state and results."""

    id: int
    long_id: int
    short_id: int | None = None
    slice_index: int | None = None
    recist: Recist | None = None
    quick: bool = False
    committed: bool = False
    status: str = OPEN
    message: str = ""
    generation: int = 0
    cluster: int | None = None
    confidence: float | None = None
    measured: Recist | None = None
    area_px: int | None = None
    box: Box | None = None
    #: The mask was painted / erased / filled by hand (or imported): it is the truth
    #: and is never replaced by a segmentation without the user asking.
    edited: bool = False
    #: "3D lesion": propagate once committed; the volume columns of the label
    #: (:data:`~napari_recist_seg.measurements.VOLUME_COLUMNS`) once it is 3D; a counter
    #: that drops 3D results computed for an older mask.
    want_volume: bool = False
    volume: dict | None = None
    volume_generation: int = 0

    @property
    def line_ids(self) -> list[int]:
        return [self.long_id] if self.short_id is None else [self.long_id, self.short_id]


@dataclass
class SyncResult:
    """What the widget must do after a sync / undo / commit.

    ``rewrite``: the layer's lines differ from the session's (snapped, proposed,
    restored, removed) and must be rewritten from :meth:`AnnotationSession.layer_lines`;
    ``segment``: lesions to (re-)segment; ``clear``: lesions whose mask must be
    removed now; ``messages``: what to tell the user; ``labels``: the label image to
    put back as it was (:class:`~.labels_state.LabelsState`, an undo).
    """

    rewrite: bool = False
    segment: list[SegmentRequest] = field(default_factory=list)
    clear: list[tuple[int, Box | None]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    changed: bool = False
    labels: Any = None

    def extend(self, other: "SyncResult") -> None:
        self.rewrite |= other.rewrite
        self.changed |= other.changed
        self.segment += other.segment
        self.clear += other.clear
        self.messages += other.messages


TABLE_COLUMNS: tuple[str, ...] = (
    "lesion",
    "slice",
    "status",
    "long_drawn",
    "short_drawn",
    "long_measured",
    "short_measured",
    "disagreement",
    "flag",
    "area",
    "cluster",
    "confidence",
    "committed",
    "unit",
    "edited",
    "volume",
    "volume_unit",
    "z_first",
    "z_last",
    "n_slices",
)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=_SAME_ATOL, rtol=0))
