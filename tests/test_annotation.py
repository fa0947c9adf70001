"""The annotator's pure-Python core: pairing lines into lesions, Bidirectional-tool
snapping, quick mode, edits, deletions, commit lock, undo, generation counter, results,
pasting into a label image, and RECIST CSV / mask / measurement export.

Geometry is checked against hand-computed cases; segmenters against ``targets`` and
the real ISIC expert masks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg import annotation as ann
from napari_recist_seg.annotation import AnnotationSession, LineObs, ShapeResult, ShapeSegmenter
from napari_recist_seg.recist import Recist, recist_from_mask

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC = SHARED_DATA / "isic2017_train256"


def line(*pts) -> np.ndarray:
    return np.asarray(pts, float)


def observe(session: AnnotationSession, *new: np.ndarray, drop: tuple[int, ...] = (), edit=None):
    """What the layer would hold: the session's lines (minus ``drop`` line ids, with
    ``edit`` = {line_id: coords}) followed by ``new`` lines."""
    edit = edit or {}
    obs = [
        LineObs(v.line_id, edit.get(v.line_id, v.coords))
        for v in session.layer_lines()
        if v.line_id not in drop
    ]
    return obs + [LineObs(-1, c) for c in new]


def add_pair(session, a, b):
    session.sync(observe(session, a))
    return session.sync(observe(session, b))


# -- pairing and snapping ------------------------------------------------------------


def test_second_line_snaps_perpendicular_through_the_crossing():
    s = AnnotationSession((100, 100))
    out = s.sync(observe(s, line([50, 20], [50, 80])))
    assert [les.status for les in s.lesions.values()] == ["open"] and not out.segment
    out = s.sync(observe(s, line([30, 45], [70, 55])))
    les = s.lesions[1]
    # The crossing is at row 50: col 45 + (20/40) * 10 = 50; the short axis keeps its
    # reach (20 px each side) along the normal of the horizontal long axis.
    np.testing.assert_allclose(les.recist.short_axis, [[30, 50], [70, 50]])
    np.testing.assert_allclose(les.recist.long_axis, [[50, 20], [50, 80]])
    assert les.status == "pending"
    assert [(r.lesion_id, r.generation) for r in out.segment] == [(1, les.generation)]
    views = s.layer_lines()
    assert [v.axis for v in views] == ["long", "short"]
    np.testing.assert_allclose(views[1].coords, [[30, 50], [70, 50]])
    assert out.rewrite


def test_longer_second_line_becomes_the_long_axis():
    s = AnnotationSession((100, 100))
    add_pair(s, line([50, 40], [50, 60]), line([20, 50], [80, 52]))
    les = s.lesions[1]
    # Crossing of row 50 with the second line: col 51; rotated to vertical, 60 px long,
    # longer than the first (20 px): they swap.
    np.testing.assert_allclose(les.recist.long_axis, [[20, 51], [80, 51]])
    np.testing.assert_allclose(les.recist.short_axis, [[50, 40], [50, 60]])
    assert les.long_id == 2 and les.short_id == 1
    axes = {v.line_id: v.axis for v in s.layer_lines()}
    assert axes == {1: "short", 2: "long"}
    label = next(v.label for v in s.layer_lines() if v.axis == "long")
    assert label == "#1 L 60.0 × W 20.0 px"


def test_non_crossing_second_line_is_reported_not_guessed():
    s = AnnotationSession((100, 100))
    first, second = line([20, 20], [20, 60]), line([40, 80], [60, 80])
    out = add_pair(s, first, second)
    les = s.lesions[1]
    # The first line is flagged; the second starts the next lesion (pairing.py rules).
    assert les.status == "invalid" and les.recist is None and les.short_id is None
    assert s.lesions[2].short_id is None
    assert not out.segment
    assert any("does not cross" in m for m in out.messages)
    # Nothing the user drew moved or vanished.
    coords = [v.coords for v in s.layer_lines()]
    np.testing.assert_allclose(coords[0], first)
    np.testing.assert_allclose(coords[1], second)
    # Moving it across the first line makes the pair valid.
    out = s.sync(observe(s, edit={s.lesions[2].long_id: line([10, 40], [30, 40])}))
    assert s.lesions[1].status == "pending" and len(out.segment) == 1 and 2 not in s.lesions


def test_an_invalid_pair_shows_no_lengths():
    """#13: an invalid pair's label read as a measurement ("L 115.2 × W 282.2 px")."""
    s = AnnotationSession((100, 100))
    add_pair(s, line([50, 20], [50, 80]), line([30, 50], [70, 50]))
    les = s.lesions[1]
    labels = lambda: [v.label for v in s.layer_lines() if v.label]  # noqa: E731
    assert labels() == ["#1 L 60.0 × W 40.0 px"]
    # The short axis moved off the long one: the pair is invalid, its lines stay paired.
    s.sync(observe(s, edit={les.short_id: line([10, 90], [40, 90])}))
    assert les.status == "invalid" and les.short_id is not None
    assert labels() == ["#1 invalid"]
    # A stored pair on two slices: invalid, no lengths either.
    v = AnnotationSession((128, 128), n_slices=9)
    v.sync([LineObs(-1, line([4, 40, 20], [4, 40, 80]), 1, "long"),
            LineObs(-1, line([5, 20, 50], [5, 60, 50]), 1, "short")])
    assert [x.label for x in v.layer_lines() if x.label] == ["#1 invalid"]


