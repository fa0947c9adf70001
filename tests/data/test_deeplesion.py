"""DeepLesion's DL_info.csv, in its published format, with a 16-bit PNG key slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.data import read_deeplesion_csv as read_via_package
from napari_recist_seg.data.deeplesion import (
    DL_INFO_COLUMNS,
    deeplesion_image_path,
    read_deeplesion_csv,
    read_deeplesion_rows,
)
from napari_recist_seg.data.images import read_image
from napari_recist_seg.data.recist_csv import RecistCsvError

HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,"
    "Measurement_coordinates,Bounding_boxes,Lesion_diameters_Pixel_,"
    "Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
    "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test"
)
# Rows in the published style: quoted comma+space lists, x before y.
ROWS = [
    '000001_01_01_109.png,1,1,1,109,"233.537, 95.0204, 234.057, 106.977, 231.169, 101.605, '
    '236.252, 101.143","226.169, 90.0204, 241.252, 111.977","11.9679, 5.10395",'
    '"0.44666, 0.283207, 0.434438",3,0,"103, 115","0.66, 0.8, 5","512, 512","-175, 275",F,51,3',
    '000001_01_01_109.png,1,1,1,109,"300.5, 200.25, 340.5, 200.25, 320.5, 190.25, 320.5, 215.25",'
    '"295.5, 185.25, 345.5, 220.25","40, 25","0.6, 0.4, 0.5",4,1,"103, 115","0.66, 0.8, 5",'
    '"512, 512","-175, 275",F,51,3',
    '000002_03_01_027.png,2,3,1,27,"10, 20, 50, 20, 30, 10, 30, 30","5, 5, 55, 35","40, 20",'
    '"0.1, 0.1, 0.2",-1,0,"20, 34","0.7, 0.7, 1.25","512, 512","-1350, 150",M,62,1',
]


@pytest.fixture
def deeplesion_dir(tmp_path: Path) -> Path:
    (tmp_path / "DL_info.csv").write_text(HEADER + "\n" + "\n".join(ROWS) + "\n")
    hu = np.full((512, 512), -1000, np.int32)
    hu[90:110, 225:245] = 45  # the lesion of row 1, soft tissue
    folder = tmp_path / "Images_png" / "000001_01_01"
    folder.mkdir(parents=True)
    Image.fromarray((hu + 32768).astype(np.uint16)).save(folder / "109.png")
    return tmp_path


def test_header_matches_published_format() -> None:
    assert ",".join(DL_INFO_COLUMNS) == HEADER


def test_records(deeplesion_dir: Path) -> None:
    recs = read_deeplesion_csv(deeplesion_dir / "DL_info.csv")
    assert len(recs) == 3
    key = deeplesion_dir / "Images_png" / "000001_01_01" / "109.png"
    assert [r.image for r in recs[:2]] == [key, key]
    assert [r.lesion for r in recs] == [1, 2, 1]  # row order within each image
    assert recs[2].image == deeplesion_dir / "Images_png" / "000002_03_01" / "027.png"
    r = recs[0].recist
    # x = col, y = row; long axis first.
    assert r.long_axis.tolist() == [[95.0204, 233.537], [106.977, 234.057]]
    assert r.short_axis.tolist() == [[101.605, 231.169], [101.143, 236.252]]
    assert r.slice_index is None  # the key slice PNG is a 2D image
    assert r.spacing == (0.8, 0.66)  # "x, y, z" -> (row_mm = y, col_mm = x)
    # Lesion_diameters_Pixel_ in the file agrees with the parsed axes.
    assert r.long_length == pytest.approx(11.9679, abs=1e-3)
    assert r.short_length == pytest.approx(5.10395, abs=1e-3)
    r2 = recs[1].recist
    assert r2.long_length_mm == pytest.approx(40 * 0.66)
    assert r2.short_length_mm == pytest.approx(25 * 0.8)


def test_rows_keep_all_fields(deeplesion_dir: Path) -> None:
    rows = read_deeplesion_rows(deeplesion_dir / "DL_info.csv")
    a = rows[0]
    assert a.line == 2 and a.file_name == "000001_01_01_109.png"
    assert a.key_slice == 109 and a.slice_range == (103, 115)
    assert a.spacing_xyz == (0.66, 0.8, 5.0)
    assert a.image_size == (512, 512) and a.window == (-175.0, 275.0)
    assert a.lesion_type == 3 and not a.possibly_noisy and a.split == 3
    assert rows[1].possibly_noisy and rows[2].lesion_type == -1
    assert [r.file_name for r in read_deeplesion_rows(deeplesion_dir / "DL_info.csv", split=1)] == [
        "000002_03_01_027.png"
    ]


def test_key_slice_reads_as_hu_and_recist_fits(deeplesion_dir: Path) -> None:
    rec = read_deeplesion_csv(deeplesion_dir / "DL_info.csv")[0]
    img = read_image(rec.image)
    assert img.hu and img.array.dtype == np.int16 and img.array.shape == (512, 512)
    rc = np.round(rec.recist.crossing).astype(int)
    assert img.array[rc[0], rc[1]] == 45 and img.array[0, 0] == -1000
    rec.recist.validate(img.array.shape)


def test_image_root_variants(deeplesion_dir: Path) -> None:
    by_images_png = read_deeplesion_csv(
        deeplesion_dir / "DL_info.csv", deeplesion_dir / "Images_png"
    )
    assert by_images_png[0].image == deeplesion_dir / "Images_png" / "000001_01_01" / "109.png"
    assert read_via_package(deeplesion_dir / "DL_info.csv")[0].image == by_images_png[0].image
    assert deeplesion_image_path("004408_01_02_088.png", "/x/Images_png").as_posix() == (
        "/x/Images_png/004408_01_02/088.png"
    )


def test_bad_rows(tmp_path: Path) -> None:
    bad = ROWS[2].replace('"10, 20, 50, 20, 30, 10, 30, 30"', '"10, 20, 50, 20, 30, 10, 30"')
    (tmp_path / "DL_info.csv").write_text(HEADER + "\n" + ROWS[0] + "\n" + bad + "\n")
    with pytest.raises(RecistCsvError, match="line 3, column 'Measurement_coordinates': expected 8 numbers, got 7"):
        read_deeplesion_csv(tmp_path / "DL_info.csv")
    bad_sp = ROWS[0].replace('"0.66, 0.8, 5"', '"abc"')
    (tmp_path / "DL_info.csv").write_text(HEADER + "\n" + bad_sp + "\n")
    with pytest.raises(RecistCsvError, match="line 2, column 'Spacing_mm_px_'"):
        read_deeplesion_csv(tmp_path / "DL_info.csv")
    (tmp_path / "other.csv").write_text("image,lesion\n")
    with pytest.raises(RecistCsvError, match="missing column.*File_name"):
        read_deeplesion_csv(tmp_path / "other.csv")
