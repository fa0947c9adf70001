"""Reconciling the session with the Shapes layer: :meth:`AnnotationSession.sync` (a mixin).

``sync`` is a short pipeline of named steps (like scikit-image's ``random_walker`` and
its private helpers): read the layer, restore locked (committed) lines, drop removed
lines, apply edits, store the new lines, pair the hinted ones (imports), then pair each
remaining new line with an open lesion (or start a lesion, or propose a short axis in
quick mode).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from napari_recist_seg.annotation.lesions import INVALID, Lesion, LineObs, SyncResult, _same
from napari_recist_seg.recist import MIN_AXIS_LENGTH_PX


class _LayerSync:
    """The sync steps of :class:`AnnotationSession` (see there)."""

    # -- sync with the layer ---------------------------------------------------------
    def sync(self, observed: Sequence[LineObs]) -> SyncResult:
        """Reconcile the session with what the Shapes layer now holds.

        Parameters
        ----------
        observed : sequence of LineObs
            Every shape of the layer, in layer order.

        Returns
        -------
        SyncResult
        """
        out = SyncResult()
        before = self._snapshot()
        seen, seen_order, new, bad_new = self._read_layer(observed, out)
        removed = [lid for lid in self.order if lid not in seen]
        changed = [lid for lid in seen_order if not _same(seen[lid], self.lines[lid])]
        if not (removed or changed or new):
            if seen_order != self.order:
                self.order = list(seen_order)
                out.rewrite = out.rewrite or bad_new > 0
            if bad_new:
                # The user drew something (a rectangle...) that was taken away at once:
                # their Undo is for that, and must not undo the step before it.
                self._push_undo({**before, "note": "the removed shape(s) stay removed"})
            return out

        owner = self._lesion_of_line()
        locked = self._restore_locked(removed + changed, owner, out)
        removed = [lid for lid in removed if owner.get(lid) is None or not owner[lid].committed]
        changed = [lid for lid in changed if owner.get(lid) is None or not owner[lid].committed]
        if not (removed or changed or new):
            # Only locked lines were touched: put them back, nothing else changed.
            self.order = seen_order + [
                lid for lid in self.order if lid not in seen
            ]
            return out

        new_order = list(seen_order)
        for les_id in locked:
            for lid in self.lesions[les_id].line_ids:
                if lid not in seen:
                    new_order.append(lid)
        self._drop_removed(removed, out)
        self._apply_edits(changed, seen, owner, out)
        pending_ids = self._store_new_lines(new, new_order, out)
        done_obs = self._pair_hinted(new, pending_ids, out)
        self._pair_new_lines(new, pending_ids, done_obs, new_order, out)
        self.order = [lid for lid in new_order if lid in self.lines]
        # Ids are new for added lines; coordinates may have been snapped or restored.
        out.rewrite = True
        out.changed = True
        self._push_undo(before)
        return out

    def _read_layer(
        self, observed: Sequence[LineObs], out: SyncResult
    ) -> tuple[dict[int, np.ndarray], list[int], list[LineObs], int]:
        """Known lines (by id, in layer order), new lines, and how many non-lines were dropped."""
        seen: dict[int, np.ndarray] = {}
        seen_order: list[int] = []
        new: list[LineObs] = []
        bad_new = 0
        for obs in observed:
            coords = np.asarray(obs.coords, float)
            lid = int(obs.line_id) if obs.line_id is not None else -1
            if lid in self.lines and lid not in seen:
                if obs.shape_type != "line" or coords.shape != (2, self.ndim):
                    # A line turned into a path (vertex added) or another shape: keep
                    # the line as it was.
                    out.messages.append(
                        "RECIST axes are straight lines with two ends; the edit was undone"
                    )
                    out.rewrite = True
                    seen[lid] = self.lines[lid]
                else:
                    seen[lid] = self._clipped(coords)
                seen_order.append(lid)
            else:
                if obs.shape_type != "line" or coords.shape != (2, self.ndim):
                    bad_new += 1
                    continue
                new.append(replace(obs, coords=self._clipped(coords)))
        if bad_new:
            out.messages.append(
                f"removed {bad_new} shape(s) that are not lines: the RECIST layer holds "
                "only straight lines (two per lesion)"
            )
            out.rewrite = True
        return seen, seen_order, new, bad_new

    def _restore_locked(
        self, touched: Sequence[int], owner: dict[int, Lesion], out: SyncResult
    ) -> set[int]:
        """Committed lesions are locked: the ids of those whose lines were touched."""
        locked: set[int] = set()
        for lid in touched:
            les = owner.get(lid)
            if les is not None and les.committed:
                locked.add(les.id)
        if locked:
            out.messages.append(
                "lesion(s) "
                + ", ".join(map(str, sorted(locked)))
                + " are committed: their lines are locked (uncommit to edit); restored"
            )
            out.rewrite = True
        return locked

    def _drop_removed(self, removed: Sequence[int], out: SyncResult) -> None:
        """Removed lines: a lesion that lost both goes, one that lost one is open again."""
        removed_set = set(removed)
        for lid in removed:
            del self.lines[lid]
        for les in list(self.lesions.values()):
            gone = [lid for lid in les.line_ids if lid in removed_set]
            if not gone:
                continue
            left = [lid for lid in les.line_ids if lid not in removed_set]
            if not left:
                les.generation += 1
                out.clear.append((les.id, les.box))
                del self.lesions[les.id]
            else:
                les.long_id, les.short_id = left[0], None
                self._open(les, out)

    def _apply_edits(
        self,
        changed: Sequence[int],
        seen: dict[int, np.ndarray],
        owner: dict[int, Lesion],
        out: SyncResult,
    ) -> None:
        """Edited lines: re-pair (and re-snap) each touched lesion."""
        for lid in changed:
            self.lines[lid] = seen[lid]
        touched: dict[int, set[int]] = {}
        for lid in changed:
            les = owner.get(lid)
            if les is not None and les.id in self.lesions:
                touched.setdefault(les.id, set()).add(lid)
        for les_id, lids in touched.items():
            les = self.lesions[les_id]
            if les.short_id is None:
                les.slice_index = self._slice_of(self.lines[les.long_id])
                # A lone line moved across another lone line: the two are one lesion.
                partner = self._valid_partner(les.long_id, les.slice_index, out, exclude=les.id)
                if partner is not None:
                    del self.lesions[les.id]
                    self._apply_pair(partner, partner.long_id, les.long_id, out)
                continue
            if lids == {les.long_id} and les.recist is not None:
                # Long axis edited alone: the short axis follows it (Bidirectional tool).
                sl = self._slice_of(self.lines[les.long_id])
                self.lines[les.short_id] = self._full_coords(self._carry_short(les, self.lines[les.long_id]), sl)
            self._apply_pair(les, les.long_id, les.short_id, out, what="the edited short axis")
            self._keep_edit(les, out)

    def _store_new_lines(
        self, new: Sequence[LineObs], new_order: list[int], out: SyncResult
    ) -> dict[int, int]:
        """Give new lines ids, in layer order; stray clicks are dropped. ``id(obs) -> line id``."""
        pending_ids: dict[int, int] = {}  # id(obs) -> line id
        zero = 0
        for obs in new:
            plane = self._plane_coords(obs.coords)
            hinted_line = obs.lesion_hint is not None and obs.lesion_hint >= 0
            shortest = MIN_AXIS_LENGTH_PX if hinted_line else max(MIN_AXIS_LENGTH_PX, self.min_line_length)
            if float(np.linalg.norm(plane[1] - plane[0])) < shortest:
                zero += 1
                continue
            lid = self._new_line_id()
            sl = self._slice_of(obs.coords)
            self.lines[lid] = self._full_coords(plane, sl)
            new_order.append(lid)
            pending_ids[id(obs)] = lid
        if zero:
            out.messages.append(
                f"ignored {zero} stray line(s), zero-length or a few screen pixels long "
                "(a click, not an axis)"
            )
            out.rewrite = True
        return pending_ids

    def _pair_hinted(
        self, new: Sequence[LineObs], pending_ids: dict[int, int], out: SyncResult
    ) -> set[int]:
        """New lines that arrive in pairs with a lesion hint (a reader, an import)."""
        hinted: dict[int, list[LineObs]] = {}
        for obs in new:
            if obs.lesion_hint is not None and obs.lesion_hint >= 0:
                hinted.setdefault(int(obs.lesion_hint), []).append(obs)
        done_obs: set[int] = set()
        for hint, group in hinted.items():
            group = [o for o in group if id(o) in pending_ids]
            if len(group) != 2:
                continue
            a, b = group
            if (a.axis_hint or "") == "short" or (b.axis_hint or "") == "long":
                a, b = b, a
            la, lb = pending_ids[id(a)], pending_ids[id(b)]
            les = Lesion(id=self._new_lesion_id(hint), long_id=la, short_id=lb)
            les.slice_index = self._slice_of(self.lines[la])
            self.lesions[les.id] = les
            # Stored measurements keep their recorded geometry (not re-snapped).
            self._apply_pair(les, la, lb, out, snap_second=False)
            # A CSV exported with committed lesions opens with them committed (locked).
            if all((o.status_hint or "").startswith("committed") for o in (a, b)):
                les.committed = les.status != INVALID
            done_obs.update({id(a), id(b)})
        return done_obs

    def _pair_new_lines(
        self,
        new: Sequence[LineObs],
        pending_ids: dict[int, int],
        done_obs: set[int],
        new_order: list[int],
        out: SyncResult,
    ) -> None:
        """Each other new line: partner of an open lesion, a quick lesion, or a new lesion."""
        for obs in new:
            if id(obs) not in pending_ids or id(obs) in done_obs:
                continue
            lid = pending_ids[id(obs)]
            sl = self._slice_of(self.lines[lid])
            partner = self._valid_partner(lid, sl, out)
            if partner is not None:
                self._apply_pair(partner, partner.long_id, lid, out)
            elif self.quick:
                les = Lesion(id=self._new_lesion_id(), long_id=lid, slice_index=sl, quick=True)
                self.lesions[les.id] = les
                short_lid = self._new_line_id()
                self.lines[short_lid] = self._full_coords(
                    self._propose_short(self._plane_coords(self.lines[lid])), sl
                )
                new_order.insert(new_order.index(lid) + 1, short_lid)
                les.short_id = short_lid
                self._apply_pair(les, lid, short_lid, out)
                out.rewrite = True
            else:
                les = Lesion(id=self._new_lesion_id(), long_id=lid, slice_index=sl)
                self.lesions[les.id] = les