def test_pairs_on_different_slices_are_invalid_and_slices_are_kept():
    s = AnnotationSession((128, 128), n_slices=9)
    # Stored pairs (with lesion hints) whose axes lie on two slices are refused.
    out = s.sync(
        [
            LineObs(-1, line([4, 40, 20], [4, 40, 80]), 1, "long"),
            LineObs(-1, line([5, 20, 50], [5, 60, 50]), 1, "short"),
        ]
    )
    assert s.lesions[1].status == "invalid" and not out.segment
    assert any("slice" in m for m in out.messages)
    s2 = AnnotationSession((128, 128), n_slices=9)
    out = add_pair(s2, line([4, 40, 20], [4, 40, 80]), line([4, 20, 50], [4, 60, 50]))
    r = s2.lesions[1].recist
    assert r.slice_index == 4 and out.segment[0].recist.slice_index == 4
    np.testing.assert_allclose(s2.lines[2][:, 0], [4, 4])


def test_a_second_line_pairs_only_with_an_open_line_on_its_slice():
    s = AnnotationSession((128, 128), n_slices=9)
    s.sync(observe(s, line([2, 40, 20], [2, 40, 80])))
    s.sync(observe(s, line([6, 20, 50], [6, 60, 50])))
    assert sorted(les.status for les in s.lesions.values()) == ["open", "open"]
    s.sync(observe(s, line([2, 20, 50], [2, 60, 50])))
    assert s.lesions[1].status == "pending" and s.lesions[2].status == "open"


def test_quick_mode_proposes_a_perpendicular_short_axis():
    s = AnnotationSession((100, 100), quick=True, quick_ratio=0.6)
    out = s.sync(observe(s, line([50, 20], [50, 80])))
    les = s.lesions[1]
    # Midpoint (50, 50), 0.6 * 60 = 36 px long, perpendicular.
    np.testing.assert_allclose(les.recist.short_axis, [[68, 50], [32, 50]])
    assert len(s.layer_lines()) == 2 and len(out.segment) == 1 and out.rewrite
    # The proposal is an ordinary, editable short axis.
    out = s.sync(observe(s, edit={les.short_id: line([40, 30], [60, 30])}))
    np.testing.assert_allclose(s.lesions[1].recist.short_axis, [[40, 30], [60, 30]])


def test_lines_with_hints_pair_as_stored_without_resnapping():
    s = AnnotationSession((100, 100))
    # A slightly non-perpendicular stored measurement (as in DeepLesion) stays as is.
    obs = [
        LineObs(-1, line([40, 45], [60, 56]), 7, "short"),
        LineObs(-1, line([50, 20], [50, 80]), 7, "long"),
    ]
    out = s.sync(obs)
    les = s.lesions[7]
    np.testing.assert_allclose(les.recist.short_axis, [[40, 45], [60, 56]])
    np.testing.assert_allclose(les.recist.long_axis, [[50, 20], [50, 80]])
    assert [r.lesion_id for r in out.segment] == [7]


