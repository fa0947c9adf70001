"""Compressed DICOM as PACS exports it (JPEG-LS, JPEG 2000, RLE, JPEG lossless): the
same pixels and spacing as the uncompressed file, alone and as a series; one line,
with the remedy, when no decoder can read it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from napari_recist_seg.data import dicom as dicom_module
from napari_recist_seg.data.images import ImageReadError, read_image

MR = "MR_small.dcm"  # 64x64 MR, 0.3125 mm, uncompressed


@pytest.mark.parametrize("name, needs_gdcm", [
    ("MR_small_jpeg_ls_lossless.dcm", True),
    ("MR_small_jp2klossless.dcm", False),  # Pillow decodes JPEG 2000
    ("MR_small_RLE.dcm", False),  # pydicom decodes RLE itself
])
def test_compressed_mr_reads_as_the_uncompressed_file(name, needs_gdcm):
    if needs_gdcm:
        pytest.importorskip("gdcm")
    raw = read_image(get_testdata_file(MR))
    img = read_image(get_testdata_file(name))
    np.testing.assert_array_equal(img.array, raw.array)
    assert img.spacing == raw.spacing == (0.3125, 0.3125)
    assert img.modality == raw.modality == "mr"


def test_a_series_of_jpeg_ls_slices_is_one_volume(tmp_path):
    pytest.importorskip("gdcm")
    src = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    series = tmp_path / "series"
    series.mkdir()
    for i, z in enumerate([20.0, 10.0, 15.0]):  # written out of order
        src.ImagePositionPatient = [0.0, 0.0, z]
        src.InstanceNumber = i + 1
        src.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        src.save_as(series / f"im{i}.dcm")
    vol = read_image(series)
    raw = read_image(get_testdata_file(MR)).array
    assert vol.array.shape == (3, 64, 64)
    for k in range(3):
        np.testing.assert_array_equal(vol.array[k], raw)
    np.testing.assert_allclose(vol.spacing, (5.0, 0.3125, 0.3125))


def test_undecodable_pixel_data_is_one_line_naming_the_syntax():
    # 12-bit JPEG Extended: neither GDCM nor Pillow decodes it
    with pytest.raises(ImageReadError) as err:
        read_image(get_testdata_file("JPEG-lossy.dcm"))
    msg = str(err.value)
    assert "\n" not in msg and "JPEG Extended" in msg and "cannot decode" in msg
    assert "plugins: gdcm" in msg or "plugins: pillow" in msg  # one sentence, no ":;"


def test_without_gdcm_the_message_says_how_to_get_a_decoder(tmp_path, monkeypatch):
    real = dicom_module.importlib.util.find_spec
    monkeypatch.setattr(dicom_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gdcm" else real(name, *a))
    path = tmp_path / "lossy.dcm"
    shutil.copy(get_testdata_file("JPEG-lossy.dcm"), path)
    with pytest.raises(ImageReadError) as err:
        read_image(Path(path))
    msg = str(err.value)
    assert "\n" not in msg and "pip install python-gdcm" in msg and "JPEG Extended" in msg
