"""``recist-seg segment SERIES_FOLDER --recist CSV [--3d]``: a DICOM series folder that
the CSV names as its image is one volume, not a dataset of 2D slices."""

from __future__ import annotations

import csv

import numpy as np

from napari_recist_seg.cli import main
from napari_recist_seg.data import RecistRecord, write_recist_csv
from napari_recist_seg.data.images import read_image
from napari_recist_seg.recist import Recist


def test_a_series_folder_named_by_the_csv_is_one_volume(lits_dir, tmp_path, write_dicom):
    ct = read_image(lits_dir / "ct.nii.gz").array[6:17]  # LiTS tumour 1 on slice 11 -> 5
    series = tmp_path / "series"
    order = [3, 0, 10, 7, 1, 9, 4, 2, 8, 5, 6]  # files not in slice order
    for i, z in enumerate(order):
        write_dicom(series / f"IM{i:03d}.dcm", (ct[z] + 1024).astype(np.uint16),
                    pixel_spacing=(0.7, 0.7), position_z=2.5 * z, instance=i + 1)
    r = Recist(long_axis=[[59, 27], [66, 45]], short_axis=[[68.92, 32.80], [53.87, 38.65]],
               slice_index=5)
    write_recist_csv(tmp_path / "r.csv", [RecistRecord(series, 1, r)])
    out = tmp_path / "out"
    code = main(["segment", str(series), "--recist", str(tmp_path / "r.csv"), "--3d",
                 "--out", str(out), "-q"])
    assert code == 0 and not (out / "failures.csv").exists()
    [row] = list(csv.DictReader(open(out / "measurements.csv")))
    assert row["slice"] == "5" and int(row["n_slices"]) > 1
    # mm from the series: 0.7 x 0.7 mm pixels, 2.5 mm between the positions.
    # measurements round volumes to 0.1 mm^3 (measurements.volume_mm3_ml)
    assert abs(float(row["volume_mm3"]) - float(row["volume_voxels"]) * 0.7 * 0.7 * 2.5) <= 0.05 + 1e-6
    assert float(row["extent_mm"]) == int(row["n_slices"]) * 2.5
    labels = read_image(out / "series_labels.nii.gz").array
    assert labels.shape == ct.shape and set(np.unique(labels)) == {0, 1}