def test_bad_shapes_are_dropped_with_a_message():
    s = AnnotationSession((100, 100))
    out = s.sync(
        [
            LineObs(-1, line([10, 10], [10, 10])),  # a click, zero length
            LineObs(-1, line([0, 0], [0, 10], [10, 10], [10, 0]), shape_type="rectangle"),
        ]
    )
    assert not s.lesions and not s.layer_lines() and out.rewrite
    assert any("zero-length" in m for m in out.messages)
    assert any("not lines" in m for m in out.messages)


def test_a_pair_outside_the_image_is_invalid():
    s = AnnotationSession((50, 50))
    # Endpoints past the border are clipped onto it (along the line), not refused.
    out = add_pair(s, line([10, 10], [10, 70]), line([0, 40], [20, 40]))
    assert s.lesions[1].status == "pending"
    assert s.lines[s.lesions[1].long_id][:, 1].max() == pytest.approx(49.5)
    # A line entirely outside cannot be clipped: refused with the reason.
    s = AnnotationSession((50, 50))
    out = s.sync(observe(s, line([60, 10], [60, 40])))
    out = s.sync(observe(s, line([50, 20], [70, 20])))
    assert any("outside" in m for m in out.messages)


# -- edits, deletion, commit, undo ---------------------------------------------------


def two_lesions() -> AnnotationSession:
    s = AnnotationSession((200, 200))
    add_pair(s, line([50, 20], [50, 80]), line([30, 50], [70, 50]))
    add_pair(s, line([150, 100], [150, 180]), line([130, 140], [170, 140]))
    return s


def test_editing_one_lesion_resegments_only_it_and_stales_old_requests():
    s = two_lesions()
    g1, g2 = s.lesions[1].generation, s.lesions[2].generation
    old2 = ann.SegmentRequest(2, g2, s.lesions[2].recist)
    out = s.sync(observe(s, edit={s.lesions[2].short_id: line([120, 130], [180, 130])}))
    assert [r.lesion_id for r in out.segment] == [2]
    assert s.lesions[1].generation == g1 and s.lesions[2].generation == g2 + 1
    assert not s.is_current(old2)
    assert s.is_current(ann.SegmentRequest(1, g1, s.lesions[1].recist))
    assert not s.accept(old2, ShapeResult(old2.recist, (0, 0), np.ones((2, 2), bool), np.ones((2, 2))), None)


def test_moving_the_long_axis_carries_the_short_axis_along():
    s = two_lesions()
    les = s.lesions[1]
    moved = line([55, 23], [55, 83])  # shifted by (5, 3)
    out = s.sync(observe(s, edit={les.long_id: moved}))
    np.testing.assert_allclose(s.lesions[1].recist.long_axis, moved)
    np.testing.assert_allclose(s.lesions[1].recist.short_axis, [[35, 53], [75, 53]])
    assert [r.lesion_id for r in out.segment] == [1]


def test_deleting_lines_clears_only_that_lesion():
    s = two_lesions()
    s.lesions[2].box = (None, 120, 90, 60, 100)
    out = s.sync(observe(s, drop=(s.lesions[2].short_id,)))
    assert s.lesions[2].status == "open" and s.lesions[2].recist is None
    assert out.clear == [(2, (None, 120, 90, 60, 100))] and not out.segment
    out = s.sync(observe(s, drop=(s.lesions[2].long_id,)))
    assert 2 not in s.lesions and [c[0] for c in out.clear] == [2]
    assert s.lesions[1].status == "pending"


def test_committed_lesions_are_locked():
    s = two_lesions()
    s.commit([1])
    before = s.lines[s.lesions[1].long_id].copy()
    out = s.sync(observe(s, edit={s.lesions[1].long_id: line([0, 0], [0, 90])}))
    np.testing.assert_allclose(s.lines[s.lesions[1].long_id], before)
    assert out.rewrite and not out.segment and any("committed" in m for m in out.messages)
    out = s.sync(observe(s, drop=tuple(s.lesions[1].line_ids)))
    assert 1 in s.lesions and len(s.layer_lines()) == 4 and not out.clear
    assert any("committed" in m for m in s.delete([1]).messages) and 1 in s.lesions
    s.uncommit([1])
    s.delete([1])
    assert 1 not in s.lesions and len(s.layer_lines()) == 2


