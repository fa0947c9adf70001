"""Canvas labels of the annotator on the CT sample (issue 13 item 7): crowded lesions
show ``#id`` only, so labels do not run into each other; a lone lesion keeps its lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_recist_seg.annotation import AnnotationSession
from napari_recist_seg.data import read_recist_csv
from napari_recist_seg.recist import Recist

SAMPLES = Path(__file__).resolve().parents[1] / "napari_recist_seg" / "sample_data"


def _labels(session):
    return {v.lesion_id: v.label for v in session.layer_lines() if v.label}


def test_ct_sample_labels_do_not_run_into_each_other():
    s = AnnotationSession((128, 128), n_slices=9)
    for rec in read_recist_csv(SAMPLES / "ct_recist.csv"):
        s.add_recist(rec.recist, lesion_id=rec.lesion)
    labels = _labels(s)
    assert len(labels) == 8
    full = [i for i, text in labels.items() if " L " in text]
    short = [i for i, text in labels.items() if text == f"#{i}"]
    assert sorted(full + short) == list(range(1, 9))
    assert 4 in short and 6 in short  # 5 px apart on the slice: were two long labels on top
    # No two long labels share a row band and a column span (label ~0.4 plane wide).
    anchors = {i: s._plane_coords(s.lines[s.lesions[i].long_id]).min(axis=0) for i in full}
    for a in full:
        for b in full:
            d = np.abs(anchors[a] - anchors[b])
            assert a == b or not (d[0] < 0.06 * 128 and d[1] < 0.4 * 128), (a, b)


def test_a_lone_lesion_keeps_its_lengths_and_other_slices_do_not_crowd_it():
    s = AnnotationSession((128, 128), n_slices=9)
    r = Recist([[40.0, 30], [40, 90]], [[20.0, 60], [60, 60]], slice_index=2)
    s.add_recist(r, lesion_id=1)
    s.add_recist(Recist(r.long_axis + 2, r.short_axis + 2, slice_index=5), lesion_id=2)
    assert _labels(s) == {1: "#1 L 60.0 × W 40.0 px", 2: "#2 L 60.0 × W 40.0 px"}
