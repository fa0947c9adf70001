"""Masks and label images: round trips, colour collapse, NIfTI axes and spacing, errors,
atomic writes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_recist_seg.data.masks import (
    MaskReadError,
    mask_suffix,
    read_labels,
    read_mask,
    write_labels,
    write_mask,
)


def _blob_mask(shape=(23, 31)) -> np.ndarray:
    rng = np.random.default_rng(0)
    m = rng.random(shape) > 0.6
    m[0, 0] = True
    m[-1, -1] = False
    return m


@pytest.mark.parametrize("ext", ["png", "tif", "tiff", "bmp", "nii", "nii.gz"])
def test_2d_round_trip(tmp_path: Path, ext: str) -> None:
    m = _blob_mask()
    p = tmp_path / f"case.{ext}"
    write_mask(p, m)
    back = read_mask(p)
    assert back.dtype == bool
    assert back.shape == m.shape
    np.testing.assert_array_equal(back, m)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_png_tif_store_0_255_uint8(tmp_path: Path, ext: str) -> None:
    m = _blob_mask()
    write_mask(tmp_path / f"m.{ext}", m)
    raw = tifffile.imread(tmp_path / "m.tif") if ext == "tif" else np.asarray(
        Image.open(tmp_path / "m.png")
    )
    assert raw.dtype == np.uint8
    assert set(np.unique(raw).tolist()) == {0, 255}
    np.testing.assert_array_equal(raw == 255, m)


@pytest.mark.parametrize("ext", ["tif", "nii.gz"])
def test_3d_round_trip(tmp_path: Path, ext: str) -> None:
    v = np.zeros((4, 9, 13), bool)
    v[1, 2:5, 3:9] = True
    v[3, 6:8, 1:2] = True
    p = tmp_path / f"vol.{ext}"
    write_mask(p, v, spacing=(2.5, 0.8, 0.7))
    np.testing.assert_array_equal(read_mask(p), v)


def test_nifti_axis_order_and_spacing(tmp_path: Path) -> None:
    v = np.zeros((4, 9, 13), bool)  # (z, row, col)
    v[1, 2, 11] = True
    p = tmp_path / "vol.nii.gz"
    write_mask(p, v, spacing=(2.5, 0.8, 0.7))
    img = nib.load(str(p))
    # Documented order: NIfTI (i, j, k) = (col, row, z), zooms reversed likewise.
    assert img.shape == (13, 9, 4)
    np.testing.assert_allclose(img.header.get_zooms(), (0.7, 0.8, 2.5), rtol=1e-6)
    np.testing.assert_allclose(np.diag(img.affine)[:3], (0.7, 0.8, 2.5), rtol=1e-6)
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.uint8
    assert data[11, 2, 1] == 1 and data.sum() == 1


def test_2d_nifti_spacing(tmp_path: Path) -> None:
    m = _blob_mask((6, 8))
    p = tmp_path / "plane.nii.gz"
    write_mask(p, m, spacing=(0.5, 0.25))  # (row_mm, col_mm)
    img = nib.load(str(p))
    assert img.shape[:2] == (8, 6)
    np.testing.assert_allclose(img.header.get_zooms()[:2], (0.25, 0.5))
    np.testing.assert_array_equal(read_mask(p), m)


def test_rgb_and_rgba_masks_collapse(tmp_path: Path) -> None:
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[1, 1] = (200, 0, 0)  # red lesion
    rgb[2, 3] = (0, 0, 1)  # faint blue still counts
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    expected = np.zeros((5, 6), bool)
    expected[1, 1] = expected[2, 3] = True
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), expected)

    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere...
    rgba[..., 3] = 0  # ...but transparent: background
    rgba[4, 5] = (255, 255, 255, 255)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    exp2 = np.zeros((5, 6), bool)
    exp2[4, 5] = True
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), exp2)


def test_palette_and_16bit_masks(tmp_path: Path) -> None:
    idx = np.zeros((4, 5), np.uint8)
    idx[1:3, 2] = 1
    im = Image.fromarray(idx, mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "pal.png"), idx > 0)

    wide = np.zeros((4, 5), np.uint16)
    wide[0, 4] = 40000
    Image.fromarray(wide).save(tmp_path / "w16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "w16.png"), wide > 0)


def test_real_isic_mask(isic_dir: Path) -> None:
    p = isic_dir / "masks" / "ISIC_0000000_segmentation.png"
    raw = np.asarray(Image.open(p))
    m = read_mask(p)
    assert m.shape == (256, 256) and m.dtype == bool
    np.testing.assert_array_equal(m, raw > 0)
    assert 0 < m.mean() < 1


@pytest.mark.parametrize("ext", ["png", "tif", "nii.gz"])
def test_labels_keep_values(tmp_path: Path, ext: str) -> None:
    lab = np.zeros((7, 9), np.int64)
    lab[1, 1:3] = 1
    lab[4, 4] = 7
    p8 = tmp_path / f"l8.{ext}"
    write_labels(p8, lab)
    back = read_labels(p8)
    np.testing.assert_array_equal(back, lab)
    lab[5, 5] = 300  # needs 16 bits
    p16 = tmp_path / f"l16.{ext}"
    write_labels(p16, lab)
    back16 = read_labels(p16)
    assert back16.dtype == np.uint16
    np.testing.assert_array_equal(back16, lab)
    assert read_mask(p16).sum() == 4


def test_labels_png_dtype_on_disk(tmp_path: Path) -> None:
    lab = np.array([[0, 1], [2, 255]], np.int32)
    write_labels(tmp_path / "a.png", lab)
    assert np.asarray(Image.open(tmp_path / "a.png")).dtype == np.uint8
    lab[0, 0] = 256
    write_labels(tmp_path / "b.png", lab)
    assert Image.open(tmp_path / "b.png").mode.startswith("I;16")


def test_bad_labels_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        write_labels(tmp_path / "n.png", np.array([[0, -1]]))
    with pytest.raises(ValueError, match="whole numbers"):
        write_labels(tmp_path / "f.png", np.array([[0, 1.5]]))
    with pytest.raises(ValueError, match="too large"):
        write_labels(tmp_path / "big.png", np.array([[0, 70000]]))
    assert not list(tmp_path.iterdir())


def test_write_refuses_lossy_or_impossible(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lossy"):
        write_mask(tmp_path / "m.jpg", _blob_mask())
    with pytest.raises(ValueError, match="3D mask cannot be stored as .png"):
        write_mask(tmp_path / "m.png", np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="unsupported mask format"):
        write_mask(tmp_path / "m.xyz", _blob_mask())
    with pytest.raises(ValueError, match="spacing"):
        write_mask(tmp_path / "m.nii.gz", _blob_mask(), spacing=(1.0, -2.0))
    assert not list(tmp_path.iterdir())


def test_read_errors_name_file_and_reason(tmp_path: Path, isic_dir: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(MaskReadError, match=r"empty\.png: empty file \(0 bytes\)"):
        read_mask(empty)
    with pytest.raises(MaskReadError, match="file not found"):
        read_mask(tmp_path / "missing.png")
    other = tmp_path / "m.xyz"
    other.write_bytes(b"abc")
    with pytest.raises(MaskReadError, match="unsupported mask format '.xyz'"):
        read_mask(other)
    # A real mask cut in half must fail, not come back partly black.
    data = (isic_dir / "masks" / "ISIC_0000000_segmentation.png").read_bytes()
    cut = tmp_path / "cut_segmentation.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskReadError, match="cut_segmentation.png: .*truncated"):
        read_mask(cut)
    # A truncated gzip NIfTI.
    write_mask(tmp_path / "v.nii.gz", np.ones((3, 4, 5), bool))
    raw = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "v.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MaskReadError, match=r"v\.nii\.gz: cannot read"):
        read_mask(tmp_path / "v.nii.gz")
    assert issubclass(MaskReadError, ValueError)


def test_failed_write_leaves_target_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "m.tif"
    original = _blob_mask()
    write_mask(target, original)
    before = target.read_bytes()

    def broken_imwrite(path, *args, **kwargs):
        Path(path).write_bytes(b"half")  # a partial file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_mask(target, ~original)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


def test_overwrite_is_replacement(tmp_path: Path) -> None:
    target = tmp_path / "m.png"
    write_mask(target, np.zeros((3, 3), bool))
    write_mask(target, np.ones((3, 3), bool))
    assert read_mask(target).all()
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_mask_suffix() -> None:
    assert mask_suffix("A/B.Nii.Gz") == ".nii.gz"
    assert mask_suffix("x_segmentation.PNG") == ".png"
