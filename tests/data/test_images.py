"""Image readers: 2D formats, NIfTI, DICOM file and series, DeepLesion PNG, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image, ImageFile

from napari_recist_seg.data.images import (
    ImageData,
    ImageReadError,
    image_plane,
    image_shape,
    image_spacing,
    read_deeplesion_png,
    read_dicom_series,
    read_image,
)
from napari_recist_seg.data.masks import write_mask


def _rng_image(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    return rng.integers(0, hi, size=shape, endpoint=True).astype(dtype)


# -- 2D formats ----------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_grey_8bit_round_trip(tmp_path: Path, ext: str) -> None:
    a = _rng_image((17, 23))
    p = tmp_path / f"g.{ext}"
    Image.fromarray(a).save(p)
    img = read_image(p)
    assert isinstance(img, ImageData)
    assert img.array.dtype == np.uint8 and not img.is_rgb and not img.is_volume
    assert img.spacing is None and img.path == p and img.modality == "grey"
    np.testing.assert_array_equal(img.array, a)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_grey_16bit_kept(tmp_path: Path, ext: str) -> None:
    a = _rng_image((9, 11), np.uint16)
    a[0, 0] = 65535
    p = tmp_path / f"g16.{ext}"
    if ext == "png":
        Image.fromarray(a).save(p)
    else:
        tifffile.imwrite(p, a)
    img = read_image(p)
    assert img.array.dtype == np.uint16
    np.testing.assert_array_equal(img.array, a)


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_rgb_round_trip(tmp_path: Path, ext: str) -> None:
    a = _rng_image((12, 10, 3))
    p = tmp_path / f"c.{ext}"
    Image.fromarray(a).save(p)
    img = read_image(p)
    assert img.is_rgb and img.array.shape == (12, 10, 3) and img.modality == "rgb"
    np.testing.assert_array_equal(img.array, a)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_rgba_drops_alpha(tmp_path: Path, ext: str) -> None:
    a = _rng_image((8, 6, 4))
    p = tmp_path / f"c.{ext}"
    if ext == "png":
        Image.fromarray(a).save(p)
    else:
        tifffile.imwrite(p, a, photometric="rgb", extrasamples=["unassalpha"])
    img = read_image(p)
    assert img.array.shape == (8, 6, 3)
    np.testing.assert_array_equal(img.array, a[..., :3])


def test_palette_becomes_rgb(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx, mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    im.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.is_rgb
    np.testing.assert_array_equal(img.array[0, 1], (255, 0, 0))
    np.testing.assert_array_equal(img.array[1, 0], (0, 0, 255))


def test_16bit_rgb_png_not_cut_to_8_bits(tmp_path: Path) -> None:
    a = _rng_image((5, 7, 3), np.uint16)
    p = tmp_path / "c16.png"
    cv2.imwrite(str(p), a[..., ::-1])  # OpenCV writes BGR
    img = read_image(p)
    assert img.array.dtype == np.uint16 and img.is_rgb
    np.testing.assert_array_equal(img.array, a)


def test_jpeg_close_to_original(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:48]
    a = np.stack([yy * 3, xx * 4, (yy + xx) * 2], axis=-1).astype(np.uint8)
    p = tmp_path / "c.jpg"
    Image.fromarray(a).save(p, quality=95)
    img = read_image(p)
    assert img.array.shape == a.shape and img.array.dtype == np.uint8
    assert np.abs(img.array.astype(int) - a).mean() < 3


def test_real_isic_jpeg(isic_dir: Path) -> None:
    p = isic_dir / "images" / "ISIC_0000000.jpg"
    img = read_image(p)
    assert img.array.shape == (256, 256, 3) and img.is_rgb
    assert image_shape(p) == (256, 256)
    assert image_spacing(p) is None


def test_float_tiff_with_nan_kept_and_flagged(tmp_path: Path) -> None:
    a = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
    a[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", a)
    img = read_image(tmp_path / "f.tif")
    assert img.has_nan and np.isnan(img.array[2, 3])
    assert np.nanmax(np.abs(img.array - a)) == 0
    a[2, 3] = 0.5
    tifffile.imwrite(tmp_path / "g.tif", a)
    assert not read_image(tmp_path / "g.tif").has_nan


def test_multipage_tiff_is_volume(tmp_path: Path) -> None:
    v = _rng_image((3, 5, 6), np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", v)
    img = read_image(tmp_path / "v.tif")
    assert img.is_volume and img.array.shape == (3, 5, 6)
    np.testing.assert_array_equal(img.array, v)
    assert image_shape(tmp_path / "v.tif") == (3, 5, 6)


# -- NIfTI ---------------------------------------------------------------------------


def test_nifti_anisotropic_spacing_and_axes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    d = rng.integers(-1000, 1000, size=(6, 5, 4)).astype(np.int16)  # (i=col, j=row, k=z)
    img = nib.Nifti1Image(d, np.diag([0.7, 0.8, 2.5, 1.0]))
    p = tmp_path / "ct.nii.gz"
    nib.save(img, str(p))
    out = read_image(p)
    assert out.is_volume and out.array.shape == (4, 5, 6)
    assert out.array.dtype == np.int16 and out.array.flags.c_contiguous
    np.testing.assert_allclose(out.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(out.plane_spacing, (0.8, 0.7), rtol=1e-6)
    # v[z, row, col] == d[col, row, z]
    for (z, r, c) in [(0, 0, 0), (3, 1, 5), (2, 4, 2)]:
        assert out.array[z, r, c] == d[c, r, z]
    assert out.modality == "ct" and out.hu  # air-like minimum: Hounsfield units
    assert image_shape(p) == (4, 5, 6)
    np.testing.assert_allclose(image_spacing(p), (2.5, 0.8, 0.7), rtol=1e-6)


def test_mask_written_overlays_image(tmp_path: Path) -> None:
    v = np.zeros((3, 4, 5), bool)
    v[2, 1, 4] = True
    write_mask(tmp_path / "m.nii.gz", v, spacing=(3.0, 0.5, 0.6))
    img = read_image(tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(img.array.astype(bool), v)
    np.testing.assert_allclose(img.spacing, (3.0, 0.5, 0.6), rtol=1e-6)


def test_nifti_scaled_values(tmp_path: Path) -> None:
    d = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(d, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii"))
    out = read_image(tmp_path / "s.nii")
    assert out.array[1, 2, 1] == pytest.approx(d[1, 2, 1] * 2 - 1024)


def test_real_lits_ct(lits_dir: Path) -> None:
    ct = read_image(lits_dir / "ct.nii.gz")
    assert ct.array.shape == (128, 128, 128) and ct.is_volume
    assert ct.array.dtype == np.int16
    assert ct.modality == "ct" and not ct.has_nan
    assert ct.spacing == (1.0, 1.0, 1.0)  # the file carries unit spacing
    lo, p1, hi = np.percentile(ct.array, [0, 1, 100])
    assert -1100 <= lo <= -900 and p1 <= -900  # air
    assert 500 < hi < 4000  # bone / contrast, not raw detector values
    labels = read_image(lits_dir / "labels.nii.gz").array
    liver = np.median(ct.array[labels == 1])
    tumour = np.median(ct.array[labels == 2])
    assert 60 < liver < 200  # enhanced liver parenchyma in HU
    assert tumour < liver  # the tumours are hypodense
    # An axial plane is a view, not a copy of the volume.
    plane = image_plane(ct, 64)
    assert plane.shape == (128, 128) and np.shares_memory(plane, ct.array)


# -- DICOM ---------------------------------------------------------------------------


def test_dicom_single_file_hu_and_spacing(tmp_path: Path, write_dicom) -> None:
    raw = np.array([[0, 1024, 1064], [2048, 500, 3000]], np.uint16)
    p = write_dicom(tmp_path / "one.dcm", raw, slope=1.0, intercept=-1024.0,
                    pixel_spacing=(0.6, 0.9))
    img = read_image(p)
    assert img.array.dtype == np.float32 and not img.is_volume
    np.testing.assert_array_equal(img.array, raw.astype(np.float32) - 1024)
    assert img.array[0, 0] == -1024 and img.array[0, 2] == 40  # air, soft tissue
    assert img.spacing == (0.6, 0.9) and img.modality == "ct"
    assert image_shape(p) == (2, 3) and image_spacing(p) == (0.6, 0.9)


def test_dicom_slope_applied(tmp_path: Path, write_dicom) -> None:
    raw = np.array([[10, -20], [0, 7]], np.int16)
    p = write_dicom(tmp_path / "s.dcm", raw, slope=2.5, intercept=-100.0)
    np.testing.assert_allclose(read_image(p).array, raw * 2.5 - 100)


def test_dicom_without_extension_detected(tmp_path: Path, write_dicom) -> None:
    p = write_dicom(tmp_path / "IM0001", np.ones((2, 2), np.uint16))
    assert read_image(p).array.shape == (2, 2)


def test_dicom_series_sorted_by_position(tmp_path: Path, write_dicom) -> None:
    series = tmp_path / "series"
    # File names and instance numbers disagree with the anatomy; positions decide.
    zs = {"a.dcm": 15.0, "b.dcm": 10.0, "c.dcm": 12.5}
    inst = {"a.dcm": 1, "b.dcm": 2, "c.dcm": 3}
    for name, z in zs.items():
        raw = np.full((4, 5), int(z * 10), np.uint16)
        write_dicom(series / name, raw, slope=1.0, intercept=-1000.0, position_z=z,
                    instance=inst[name], pixel_spacing=(0.5, 0.75))
    (series / "notes.txt").write_text("not dicom")
    img = read_image(series)
    assert img.is_volume and img.array.shape == (3, 4, 5)
    np.testing.assert_array_equal(img.array[:, 0, 0], [100 - 1000, 125 - 1000, 150 - 1000])
    np.testing.assert_allclose(img.spacing, (2.5, 0.5, 0.75))
    assert img.modality == "ct"
    assert [f.name for f in img.metadata["files"]] == ["b.dcm", "c.dcm", "a.dcm"]
    assert read_dicom_series(series).array.shape == (3, 4, 5)
    assert image_shape(series) == (3, 4, 5)  # headers only
    np.testing.assert_allclose(image_spacing(series), (2.5, 0.5, 0.75))


def test_dicom_series_errors(tmp_path: Path, write_dicom) -> None:
    with pytest.raises(ImageReadError, match="no DICOM images"):
        (tmp_path / "none").mkdir()
        read_image(tmp_path / "none")
    mixed = tmp_path / "mixed"
    write_dicom(mixed / "1.dcm", np.zeros((2, 2), np.uint16), series_uid="1.2.3")
    write_dicom(mixed / "2.dcm", np.zeros((2, 2), np.uint16), series_uid="1.2.4", position_z=5)
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        read_image(mixed)


def test_a_study_folder_says_which_series_it_mixes_and_where_they_are(tmp_path, write_dicom):
    # An MR exam exported flat: two series, one with a description, one without.
    study = tmp_path / "flat"
    for k in range(3):
        p = write_dicom(study / f"t2_{k}.dcm", np.zeros((2, 2), np.uint16), series_uid="1.2.3",
                        position_z=float(k))
        ds = pydicom.dcmread(p)
        ds.SeriesDescription = "T2 AX"
        ds.save_as(p)
    write_dicom(study / "other.dcm", np.zeros((2, 2), np.uint16), series_uid="1.2.4")
    with pytest.raises(ImageReadError) as err:
        read_image(study)
    msg = str(err.value)
    assert "2 DICOM series (UID 1.2.4: 1 slice; T2 AX: 3 slices)" in msg and "\n" not in msg
    # The same exam exported one folder per series: the study folder points at them.
    nested = tmp_path / "nested"
    write_dicom(nested / "SE1" / "a.dcm", np.zeros((2, 2), np.uint16))
    write_dicom(nested / "SE2" / "IM0001", np.zeros((2, 2), np.uint16), series_uid="1.2.5")
    with pytest.raises(ImageReadError, match="subfolders SE1, SE2 hold DICOM files: open one"):
        read_image(nested)


# -- DeepLesion ----------------------------------------------------------------------


def test_deeplesion_png_to_hu(tmp_path: Path) -> None:
    hu = np.array([[-1000, -32768], [40, 32767]], np.int32)
    folder = tmp_path / "Images_png" / "000001_01_01"
    folder.mkdir(parents=True)
    p = folder / "109.png"
    Image.fromarray((hu + 32768).astype(np.uint16)).save(p)
    out = read_deeplesion_png(p, spacing=(0.8, 0.7))
    assert out.array.dtype == np.int16 and out.hu and out.spacing == (0.8, 0.7)
    np.testing.assert_array_equal(out.array, hu)
    np.testing.assert_array_equal(np.asarray(out), hu)  # ImageData acts as an array
    # read_image recognises the DeepLesion folder naming.
    np.testing.assert_array_equal(read_image(p).array, hu)
    # The same file elsewhere is an ordinary 16-bit PNG, unless asked.
    other = tmp_path / "plain.png"
    other.write_bytes(p.read_bytes())
    assert read_image(other).array.dtype == np.uint16
    np.testing.assert_array_equal(read_image(other, deeplesion=True).array, hu)


def test_deeplesion_png_rejects_8bit(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="16-bit"):
        read_deeplesion_png(tmp_path / "x.png")


# -- errors --------------------------------------------------------------------------


def test_truncated_real_jpeg(tmp_path: Path, isic_dir: Path) -> None:
    data = (isic_dir / "images" / "ISIC_0000001.jpg").read_bytes()
    cut = tmp_path / "ISIC_cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        read_image(cut)
    msg = str(info.value)
    assert "ISIC_cut.jpg" in msg and "truncated" in msg
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png(tmp_path: Path) -> None:
    a = _rng_image((64, 64, 3))
    Image.fromarray(a).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"half\.png: truncated"):
        read_image(tmp_path / "half.png")


def test_other_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "a.xyz").write_bytes(b"12345")
    with pytest.raises(ImageReadError, match="unknown image format '.xyz'"):
        read_image(tmp_path / "a.xyz")
    (tmp_path / "text.png").write_text("this is not a picture")
    with pytest.raises(ImageReadError, match=r"text\.png: cannot decode"):
        read_image(tmp_path / "text.png")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ImageReadError, match=r"bad\.nii\.gz"):
        read_image(tmp_path / "bad.nii.gz")
    assert issubclass(ImageReadError, ValueError)


# -- planes --------------------------------------------------------------------------


def test_image_plane_views_and_errors() -> None:
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    img = ImageData(vol, spacing=(2.0, 0.5, 0.5), is_volume=True)
    p = image_plane(img, 1)
    assert np.shares_memory(p, vol)
    np.testing.assert_array_equal(p, vol[1])
    assert img.plane_shape == (3, 4) and img.plane_spacing == (0.5, 0.5)
    with pytest.raises(ValueError, match="give a slice index"):
        image_plane(img)
    with pytest.raises(ValueError, match="outside the volume"):
        image_plane(img, 2)
    rgb = np.zeros((5, 6, 3), np.uint8)
    assert image_plane(rgb) is rgb
    with pytest.raises(ValueError, match="2D image"):
        image_plane(rgb, 1)
