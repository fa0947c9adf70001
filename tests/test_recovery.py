"""The annotator's recovery entries (annotation.recovery): plain files, no Qt."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from napari_recist_seg.annotation import AnnotationSession, recovery
from napari_recist_seg.recist import Recist


def _session() -> AnnotationSession:
    s = AnnotationSession((100, 100))
    s.add_recist(Recist([[20.0, 10], [20, 50]], [[10, 30], [30, 30]]), lesion_id=1)
    s.add_recist(Recist([[70.0, 50], [70, 90]], [[60, 70], [80, 70]]), lesion_id=2)
    s.commit([1])
    s.lesions[2].edited = True
    return s


def test_recovery_root_env_override_then_xdg_then_home(monkeypatch, tmp_path):
    assert recovery.recovery_root({recovery.ENV_VAR: str(tmp_path)}) == tmp_path
    assert recovery.recovery_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "napari-recist-seg" / "recovery"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert recovery.recovery_root({}) == tmp_path / ".cache" / "napari-recist-seg" / "recovery"


def test_image_key_tells_content_path_and_shape_apart(tmp_path):
    a = np.arange(64, dtype=np.uint8).reshape(8, 8)
    k = recovery.image_key(a, tmp_path / "a.png", "a")
    assert k == recovery.image_key(a.copy(), tmp_path / "a.png", "other name")  # a file: its path
    assert k != recovery.image_key(a, tmp_path / "b.png", "a")
    assert k != recovery.image_key(a.reshape(4, 16), tmp_path / "a.png", "a")
    b = a.copy()
    b[0, 0] += 1
    assert k != recovery.image_key(b, tmp_path / "a.png", "a")
    assert recovery.image_key(a, None, "x") != recovery.image_key(a, None, "y")


def test_entry_round_trip_lines_statuses_labels_and_missing_lesions(tmp_path):
    s = _session()
    labels = np.zeros((100, 100), np.uint16)
    labels[15:25, 10:50] = 1
    labels[60:80, 65:75] = 2
    labels[0, 0] = 300  # ids above 255 survive
    snap = recovery.snapshot("k1", s, labels, None, "img", now=1000.0)
    assert recovery.snapshot("k1", s, labels, None, "img", copy_labels=False).labels is labels  # big CT
    labels[:] = 0  # the snapshot is a copy: later edits do not leak into the write
    folder = recovery.write_snapshot(tmp_path, snap)
    meta = json.loads((folder / "entry.json").read_text())
    assert meta == {"image_path": None, "name": "img", "shape": [100, 100], "key": "k1",
                    "written_by": "napari-recist-seg recovery", "saved_at": 1000.0, "n_lesions": 2}
    entry = recovery.read_entry(tmp_path, "k1", (100, 100))
    assert {r.lesion: r.status for r in entry.records} == {1: "committed", 2: "draft+edited"}
    assert entry.labels[0, 0] == 300 and int((entry.labels == 2).sum()) == 200
    assert [r.recist.long_axis.tolist() for r in entry.records] == [
        s.lesions[1].recist.long_axis.tolist(), s.lesions[2].recist.long_axis.tolist()]
    assert recovery.read_entry(tmp_path, "k1", (100, 101)) is None  # another image's shape
    assert recovery.read_entry(tmp_path, "nope", (100, 100)) is None
    fresh = AnnotationSession((100, 100))
    assert [r.lesion for r in recovery.missing_lesions(entry, fresh)] == [1, 2]
    fresh.add_recist(s.lesions[2].recist, lesion_id=7)  # held (same long axis), any id
    assert [r.lesion for r in recovery.missing_lesions(entry, fresh)] == [1]
    assert recovery.missing_lesions(entry, s) == []


def test_an_empty_session_writes_an_entry_with_nothing_to_offer(tmp_path):
    s = _session()
    recovery.write_snapshot(tmp_path, recovery.snapshot("k", s, np.zeros((100, 100), np.uint8), None, "i"))
    empty = AnnotationSession((100, 100))
    recovery.write_snapshot(tmp_path, recovery.snapshot("k", empty, np.zeros((100, 100), np.uint8), None, "i"))
    entry = recovery.read_entry(tmp_path, "k", (100, 100))
    assert entry.records == [] and entry.meta["n_lesions"] == 0


def test_entries_older_than_30_days_are_removed(tmp_path):
    s = _session()
    lab = np.zeros((100, 100), np.uint8)
    for key in ("old", "new"):
        recovery.write_snapshot(tmp_path, recovery.snapshot(key, s, lab, None, key))
    (tmp_path / "writing").mkdir()  # no entry.json yet: left alone
    now = time.time()
    old = now - 31 * 86400
    os.utime(tmp_path / "old" / "entry.json", (old, old))
    assert recovery.remove_old_entries(tmp_path, now=now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "writing"]
    assert recovery.remove_old_entries(tmp_path / "absent") == 0


def test_old_folders_that_are_not_wholly_ours_are_never_removed(tmp_path):
    # RECIST_SEG_RECOVERY_DIR may point at a folder of the user's own: only folders
    # that are entirely an entry of ours may go.
    s = _session()
    lab = np.zeros((100, 100), np.uint8)
    recovery.write_snapshot(tmp_path, recovery.snapshot("mixed", s, lab, None, "mixed"))
    (tmp_path / "mixed" / "my_notes.txt").write_text("the user's file")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "entry.json").write_text('{"key": "project"}')  # not written by us
    recovery.write_snapshot(tmp_path, recovery.snapshot("moved", s, lab, None, "moved"))
    (tmp_path / "moved").rename(tmp_path / "renamed")  # its key no longer names it
    now = time.time()
    old = now - 31 * 86400
    for name in ("mixed", "project", "renamed"):
        os.utime(tmp_path / name / "entry.json", (old, old))
    assert recovery.remove_old_entries(tmp_path, now=now) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "project", "renamed"]
    assert (tmp_path / "mixed" / "my_notes.txt").read_text() == "the user's file"