def test_undo_restores_geometry_and_requests_new_masks():
    s = two_lesions()
    original = s.lesions[2].recist.short_axis.copy()
    s.lesions[2].status = "done"
    s.lesions[2].box = (None, 1, 2, 3, 4)
    s.sync(observe(s, edit={s.lesions[2].short_id: line([120, 130], [180, 130])}))
    out = s.undo()
    np.testing.assert_allclose(s.lesions[2].recist.short_axis, original)
    assert [r.lesion_id for r in out.segment] == [2]
    # Undo of the creation of lesion 2 (both of its lines) removes it.
    s.undo()
    out = s.undo()
    assert 2 not in s.lesions and any(c[0] == 2 for c in out.clear)
    assert s.lesions[1].recist is not None
    # Undo past the start is a message, not an error.
    while s.can_undo:
        s.undo()
    assert s.undo().messages == ["nothing to undo"]


def test_undo_keeps_unchanged_results():
    s = two_lesions()
    req = ann.SegmentRequest(1, s.lesions[1].generation, s.lesions[1].recist)
    mask = np.ones((5, 5), bool)
    s.accept(req, ShapeResult(req.recist, (10, 10), mask, mask.astype(np.float32), cluster=2, confidence=0.9), (None, 10, 10, 5, 5))
    s.sync(observe(s, edit={s.lesions[2].short_id: line([120, 130], [180, 130])}))
    out = s.undo()
    assert all(r.lesion_id != 1 for r in out.segment)
    assert s.lesions[1].status == "done" and s.lesions[1].cluster == 2


# -- results, table ----------------------------------------------------------------


def test_table_rows_in_mm_with_disagreement_flag():
    s = AnnotationSession((100, 100), spacing=(0.5, 0.8))
    add_pair(s, line([50, 20], [50, 80]), line([30, 50], [70, 50]))
    req = ann.SegmentRequest(1, s.lesions[1].generation, s.lesions[1].recist)
    measured = Recist([[50, 20], [50, 100]], [[30, 50], [70, 50]])  # L 30% longer
    mask = np.zeros((10, 10), bool)
    mask[:4, :5] = True
    res = ShapeResult(req.recist, (0, 0), mask, mask.astype(np.float32), cluster=1, confidence=0.75, measured=measured)
    assert s.accept(req, res, (None, 0, 0, 10, 10))
    [row] = s.table_rows()
    assert row["unit"] == "mm"
    assert row["long_drawn"] == pytest.approx(60 * 0.8) and row["short_drawn"] == pytest.approx(40 * 0.5)
    assert row["long_measured"] == pytest.approx(80 * 0.8)
    assert row["disagreement"] == pytest.approx(1 / 3) and row["flag"]
    assert row["area"] == pytest.approx(20 * 0.5 * 0.8)
    assert (row["cluster"], row["confidence"], row["status"]) == (1, 0.75, "done")
    label = next(v.label for v in s.layer_lines() if v.axis == "long")
    assert label == "#1 L 48.0 × W 20.0 mm"


def test_failed_segmentation_keeps_the_lines():
    s = two_lesions()
    req = ann.SegmentRequest(1, s.lesions[1].generation, s.lesions[1].recist)
    s.lesions[1].box = (None, 0, 0, 4, 4)
    assert s.fail(req, "boom") == (None, 0, 0, 4, 4)
    assert s.lesions[1].status == "failed" and "boom" in s.table_rows()[0]["status"]
    assert len(s.layer_lines()) == 4 and s.lesions[1].recist is not None
    assert [r.lesion_id for r in s.resegment().segment] == [1, 2]


