"""Segmentation requests and their outcomes, and :func:`run_requests` (meant for a worker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from napari_recist_seg.recist import Recist, RecistError

__all__ = ["ClickRequest", "SegmentOutcome", "SegmentRequest", "run_requests"]


@dataclass(frozen=True)
class SegmentRequest:
    """Segment one lesion from its RECIST; valid only while ``generation`` is current."""

    lesion_id: int
    generation: int
    recist: Recist


@dataclass(frozen=True)
class ClickRequest:
    """Segment the lesion under one click: ``point`` is ``(row, col)`` in the plane."""

    token: int
    point: tuple[float, float]
    slice_index: int | None = None
    spacing: tuple[float, float] | None = None


@dataclass
class SegmentOutcome:
    request: SegmentRequest | ClickRequest
    result: Any = None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (RecistError, NotImplementedError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_requests(
    segmenter: Any, image: np.ndarray, requests: Sequence[SegmentRequest | ClickRequest]
) -> Iterator[SegmentOutcome]:
    """Run a batch of requests, yielding one outcome per request (meant for a worker).

    RECIST requests on one plane go to the segmenter in one call; if that call fails,
    each lesion is retried alone so that one bad lesion does not fail the others.
    Exceptions become ``error`` strings, never escape.
    """
    recist_reqs = [r for r in requests if isinstance(r, SegmentRequest)]
    groups: dict[int | None, list[SegmentRequest]] = {}
    for r in recist_reqs:
        groups.setdefault(r.recist.slice_index, []).append(r)
    for group in groups.values():
        try:
            results = list(segmenter.segment(image, [r.recist for r in group]))
            if len(results) != len(group):
                raise RuntimeError(
                    f"the segmenter returned {len(results)} results for {len(group)} lesions"
                )
        except Exception:  # noqa: BLE001 - retried one by one below for a precise error
            for r in group:
                try:
                    yield SegmentOutcome(r, segmenter.segment(image, [r.recist])[0])
                except Exception as exc:  # noqa: BLE001
                    yield SegmentOutcome(r, error=_describe(exc))
            continue
        for r, res in zip(group, results):
            yield SegmentOutcome(r, res)
    for r in requests:
        if isinstance(r, ClickRequest):
            fn = getattr(segmenter, "segment_click", None)
            if fn is None:
                yield SegmentOutcome(r, error="this segmenter cannot segment from a click")
                continue
            try:
                yield SegmentOutcome(
                    r, fn(image, r.point, slice_index=r.slice_index, spacing=r.spacing)
                )
            except Exception as exc:  # noqa: BLE001
                yield SegmentOutcome(r, error=_describe(exc))
