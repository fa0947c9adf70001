"""The geometry of one lesion: snapping a pair of lines, proposals, partners (a mixin).

:class:`~napari_recist_seg.annotation.session.AnnotationSession` inherits these steps;
they read and write the session's ``lines`` and ``lesions``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from napari_recist_seg.annotation.lesions import (
    DONE,
    INVALID,
    OPEN,
    PENDING,
    Lesion,
    SyncResult,
    _same,
)
from napari_recist_seg.annotation.requests import SegmentRequest
from napari_recist_seg.pairing import clip_segment, pair_problem
from napari_recist_seg.recist import Recist, RecistError, snap


class _LesionGeometry:
    """Pairing and snapping steps of :class:`AnnotationSession` (see there)."""

    def _make_recist(self, long_c: np.ndarray, short_c: np.ndarray, slice_index: int | None) -> Recist:
        return Recist(
            self._plane_coords(long_c),
            self._plane_coords(short_c),
            slice_index=slice_index,
            spacing=self.spacing,
        )

    def _check_inside(self, recist: Recist) -> None:
        rows, cols = self.plane_shape
        pts = recist.endpoints
        if (
            pts[:, 0].min() < -0.5
            or pts[:, 1].min() < -0.5
            or pts[:, 0].max() > rows - 0.5
            or pts[:, 1].max() > cols - 0.5
        ):
            raise RecistError(f"an endpoint lies outside the {rows}x{cols} image")
        if (recist.slice_index is not None and self.n_slices is not None
                and not 0 <= recist.slice_index < self.n_slices):
            raise RecistError(f"slice {recist.slice_index} is outside the volume (0..{self.n_slices - 1})")

    # -- geometry of one lesion -----------------------------------------------------
    def _request(self, les: Lesion) -> SegmentRequest:
        les.generation += 1
        les.status = PENDING
        les.message = ""
        assert les.recist is not None
        return SegmentRequest(les.id, les.generation, les.recist)

    def _invalidate(self, les: Lesion, message: str, out: SyncResult) -> None:
        les.generation += 1
        les.status = INVALID
        les.message = message
        les.recist = None
        if les.edited:
            # A hand-corrected mask is never thrown away by a line edit.
            out.messages.append(f"lesion {les.id}: {message} (its hand-edited mask is kept)")
            return
        les.cluster = les.confidence = les.measured = les.area_px = None
        out.clear.append((les.id, les.box))
        les.box = None
        out.messages.append(f"lesion {les.id}: {message}")

    def _open(self, les: Lesion, out: SyncResult) -> None:
        """The lesion lost a line: it waits for a new partner; its mask goes."""
        les.generation += 1
        les.status = OPEN
        les.message = ""
        les.recist = None
        les.quick = False
        les.cluster = les.confidence = les.measured = les.area_px = None
        out.clear.append((les.id, les.box))
        les.box = None

    def _apply_pair(
        self,
        les: Lesion,
        first_id: int,
        second_id: int,
        out: SyncResult,
        *,
        snap_second: bool = True,
        what: str = "the second line",
    ) -> None:
        """Snap the pair (first = long candidate), write back, and request a mask."""
        first = self.lines[first_id]
        second = self.lines[second_id]
        les.long_id, les.short_id = first_id, second_id
        try:
            s1, s2 = self._slice_of(first), self._slice_of(second)
            if s1 != s2:
                raise RecistError(
                    f"{what} is on slice {s2}, the first on slice {s1}; draw both axes on one slice"
                )
            drawn = self._make_recist(first, second, s1)
            snapped = snap(drawn, image_shape=self.plane_shape) if snap_second else drawn.validate()
            if snapped.short_length > snapped.long_length:
                snapped = replace(snapped, long_axis=snapped.short_axis, short_axis=snapped.long_axis)
            self._check_inside(snapped)
        except RecistError as exc:
            reason = str(exc)
            if "do not cross" in reason:
                reason = (
                    f"{what} does not cross the first one, so they are not a RECIST pair: "
                    "move it across the long axis (or delete it)"
                )
            self._invalidate(les, reason, out)
            return
        swapped = not _same(self._plane_coords(first), snapped.long_axis)
        if swapped and _same(self._plane_coords(first), snapped.short_axis):
            les.long_id, les.short_id = second_id, first_id
            self.lines[second_id] = self._full_coords(snapped.long_axis, snapped.slice_index)
            self.lines[first_id] = self._full_coords(snapped.short_axis, snapped.slice_index)
        else:
            self.lines[first_id] = self._full_coords(snapped.long_axis, snapped.slice_index)
            self.lines[second_id] = self._full_coords(snapped.short_axis, snapped.slice_index)
        les.slice_index = snapped.slice_index
        les.recist = snapped
        out.segment.append(self._request(les))

    def _carry_short(self, les: Lesion, new_long: np.ndarray) -> np.ndarray:
        """Move the short axis with an edited long axis (same crossing fraction, reach)."""
        old = les.recist
        assert old is not None
        t, _ = old.crossing_parameters()
        p, q = old.long_axis
        d = (q - p) / old.long_length
        normal = np.array([-d[1], d[0]])
        crossing = p + t * (q - p)
        reach = (old.short_axis - crossing) @ normal
        np_, nq = self._plane_coords(new_long)
        length = float(np.linalg.norm(nq - np_))
        if length < 1e-9:
            return self._plane_coords(self.lines[les.short_id])  # type: ignore[index]
        nd = (nq - np_) / length
        nn = np.array([-nd[1], nd[0]])
        nc = np_ + t * (nq - np_)
        return nc + np.outer(reach, nn)

    def _propose_short(self, long_plane: np.ndarray) -> np.ndarray:
        p, q = long_plane
        length = float(np.linalg.norm(q - p))
        d = (q - p) / length
        normal = np.array([-d[1], d[0]])
        mid = (p + q) / 2.0
        half = self.quick_ratio * length / 2.0
        short = np.vstack([mid - half * normal, mid + half * normal])
        # Keep the proposal inside the image.
        rows, cols = self.plane_shape
        short[:, 0] = np.clip(short[:, 0], 0, rows - 1)
        short[:, 1] = np.clip(short[:, 1], 0, cols - 1)
        return short

    def _keep_edit(self, les: Lesion, out: SyncResult) -> None:
        """A hand-edited lesion whose lines moved keeps its mask (no new request)."""
        if not les.edited or les.recist is None:
            return
        before = len(out.segment)
        out.segment = [r for r in out.segment if r.lesion_id != les.id]
        if len(out.segment) != before:
            les.status = DONE
            out.messages.append(
                f"lesion {les.id}: its mask was edited by hand, so it was kept (not "
                "re-segmented); select it and press Re-segment to replace it"
            )

    def _clipped(self, coords: np.ndarray) -> np.ndarray:
        """Endpoints a little past the border pulled back onto it (along the line)."""
        if coords.shape != (2, self.ndim):
            return coords
        out = coords.copy()
        out[:, -2:] = clip_segment(coords[:, -2:], self.plane_shape)
        return out

    def _valid_partner(
        self, line_id: int, slice_index: int | None, out: SyncResult, *, exclude: int | None = None
    ) -> Lesion | None:
        """The most recent open lesion this new line forms a valid pair with.

        Open lesions it does not pair with are flagged (drawn red, with the reason) and
        the new line starts the next lesion: a leftover or wrong line never captures
        the user's next axis.
        """
        plane = self._plane_coords(self.lines[line_id])
        tried: list[tuple[Lesion, str]] = []
        for les in sorted(self.lesions.values(), key=lambda les: -les.id):
            if les.short_id is not None or les.committed or les.slice_index != slice_index:
                continue
            if les.id == exclude:
                continue
            problem = pair_problem(
                self._plane_coords(self.lines[les.long_id]), plane, self.plane_shape
            )
            if problem is None:
                return les
            tried.append((les, problem))
        if exclude is not None:
            return None  # an edited lone line: nothing new to flag
        for les, problem in tried:
            if "do not cross" in problem:
                problem = "the next line does not cross it"
            les.status = INVALID
            les.message = (
                f"no partner ({problem}), so that line starts a new lesion; draw this "
                "lesion's other axis across it, or delete it"
            )
            out.messages.append(f"lesion {les.id}: {les.message}")
        return None
