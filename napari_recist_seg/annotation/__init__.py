"""Lesion bookkeeping for the RECIST annotator: lines -> lesions -> masks (no Qt, no napari).

The napari widget observes a Shapes layer of lines and asks an
:class:`AnnotationSession` what they mean. The session is the single source of truth:

- it pairs lines into lesions (two lines make one lesion; with ``quick=True`` one long
  axis alone is a lesion, and a short axis ``quick_ratio * L`` is proposed);
- it applies the Bidirectional-tool rules of :func:`napari_recist_seg.recist.snap` (the
  second line is made perpendicular to the first through their crossing; if it is the
  longer one the two swap) and reports pairs that do not cross instead of guessing;
- it tracks edits (only the edited lesion is re-segmented, with a generation counter so
  that a result computed for an older geometry is discarded), deletions (only that
  lesion's mask is cleared), commits (a committed lesion's lines are locked: edits are
  undone) and an undo stack;
- it turns lesions into table rows, RECIST CSV records and measurement rows.

Rooms: :mod:`~.units` (spacing, lengths), :mod:`~.segmenters` (:class:`ShapeSegmenter`,
:func:`load_segmenter`), :mod:`~.requests` (requests, :func:`run_requests`),
:mod:`~.paste` (masks into the label image), :mod:`~.lesions` (the session's records),
:mod:`~.session` (:class:`AnnotationSession`, with :mod:`~.geometry`, :mod:`~.sync` and
:mod:`~.views` as its steps), :mod:`~.volume3d` (the "3D lesion" option and CT
windows) and :mod:`~.export` (files). Every public name is
re-exported here: ``from napari_recist_seg.annotation import ...`` is the API.

Segmentation itself is done by a *segmenter*: anything with
``segment(image, recists) -> list[result]`` (the model's
:class:`napari_recist_seg.predict.Predictor`, or :class:`ShapeSegmenter` for the
ellipse / GrabCut weak targets that need no model). A result needs ``offset`` (top-left
``(row, col)`` of ``mask`` in the plane), ``mask`` (bool crop) and may carry
``cluster``, ``confidence`` and ``measured`` (the RECIST measured on the mask).

Examples
--------
>>> import numpy as np
>>> s = AnnotationSession(plane_shape=(100, 100))
>>> out = s.sync([LineObs(-1, np.array([[50.0, 20.0], [50.0, 80.0]]))])
>>> [l.status for l in s.lesions.values()]       # one line: waiting for its partner
['open']
>>> obs = [LineObs(v.line_id, v.coords) for v in s.layer_lines()]
>>> out = s.sync(obs + [LineObs(-1, np.array([[30.0, 45.0], [70.0, 55.0]]))])
>>> lesion = s.lesions[1]
>>> lesion.status, [float(round(v, 1)) for v in lesion.recist.short_axis[:, 1]]  # snapped
('pending', [50.0, 50.0])
>>> [(r.lesion_id, r.generation) for r in out.segment]
[(1, 1)]
"""

from __future__ import annotations

from napari_recist_seg.annotation.export import (
    MEASUREMENT_FIELDS,
    export_masks,
    export_measurements,
    export_recist_csv,
    export_recist_csv_many,
    free_path,
    lesion_status,
    records_for_image,
    restore_states,
    save_image,
    session_records,
)
from napari_recist_seg.annotation.labels_state import LabelsState
from napari_recist_seg.annotation.lesions import (
    DEFAULT_QUICK_RATIO,
    DISAGREEMENT_THRESHOLD,
    DONE,
    FAILED,
    INVALID,
    OPEN,
    PENDING,
    TABLE_COLUMNS,
    UNDO_LIMIT,
    Lesion,
    LineObs,
    LineView,
    SyncResult,
)
from napari_recist_seg.annotation.paste import Box, clear_indices, lesion_at, paste_indices
from napari_recist_seg.annotation.requests import (
    ClickRequest,
    SegmentOutcome,
    SegmentRequest,
    run_requests,
)
from napari_recist_seg.annotation.segmenters import (
    SEGMENTER_CHOICES,
    Segmenter,
    ShapeResult,
    ShapeSegmenter,
    load_segmenter,
    segmenter_device,
    segmenter_name,
)
from napari_recist_seg.annotation.session import AnnotationSession
from napari_recist_seg.annotation.units import format_length, spacing_from_scale
from napari_recist_seg.annotation.volume3d import (
    VolumeRequest,
    image_modality,
    measure_volume,
    propagate_request,
    volume_paste_indices,
    volume_spacing,
    window_choices,
    window_limits,
    with_intensity,
)

__all__ = [
    "DEFAULT_QUICK_RATIO",
    "DISAGREEMENT_THRESHOLD",
    "AnnotationSession",
    "ClickRequest",
    "LabelsState",
    "Lesion",
    "LineObs",
    "LineView",
    "SegmentOutcome",
    "SegmentRequest",
    "Segmenter",
    "ShapeResult",
    "ShapeSegmenter",
    "SyncResult",
    "TABLE_COLUMNS",
    "clear_indices",
    "export_masks",
    "export_measurements",
    "export_recist_csv",
    "export_recist_csv_many",
    "format_length",
    "free_path",
    "save_image",
    "session_records",
    "load_segmenter",
    "lesion_at",
    "paste_indices",
    "lesion_status",
    "records_for_image",
    "restore_states",
    "run_requests",
    "spacing_from_scale",
    "VolumeRequest",
    "image_modality",
    "measure_volume",
    "propagate_request",
    "volume_paste_indices",
    "volume_spacing",
    "window_choices",
    "window_limits",
    "with_intensity",
]
