"""The CT / MR image readers: real DICOMs (pydicom's test files), NIfTI, a DICOM series
folder (sorted by position, broken series refused in one line), DeepLesion PNGs, and
opening through napari with the plugin chosen."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from napari_recist_seg._image_reader import get_image_reader, image_layer_data
from napari_recist_seg._launch import open_viewer
from napari_recist_seg.data.images import ImageReadError, read_dicom_series

PLUGIN = "napari-recist-seg"
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
LITS = Path(__file__).resolve().parents[3] / "shared" / "data" / "lits_case117" / "ct.nii.gz"


def _series(folder: Path, n: int, dz: float = 2.5, skip: tuple[int, ...] = (), uid: str | None = None) -> Path:
    """A series of ``n`` slices made from CT_small.dcm, written in shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(str(CT_SMALL))
    uid = uid or pydicom.uid.generate_uid()
    for k in [3, 0, 4, 1, 2, 5, 6, 7][:n]:
        if k in skip:
            continue
        ds = pydicom.dcmread(str(CT_SMALL))
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + k * dz]
        ds.InstanceNumber = 100 - k  # opposite to the positions: sorting must use them
        px = base.pixel_array.copy()
        px[0, 0] = k  # marks the slice
        ds.PixelData = px.tobytes()
        ds.save_as(str(folder / f"{uid[-6:]}_{k * 7 % 5}_{k}.dcm"))
    return folder


def test_real_ct_and_mr_dicom_files(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(CT_SMALL), plugin=PLUGIN)
    ct = layers[0]
    assert ct.data.shape == (128, 128)
    np.testing.assert_allclose(ct.scale, [0.661468, 0.661468], rtol=1e-5)
    assert ct.metadata["modality"] == "ct" and ct.metadata["spacing_known"]
    assert ct.name == "CT_small"
    # HU: the slope/intercept of the file applied.
    ds = pydicom.dcmread(str(CT_SMALL))
    expect = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(ct.data, expect)
    assert float(np.min(ct.data)) < -800
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)  # soft-tissue window

    mr = viewer.open(str(MR_SMALL), plugin=PLUGIN)[0]
    assert mr.data.shape == (64, 64)
    np.testing.assert_allclose(mr.scale, [0.3125, 0.3125])
    assert mr.metadata["modality"] == "mr"
    # Never a CT window on MR: the 1-99 percentile range of its own values.
    lo, hi = np.percentile(np.asarray(mr.data, float), [1, 99])
    np.testing.assert_allclose(mr.contrast_limits, [lo, hi], rtol=1e-4)


def test_nifti_volume_scale_and_unknown_spacing(make_napari_viewer, tmp_path):
    vol = np.zeros((6, 10, 12), np.int16) - 1000
    vol[2:4, 3:7, 4:9] = 50
    affine = np.diag([0.7, 0.8, 3.0, 1.0])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), str(path))
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin=PLUGIN)[0]
    assert layer.data.shape == (6, 10, 12) and layer.ndim == 3
    np.testing.assert_allclose(layer.scale, [3.0, 0.8, 0.7])
    assert layer.name == "ct" and layer.metadata["modality"] == "ct"
    np.testing.assert_allclose(layer.metadata["affine"], affine)

    # pixdim 1 and neither qform nor sform: the spacing is not known.
    img = nib.Nifti1Image(vol.transpose(2, 1, 0), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    unknown = tmp_path / "unknown.nii"
    nib.save(img, str(unknown))
    _, kwargs, _ = image_layer_data(unknown)
    assert kwargs["metadata"]["spacing_known"] is False
    assert kwargs["metadata"]["spacing"] is None and kwargs["scale"] == (1.0, 1.0, 1.0)


@pytest.mark.skipif(not LITS.is_file(), reason="LiTS case not present")
def test_lits_case_opens_as_3d_ct():
    data, kwargs, kind = image_layer_data(LITS)
    assert kind == "image" and data.shape == (128, 128, 128)
    assert kwargs["metadata"]["modality"] == "ct"


def test_dicom_series_folder_sorted_by_position(make_napari_viewer, tmp_path):
    folder = _series(tmp_path / "series", 5)
    (folder / "notes.txt").write_text("not a DICOM")
    viewer = make_napari_viewer()
    layer = viewer.open(str(folder), plugin=PLUGIN)[0]
    assert layer.data.shape == (5, 128, 128)
    np.testing.assert_allclose(layer.scale, [2.5, 0.661468, 0.661468], rtol=1e-5)
    base = pydicom.dcmread(str(CT_SMALL))
    slope, icpt = float(base.RescaleSlope), float(base.RescaleIntercept)
    # Slice k sits at position z0 + k * 2.5 and carries k in its first pixel (in HU).
    np.testing.assert_allclose(np.asarray(layer.data)[:, 0, 0], np.arange(5) * slope + icpt)
    np.testing.assert_allclose(layer.metadata["affine"][2, 2], 2.5)


def test_broken_series_get_one_clear_line(tmp_path):
    with pytest.raises(ImageReadError, match="uneven slice spacing"):
        read_dicom_series(_series(tmp_path / "gap", 6, skip=(2,)))
    mixed = _series(tmp_path / "mixed", 3)
    _series(mixed, 3, dz=5.0)  # a second series (new UID) in the same folder
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        read_dicom_series(mixed)
    reader = get_image_reader(str(mixed))
    assert reader is not None
    with pytest.raises(ImageReadError) as err:
        reader(str(mixed))
    assert "\n" not in str(err.value)


def test_declines_what_it_cannot_read(tmp_path):
    from PIL import Image

    photo = tmp_path / "123.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(photo)
    assert get_image_reader(str(photo)) is None  # 8-bit: a photograph, not DeepLesion
    empty = tmp_path / "folder"
    empty.mkdir()
    assert get_image_reader(str(empty)) is None
    text = tmp_path / "x.txt"
    text.write_text("hello")
    assert get_image_reader(str(text)) is None
    assert get_image_reader(str(tmp_path / "missing.nii.gz")) is None


def test_deeplesion_png(make_napari_viewer, tmp_path):
    from PIL import Image

    hu = np.array([[-1000, 40], [200, -50]], np.int32)
    p = tmp_path / "109.png"
    Image.fromarray((hu + 32768).astype(np.uint16)).save(p)
    viewer = make_napari_viewer()
    layer = viewer.open(str(p), plugin=PLUGIN)[0]
    assert layer.data.tolist() == hu.tolist()
    assert layer.metadata["modality"] == "ct" and not layer.metadata["spacing_known"]


def test_view_opens_a_dicom_with_its_spacing(qtbot, tmp_path):
    ext_less = tmp_path / "CT_IMAGE"
    shutil.copy(CT_SMALL, ext_less)  # DICOM files often have no extension
    viewer = open_viewer([CT_SMALL, ext_less], widgets=(), run=False)
    try:
        layers = list(viewer.layers)
        assert [lay.name for lay in layers] == ["CT_small", "CT_IMAGE"]
        for lay in layers:
            np.testing.assert_allclose(lay.scale, [0.661468, 0.661468], rtol=1e-5)
    finally:
        viewer.close()
