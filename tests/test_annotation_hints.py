"""Session rules behind two issue-13 fixes: lines that arrive with the CSV's ``status``
(``viewer.open`` on a RECIST CSV) come in committed; a shape removed at once (a
rectangle) is its own undo step."""

from __future__ import annotations

import numpy as np

from napari_recist_seg.annotation import AnnotationSession, LineObs

LONG, SHORT = np.array([[50.0, 20], [50, 80]]), np.array([[30.0, 45], [70, 55]])


def test_hinted_pairs_come_in_committed_only_when_both_lines_say_so():
    s = AnnotationSession((100, 100))
    s.sync([
        LineObs(-1, LONG, 3, "long", "line", "committed"),
        LineObs(-1, SHORT, 3, "short", "line", "committed"),
        LineObs(-1, LONG + 10, 4, "long", "line", "draft"),
        LineObs(-1, SHORT + 10, 4, "short", "line", "draft"),
        LineObs(-1, LONG - 10, 5, "long", "line", None),
        LineObs(-1, SHORT - 10, 5, "short", "line", None),
    ])
    assert {i: les.committed for i, les in s.lesions.items()} == {3: True, 4: False, 5: False}


def test_a_removed_rectangle_is_an_undo_step_that_changes_nothing():
    s = AnnotationSession((100, 100))
    s.sync([LineObs(-1, LONG)])
    obs = [LineObs(v.line_id, v.coords) for v in s.layer_lines()]
    s.sync(obs + [LineObs(-1, SHORT)])
    assert s.lesions[1].short_id is not None
    obs = [LineObs(v.line_id, v.coords) for v in s.layer_lines()]
    out = s.sync(obs + [LineObs(-1, np.array([[5.0, 5], [5, 5], [5, 5], [5, 5]]), shape_type="rectangle")])
    assert out.rewrite and len(s.layer_lines()) == 2
    out = s.undo()
    assert s.lesions[1].short_id is not None  # was: the short axis undone
    assert out.messages == ["nothing else undone: the removed shape(s) stay removed"]
    s.undo()
    assert s.lesions[1].short_id is None
