"""``segment --window`` (2D) on images that are not CT: the user is told, in one line, which
images the window did not apply to; a CT image is windowed and not named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_recist_seg.data import RecistRecord, write_recist_csv
from napari_recist_seg.recist import Recist

SAMPLE = Path(__file__).resolve().parents[2] / "napari_recist_seg" / "sample_data"


def _inputs(tmp_path: Path) -> tuple[list[Path], Path]:
    photo = tmp_path / "ISIC_0000021.jpg"
    shutil.copy(SAMPLE / photo.name, photo)
    # A CT-like slice in HU: air around a body, a darker disc inside.
    ct = np.full((96, 96), -1000.0, np.float32)
    rr, cc = np.mgrid[:96, :96]
    ct[(rr - 48) ** 2 + (cc - 48) ** 2 <= 40 ** 2] = 60.0
    ct[(rr - 48) ** 2 + (cc - 48) ** 2 <= 10 ** 2] = 10.0
    tifffile.imwrite(tmp_path / "slice.tif", ct)
    records = [
        RecistRecord(photo, 1, Recist(long_axis=[[26, 91], [237, 117]], short_axis=[[110, 46], [95, 172]])),
        RecistRecord(tmp_path / "slice.tif", 1, Recist(long_axis=[[48, 38], [48, 58]],
                                                       short_axis=[[38, 48], [58, 48]])),
    ]
    write_recist_csv(tmp_path / "r.csv", records)
    return [photo, tmp_path / "slice.tif"], tmp_path / "r.csv"


@pytest.mark.parametrize("serial", ["1", "0"])
@pytest.mark.parametrize("window, modality, noted", [
    ("liver", None, ["ISIC_0000021.jpg"]), (None, None, []), ("liver", "ct", [])])
def test_a_window_on_images_that_are_not_ct_is_noted_once(tmp_path, monkeypatch, serial, window,
                                                          modality, noted):
    from napari_recist_seg.jobs.segment import run_segment
    from napari_recist_seg.predict import Predictor

    monkeypatch.setenv("RECIST_SEG_SERIAL", serial)
    files, csv = _inputs(tmp_path)
    report = run_segment(files, tmp_path / "out", recist_csv=csv, window=window, modality=modality,
                         predictor=Predictor.load(None, device="cpu"))
    assert report.processed == 2 and not report.failures
    notes = [n for n in report.notes if "--window applies to CT only" in n]
    if noted:
        assert notes == ["note: --window applies to CT only; 1 image(s) are not CT (ISIC_0000021.jpg): "
                         "they were read as colour / by the percentile rule (--modality ct if they are CT)"]
    else:
        assert notes == []


def test_the_note_names_three_images_and_counts_the_rest():
    from napari_recist_seg.jobs.segment import _window_note

    note = _window_note([f"a{i}.jpg" for i in range(5)])
    assert "5 image(s) are not CT (a0.jpg, a1.jpg, a2.jpg and 2 more)" in note