def test_paste_never_eats_a_neighbour_and_clear_only_removes_its_own():
    labels = np.zeros((20, 20), np.uint16)
    labels[5:10, 5:10] = 2
    mask = np.ones((8, 8), bool)
    res = ShapeResult(Recist([[0, 0], [0, 5]], [[-2, 2], [2, 2]]), (3, 3), mask, mask.astype(np.float32))
    idx, box = ann.paste_indices(labels, 1, res, None)
    labels[idx] = 1
    assert box == (None, 3, 3, 8, 8)
    assert (labels[5:10, 5:10] == 2).all()
    assert (labels == 1).sum() == 64 - 25
    labels[ann.clear_indices(labels, 1, box)] = 0
    assert (labels == 1).sum() == 0 and (labels == 2).sum() == 25
    # A crop reaching past the image border is clipped; volumes get the slice index.
    vol = np.zeros((3, 6, 6), np.uint16)
    idx, box = ann.paste_indices(vol, 4, ShapeResult(res.recist, (-2, 3), mask, mask), 1)
    vol[idx] = 4
    assert box == (1, 0, 3, 6, 3) and (vol[1, :, 3:] == 4).all() and (vol == 4).sum() == 18


# -- segmenters ------------------------------------------------------------------------


def _isic(stem: str):
    from napari_recist_seg.data import read_image, read_mask

    if not (ISIC / "images").is_dir():
        pytest.skip(f"real ISIC data not found at {ISIC}")
    return read_image(ISIC / "images" / f"{stem}.jpg").array, read_mask(ISIC / "masks" / f"{stem}_segmentation.png")


def test_ellipse_segmenter_equals_the_full_size_ellipse_on_real_images():
    from napari_recist_seg.targets import ellipse_mask

    for stem in ("ISIC_0000048", "ISIC_0000057"):  # lesions far smaller than the image
        image, expert = _isic(stem)
        r = recist_from_mask(expert)
        [res] = ShapeSegmenter("ellipse").segment(image, [r])
        assert res.mask.size < image.shape[0] * image.shape[1] / 2  # a crop, not the image
        np.testing.assert_array_equal(res.full_mask(image.shape), ellipse_mask(r, image.shape))
        assert res.measured is not None and res.measured.long_length == pytest.approx(r.long_length, rel=0.05)


def test_grabcut_segmenter_on_a_real_image_matches_targets():
    from napari_recist_seg.targets import grabcut_mask

    image, expert = _isic("ISIC_0000013")
    r = recist_from_mask(expert)
    [res] = ShapeSegmenter("grabcut").segment(image, [r])
    full = res.full_mask(image.shape)
    ref = grabcut_mask(image, r)
    inter = np.logical_and(full, ref).sum()
    assert 2 * inter / (full.sum() + ref.sum()) > 0.95


def test_run_requests_isolates_a_failing_lesion():
    class Picky:
        def segment(self, image, recists):
            out = []
            for r in recists:
                if r.long_length > 50:
                    raise ValueError("too long for me")
                out.append(ShapeSegmenter("ellipse").segment_one(image, r))
            return out

    image = np.zeros((100, 100), np.uint8)
    ok = ann.SegmentRequest(1, 1, Recist([[50, 30], [50, 60]], [[40, 45], [60, 45]]))
    bad = ann.SegmentRequest(2, 1, Recist([[10, 10], [10, 90]], [[0, 50], [20, 50]]))
    click = ann.ClickRequest(1, (50.0, 50.0))
    outcomes = {(type(o.request).__name__, getattr(o.request, "lesion_id", 0)): o for o in ann.run_requests(Picky(), image, [ok, bad, click])}
    assert outcomes[("SegmentRequest", 1)].error is None and outcomes[("SegmentRequest", 1)].result.mask.any()
    assert "too long" in outcomes[("SegmentRequest", 2)].error
    assert "cannot segment from a click" in outcomes[("ClickRequest", 0)].error


# -- files -----------------------------------------------------------------------------


