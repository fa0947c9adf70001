"""The RECIST CSV: exact round trips, path handling, and bad rows named by line/column."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg.data.recist_csv import (
    RECIST_COLUMNS,
    RecistCsvError,
    RecistRecord,
    read_recist_csv,
    write_recist_csv,
)
from napari_recist_seg.recist import Recist

HEADER = ",".join(RECIST_COLUMNS)


def _rec(image: Path, lesion: int, **kw) -> RecistRecord:
    return RecistRecord(image, lesion, Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]], **kw))


def test_round_trip_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    records = []
    for i in range(20):
        long_axis = rng.uniform(0, 3000, size=(2, 2))  # big images: many digits
        short_axis = rng.uniform(0, 3000, size=(2, 2))
        spacing = None if i % 3 == 0 else tuple(rng.uniform(0.05, 5, size=2))
        slice_index = None if i % 2 else int(rng.integers(0, 300))
        records.append(
            RecistRecord(tmp_path / "images" / f"img{i % 7}.png", i,
                         Recist(long_axis, short_axis, slice_index=slice_index,
                                spacing=spacing))
        )
    records.append(_rec(tmp_path / "images" / "tiny.png", 1))
    records[-1].recist.long_axis[0, 0] = 1e-7  # scientific notation round trip
    csv_path = tmp_path / "recist.csv"
    write_recist_csv(csv_path, records)
    back = read_recist_csv(csv_path)
    assert len(back) == len(records)
    for a, b in zip(records, back):
        assert b.image == a.image and b.lesion == a.lesion
        assert b.recist.long_axis.tolist() == a.recist.long_axis.tolist()  # bit-exact
        assert b.recist.short_axis.tolist() == a.recist.short_axis.tolist()
        assert b.recist.slice_index == a.recist.slice_index
        assert b.recist.spacing == a.recist.spacing
        assert b.slice_index == a.slice_index


def test_written_text_follows_design(tmp_path: Path) -> None:
    r = Recist([[10, 12], [10, 52.5]], [[0, 30], [20, 31]], slice_index=4, spacing=(0.5, 0.8))
    write_recist_csv(tmp_path / "out" / "r.csv", [RecistRecord(tmp_path / "images" / "a.nii.gz", 2, r)])
    lines = (tmp_path / "out" / "r.csv").read_text().splitlines()
    assert lines[0] == HEADER
    # x = col, y = row; spacing_x = col mm, spacing_y = row mm; image relative to the CSV.
    assert lines[1] == "../images/a.nii.gz,2,4,12,10,52.5,10,30,0,31,20,0.8,0.5"


def test_read_resolves_and_maps_spacing(tmp_path: Path) -> None:
    abs_img = tmp_path / "elsewhere" / "b.png"
    (tmp_path / "r.csv").write_text(
        "\ufeff Image , LESION,slice,long_x1,long_y1,long_x2,long_y2,short_x1,short_y1,"
        "short_x2,short_y2,spacing_x,spacing_y,note\n"
        "images/a.png,1,,0,0,30,40,20,10,10,30,0.5,2,hello\n"
        f"{abs_img},3,7,0,0,10,0,5,-2,5,2,,,\n"
        "\n"
    )
    recs = read_recist_csv(tmp_path / "r.csv")
    assert [r.lesion for r in recs] == [1, 3]
    assert recs[0].image == tmp_path / "images" / "a.png"
    assert recs[1].image == abs_img
    a = recs[0].recist
    assert a.slice_index is None and recs[1].recist.slice_index == 7
    assert a.spacing == (2.0, 0.5)  # (row_mm, col_mm) = (spacing_y, spacing_x)
    assert a.long_axis.tolist() == [[0, 0], [40, 30]]  # (row, col) = (y, x)
    assert a.long_length == 50.0
    assert a.long_length_mm == pytest.approx(math.hypot(40 * 2.0, 30 * 0.5))
    assert recs[1].recist.spacing is None


def test_slice_and_spacing_columns_optional(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(
        "image,lesion,long_x1,long_y1,long_x2,long_y2,short_x1,short_y1,short_x2,short_y2\n"
        "a.png,1,0,0,10,0,5,-2,5,2\n"
    )
    (rec,) = read_recist_csv(tmp_path / "r.csv")
    assert rec.recist.slice_index is None and rec.recist.spacing is None


def _bad(tmp_path: Path, row: str) -> str:
    (tmp_path / "bad.csv").write_text(
        HEADER + "\n" + "a.png,1,,0,0,10,0,5,-2,5,2,,\n" + row + "\n"
    )
    with pytest.raises(RecistCsvError) as info:
        read_recist_csv(tmp_path / "bad.csv")
    return str(info.value)


@pytest.mark.parametrize(
    "row, column, reason",
    [
        ("b.png,1,,0,0,ten,0,5,-2,5,2,,", "long_x2", "not a number"),
        ("b.png,1,,0,0,10,0,5,-2,5,,,", "short_y2", "empty coordinate"),
        ("b.png,1,,0,0,10,0,nan,-2,5,2,,", "short_x1", "not a finite number"),
        ("b.png,x,,0,0,10,0,5,-2,5,2,,", "lesion", "not an integer"),
        ("b.png,1.5,,0,0,10,0,5,-2,5,2,,", "lesion", "not an integer"),
        ("b.png,1,2.5,0,0,10,0,5,-2,5,2,,", "slice", "not an integer"),
        ("b.png,1,-1,0,0,10,0,5,-2,5,2,,", "slice", "negative"),
        ("b.png,1,,0,0,10,0,5,-2,5,2,0.5,", "spacing_y", "both spacing_x and spacing_y"),
        ("b.png,1,,0,0,10,0,5,-2,5,2,0,1", "spacing_x", "positive"),
        (",1,,0,0,10,0,5,-2,5,2,,", "image", "empty image path"),
    ],
)
def test_bad_rows_name_line_and_column(tmp_path: Path, row: str, column: str, reason: str) -> None:
    msg = _bad(tmp_path, row)
    assert "bad.csv" in msg and "line 3" in msg
    assert f"column '{column}'" in msg
    assert reason in msg


def test_duplicate_lesion_rejected(tmp_path: Path) -> None:
    msg = _bad(tmp_path, "./a.png,1,,1,1,10,0,5,-2,5,2,,")
    assert "line 3" in msg and "line 2" in msg and "lesion 1" in msg


def test_missing_columns_listed(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,long_x1,long_y1,long_x2,long_y2,short_x1\n")
    with pytest.raises(RecistCsvError) as info:
        read_recist_csv(tmp_path / "m.csv")
    msg = str(info.value)
    for col in ("lesion", "short_y1", "short_x2", "short_y2"):
        assert col in msg.split("missing required column(s):")[1].split("(")[0]
    assert "long_x1" not in msg.split("missing required column(s):")[1].split("(")[0]


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(RecistCsvError, match="not found"):
        read_recist_csv(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(RecistCsvError, match="empty file"):
        read_recist_csv(tmp_path / "empty.csv")


def test_header_only_gives_no_records(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text(HEADER + "\n")
    assert read_recist_csv(tmp_path / "h.csv") == []


def test_quoted_paths_with_commas(tmp_path: Path) -> None:
    img = tmp_path / "my, images" / "x.png"
    write_recist_csv(tmp_path / "r.csv", [_rec(img, 1)])
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[1][0] == "my, images/x.png"
    assert read_recist_csv(tmp_path / "r.csv")[0].image == img


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "recist.csv"
    write_recist_csv(target, [_rec(tmp_path / "a.png", 1)])
    before = target.read_text()

    def records():
        yield _rec(tmp_path / "b.png", 1)
        raise RuntimeError("crashed while producing records")

    with pytest.raises(RuntimeError):
        write_recist_csv(target, records())
    with pytest.raises(ValueError, match="appears twice"):
        write_recist_csv(target, [_rec(tmp_path / "a.png", 1), _rec(tmp_path / "a.png", 1)])
    bad = _rec(tmp_path / "c.png", 1)
    bad.recist.long_axis[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        write_recist_csv(target, [bad])
    assert target.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recist.csv"]


def test_a_misspelt_column_is_named_next_to_the_one_missing(tmp_path: Path) -> None:
    header = "image,lesion,slice,long_x1,long_y1,long_x2,long_y_2,short_x1,short_y1,short_x2,short_y2"
    (tmp_path / "t.csv").write_text(header + ",status\n./a.png,1,,1,1,10,0,5,-2,5,2,draft\n")
    with pytest.raises(RecistCsvError) as info:
        read_recist_csv(tmp_path / "t.csv")
    msg = str(info.value)
    assert "missing required column(s): long_y2; found instead: long_y_2 (" in msg
    assert len(msg.splitlines()) == 1 and "status;" not in msg.split("(")[0]
