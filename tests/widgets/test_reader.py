"""The RECIST CSV reader contribution: which files it claims, what layers it returns,
2D and volume CSVs, bad images, and opening through napari (plugin manifest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg._reader import get_reader, is_recist_csv, read_recist_layers
from napari_recist_seg.data import RecistRecord, read_image, read_recist_csv, write_recist_csv
from napari_recist_seg.recist import Recist

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "napari_recist_seg" / "sample_data"
PLUGIN = "napari-recist-seg"


def test_only_recist_csvs_are_claimed(tmp_path):
    other = tmp_path / "table.csv"
    other.write_text("image,score\na.png,1\n")
    broken = tmp_path / "binary.csv"
    broken.write_bytes(b"\xff\xfe\x00\x00garbage")
    assert get_reader(str(other)) is None
    assert get_reader(str(broken)) is None
    assert get_reader(str(tmp_path / "missing.csv")) is None
    assert get_reader(str(SAMPLES / "ISIC_0000048.jpg")) is None
    assert get_reader([str(SAMPLES / "ct_recist.csv"), str(other)]) is None
    assert get_reader(str(SAMPLES / "ct_recist.csv")) is read_recist_layers
    assert get_reader([str(SAMPLES / "dermoscopy_recist.csv")]) is read_recist_layers
    # Header names are matched like the CSV reader does (case, spaces).
    upper = tmp_path / "upper.csv"
    upper.write_text((SAMPLES / "dermoscopy_recist.csv").read_text().replace("long_x1", " LONG_X1 "))
    assert is_recist_csv(upper)


def test_2d_csv_gives_image_and_line_layers():
    layers = read_recist_layers(SAMPLES / "dermoscopy_recist.csv")
    records = read_recist_csv(SAMPLES / "dermoscopy_recist.csv")
    assert [kind for _, _, kind in layers] == ["image", "shapes"] * len(records)
    for (img, ikw, _), (lines, skw, _), rec in zip(layers[::2], layers[1::2], records):
        assert ikw["rgb"] and img.shape == (256, 256, 3)
        assert ikw["name"] == rec.image.name[:-4] and skw["name"] == f"{ikw['name']} RECIST"
        assert Path(ikw["metadata"]["image_path"]) == rec.image
        assert skw["ndim"] == 2 and skw["shape_type"] == "line"
        np.testing.assert_allclose(lines[0], rec.recist.long_axis)
        np.testing.assert_allclose(lines[1], rec.recist.short_axis)
        assert list(skw["features"]["axis"]) == ["long", "short"]
        assert list(skw["features"]["lesion"]) == [rec.lesion, rec.lesion]
        assert skw["features"]["label"][0].startswith(f"#{rec.lesion} L ")


def test_volume_csv_gives_3d_lines_on_their_slices_and_a_ct_window():
    layers = read_recist_layers(SAMPLES / "ct_recist.csv")
    (vol, ikw, _), (lines, skw, _) = layers
    assert vol.ndim == 3 and vol.dtype == np.int16
    assert ikw["contrast_limits"] == (-160.0, 240.0)  # soft-tissue window, HU data
    assert skw["ndim"] == 3
    records = read_recist_csv(SAMPLES / "ct_recist.csv")
    assert len(lines) == 2 * len(records)
    for rec, long_line in zip(records, lines[::2]):
        np.testing.assert_allclose(long_line[:, 0], rec.recist.slice_index)
        np.testing.assert_allclose(long_line[:, 1:], rec.recist.long_axis)


def test_spacing_from_the_csv_becomes_the_layer_scale(tmp_path):
    shutil.copy(SAMPLES / "ISIC_0000048.jpg", tmp_path / "a.jpg")
    r = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]], spacing=(0.4, 0.5))
    write_recist_csv(tmp_path / "r.csv", [RecistRecord(tmp_path / "a.jpg", 3, r)])
    (_, ikw, _), (_, skw, _) = read_recist_layers(tmp_path / "r.csv")
    assert ikw["scale"] == (0.4, 0.5) and skw["scale"] == (0.4, 0.5)
    assert skw["features"]["label"][0] == "#3 L 20.0 × W 8.0 mm"


def test_unreadable_images_are_reported(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    r = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]])
    write_recist_csv(tmp_path / "r.csv", [RecistRecord(tmp_path / "bad.png", 1, r)])
    with pytest.raises(ValueError, match="bad.png"):
        read_recist_layers(tmp_path / "r.csv")


def test_a_slice_for_a_2d_image_is_skipped(tmp_path):
    shutil.copy(SAMPLES / "ISIC_0000048.jpg", tmp_path / "a.jpg")
    good = Recist([[10, 10], [10, 50]], [[0, 30], [20, 30]])
    bad = Recist([[60, 10], [60, 50]], [[50, 30], [70, 30]], slice_index=2)
    write_recist_csv(
        tmp_path / "r.csv", [RecistRecord(tmp_path / "a.jpg", 1, good), RecistRecord(tmp_path / "a.jpg", 2, bad)]
    )
    (_, _, _), (lines, skw, _) = read_recist_layers(tmp_path / "r.csv")
    assert list(skw["features"]["lesion"]) == [1, 1]


def test_napari_opens_a_recist_csv_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(SAMPLES / "ct_recist.csv"), plugin=PLUGIN)
    image, shapes = layers
    assert type(image).__name__ == "Image" and type(shapes).__name__ == "Shapes"
    np.testing.assert_array_equal(image.data, read_image(SAMPLES / "lits117_slab.nii.gz").array)
    assert shapes.ndim == 3 and len(shapes.data) == 2 * len(read_recist_csv(SAMPLES / "ct_recist.csv"))
    assert set(shapes.shape_type) == {"line"}