def test_recist_csv_status_column_round_trip_restores_committed(tmp_path):
    from napari_recist_seg.data import read_recist_csv

    s = two_lesions()
    s.commit([1])
    s.lesions[2].edited = True
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    path = ann.export_recist_csv(tmp_path / "r.csv", s, image)
    header = path.read_text().splitlines()[0].split(",")
    assert header[-1] == "status"
    back = read_recist_csv(path)
    assert {b.lesion: b.status for b in back} == {1: "committed", 2: "draft+edited"}
    s2 = AnnotationSession((100, 100))
    for b in back:
        s2.add_recist(b.recist, lesion_id=b.lesion)
    assert not any(les.committed for les in s2.lesions.values())
    out = ann.restore_states(s2, back)
    assert out.rewrite and s2.lesions[1].committed and not s2.lesions[2].committed
    assert not ann.restore_states(s2, back).rewrite  # already committed: nothing to redraw
    # Imported next to a lesion that already has id 1: the CSV's lesion 1 gets a new id,
    # and the lesion already there stays a draft.
    s3 = AnnotationSession((100, 100))
    s3.add_recist(Recist([[60, 60], [60, 90]], [[50, 75], [70, 75]]), lesion_id=1)
    for b in back:
        s3.add_recist(b.recist, lesion_id=b.lesion)
    ann.restore_states(s3, back)
    assert [les.committed for les in sorted(s3.lesions.values(), key=lambda les: les.id)] == [False, True, False]


def test_recist_csv_without_status_column_reads_as_before(tmp_path):
    from napari_recist_seg.data import RecistCsvError, read_recist_csv
    from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv

    rec = RecistRecord(tmp_path / "a.png", 1, Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]]))
    write_recist_csv(tmp_path / "old.csv", [rec])
    assert "status" not in (tmp_path / "old.csv").read_text()  # bulk job's files unchanged
    back = read_recist_csv(tmp_path / "old.csv")
    assert back[0].status is None
    s = AnnotationSession((100, 100))
    s.add_recist(back[0].recist, lesion_id=1)
    assert not ann.restore_states(s, back).rewrite and not s.lesions[1].committed
    bad = tmp_path / "bad.csv"
    bad.write_text((tmp_path / "old.csv").read_text().replace("spacing_y", "spacing_y,status", 1).rstrip() + ",lockedd\n")
    with pytest.raises(RecistCsvError, match="line 2, column 'status'.*lockedd"):
        read_recist_csv(bad)


def test_recist_csv_export_round_trip_and_no_silent_overwrite(tmp_path):
    from napari_recist_seg.data import read_recist_csv

    s = two_lesions()
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    path = ann.export_recist_csv(tmp_path / "r.csv", s, image)
    back = read_recist_csv(path)
    assert [b.lesion for b in back] == [1, 2]
    for b in back:
        np.testing.assert_allclose(b.recist.long_axis, s.lesions[b.lesion].recist.long_axis)
        np.testing.assert_allclose(b.recist.short_axis, s.lesions[b.lesion].recist.short_axis)
        assert b.image == image
    text = path.read_text()
    with pytest.raises(FileExistsError):
        ann.export_recist_csv(path, s, image)
    assert path.read_text() == text
    renamed = ann.export_recist_csv(path, s, image, if_exists="rename")
    assert renamed.name == "r-1.csv" and renamed.read_text() == text
    assert ann.records_for_image(back, image, "img") == back
    assert ann.records_for_image(back, tmp_path / "other.png", "other") == back  # one image
    with pytest.raises(ValueError, match="no complete lesion"):
        ann.export_recist_csv(tmp_path / "empty.csv", AnnotationSession((10, 10)), image)


def test_masks_and_measurements_export(tmp_path):
    import nibabel as nib

    from napari_recist_seg.data import read_labels

    vol = np.zeros((4, 10, 12), np.uint16)
    vol[2, 3:6, 4:9] = 3
    path = ann.export_masks(tmp_path / "m.nii.gz", vol, (2.5, 0.7, 0.6))
    np.testing.assert_array_equal(read_labels(path), vol)
    np.testing.assert_allclose(nib.load(str(path)).header.get_zooms()[:3], (0.6, 0.7, 2.5))
    with pytest.raises(FileExistsError):
        ann.export_masks(path, vol)
    with pytest.raises(ValueError, match="nii.gz"):
        ann.export_masks(tmp_path / "m.png", vol)

    s = AnnotationSession((100, 100), spacing=(0.5, 0.5))
    add_pair(s, line([50, 20], [50, 80]), line([30, 50], [70, 50]))
    rows = s.measurement_rows("img.png")
    out = ann.export_measurements(tmp_path / "meas.csv", rows)
    with open(out, newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["image"] == "img.png" and row["lesion"] == "1"
    assert float(row["long_mm"]) == pytest.approx(30.0) and float(row["short_px"]) == pytest.approx(40.0)


def test_save_image_round_trips_through_read_image(tmp_path):
    from napari_recist_seg.data import read_image

    vol = (np.arange(3 * 5 * 7).reshape(3, 5, 7) - 50).astype(np.int16)
    p = ann.save_image(tmp_path / "v.nii.gz", vol, (3.0, 0.5, 0.6))
    img = read_image(p)
    np.testing.assert_array_equal(img.array, vol)
    assert img.spacing == pytest.approx((3.0, 0.5, 0.6))
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(ann.save_image(tmp_path / "c.png", rgb)).array, rgb)
    with pytest.raises(FileExistsError):
        ann.save_image(p, vol)


def test_units_follow_the_layer_scale():
    assert ann.spacing_from_scale((1.0, 1.0)) is None
    assert ann.spacing_from_scale((1.0, 1.0, 1.0)) is None
    assert ann.spacing_from_scale((0.7, 0.7)) == (0.7, 0.7)
    assert ann.spacing_from_scale((5.0, 0.8, 0.9)) == (0.8, 0.9)
    assert ann.format_length(12.345, None) == "12.3 px"
    assert ann.format_length(12.345, (0.5, 0.5), 6.1725) == "6.2 mm"


def test_the_annotator_loads_the_default_model_with_flip_tta():
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor

    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("the default model is not installed")
    seg = ann.load_segmenter("default", device="cpu")
    assert seg.tta == ann.segmenters.ANNOTATOR_TTA == "flip"
    assert ann.segmenter_name(seg) == "default model (A1+L, resnet18, flip TTA)"  # the dock says so
    samples = Path(__file__).resolve().parents[1] / "napari_recist_seg" / "sample_data"
    image = read_image(samples / "ISIC_0000021.jpg").array
    h, w = image.shape[:2]
    r = Recist([[h * 0.3, w * 0.5], [h * 0.7, w * 0.5]], [[h * 0.5, w * 0.4], [h * 0.5, w * 0.6]])
    plain = Predictor.load(None, device="cpu")
    [a] = seg.segment(image, [r])
    [b] = plain.segment(image, [r], tta="flip")
    [c] = plain.segment(image, [r])
    np.testing.assert_array_equal(a.probability, b.probability)
    assert not np.array_equal(a.probability, c.probability)  # the mirrors did change it


def test_undo_with_a_kept_label_image_gives_it_back_and_the_results_as_they_were():
    # A session that keeps the label image (the annotator's): undoing a commit after a
    # 3D result returns the labels of before the commit and the lesion without its
    # volume; a worker's answer for the undone state is refused; nothing is re-segmented.
    labels = np.zeros((3, 20, 20), np.uint16)
    labels[1, 5:10, 5:10] = 1
    s = AnnotationSession((20, 20), n_slices=3)
    s.labels_state = lambda: ann.LabelsState.of(labels)
    s.add_recist(Recist([[5, 5], [9, 9]], [[5, 9], [9, 5]], slice_index=1))
    les = s.lesions[1]
    req = ann.SegmentRequest(1, les.generation, les.recist)
    mask = labels[1] == 1
    assert s.accept(req, ShapeResult(req.recist, (0, 0), mask, mask.astype(np.float32)), (1, 5, 5, 5, 5))
    s.commit()
    vreq = s.volume_request(1, labels)
    labels[0:3, 5:10, 5:10] = 1  # the propagated lesion
    s.set_volume(1, ann.measure_volume(labels, 1, None))
    out = s.undo()
    assert out.segment == [] and out.clear == []
    np.testing.assert_array_equal(out.labels.dense(), (np.arange(3) == 1)[:, None, None] * (labels == 1))
    les = s.lesions[1]
    assert not les.committed and les.volume is None and les.status == "done" and les.area_px == 25
    assert not s.is_volume_current(vreq) and not s.is_current(req)
