"""Dataset folders: scanning, mask naming, RECIST from CSV or masks, per-file failures."""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.data.dataset import dataset_recists, image_stem, scan_dataset
from napari_recist_seg.data.masks import write_mask
from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
from napari_recist_seg.jobs.common import InputError
from napari_recist_seg.recist import Recist


def _rect_mask(shape=(40, 50), rows=(5, 12), cols=(4, 25)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def _grey(shape=(40, 50)) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """images/: a.png (mask a_segmentation.png), b.jpg (mask b.png), c.bmp (no mask),
    vol.nii.gz (mask vol.nii.gz); masks/ also holds an orphan."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    Image.fromarray(_grey()).save(root / "images" / "a.png")
    Image.fromarray(np.stack([_grey()] * 3, -1)).save(root / "images" / "b.jpg")
    Image.fromarray(_grey()).save(root / "images" / "c.bmp")
    (root / "images" / ".hidden.png").write_bytes(b"")
    (root / "images" / "notes.txt").write_text("ignored")
    vol = np.zeros((6, 30, 20), np.int16)  # (col, row, z) in NIfTI order
    nib.save(nib.Nifti1Image(vol, np.diag([0.7, 0.8, 2.5, 1])), str(root / "images" / "vol.nii.gz"))
    write_mask(root / "masks" / "a_segmentation.png", _rect_mask())
    write_mask(root / "masks" / "b.png", _rect_mask(rows=(20, 30), cols=(10, 16)))
    v = np.zeros((20, 30, 6), bool)  # (z, row, col)
    v[3, 5:15, 1:4] = True
    v[3, 20:25, 2:5] = True
    v[7, 10:20, 1:5] = True
    write_mask(root / "masks" / "vol.nii.gz", v, spacing=(2.5, 0.8, 0.7))
    write_mask(root / "masks" / "orphan_segmentation.png", _rect_mask())
    return root


def test_scan(dataset: Path) -> None:
    ds = scan_dataset(dataset)
    assert [i.stem for i in ds.items] == ["a", "b", "c", "vol"]
    masks = {i.stem: (i.mask_path.name if i.mask_path else None) for i in ds.items}
    assert masks == {"a": "a_segmentation.png", "b": "b.png", "c": None, "vol": "vol.nii.gz"}
    assert ds.items[0].image_path == dataset / "images" / "a.png"
    assert ds.images_dir == dataset / "images" and ds.masks_dir == dataset / "masks"
    assert ds.recist_csv is None and ds.has_masks and len(ds) == 4
    assert [p.name for p in ds.unmatched_masks] == ["orphan_segmentation.png"]


def test_segmentation_name_preferred(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.fromarray(_grey()).save(tmp_path / "images" / "x.png")
    write_mask(tmp_path / "masks" / "x.png", _rect_mask())
    write_mask(tmp_path / "masks" / "x_segmentation.png", _rect_mask())
    (item,) = scan_dataset(tmp_path).items
    assert item.mask_path.name == "x_segmentation.png"


def test_recists_derived_from_masks(dataset: Path) -> None:
    res = dataset_recists(scan_dataset(dataset))
    assert sorted(res) == ["a", "b", "vol"]
    (a,) = res["a"]
    assert a.image == dataset / "images" / "a.png" and a.lesion == 1
    # Rows 5..11, cols 4..24: the longest diameter joins opposite corners.
    assert a.recist.long_length == pytest.approx(math.hypot(6, 20))
    assert a.recist.spacing is None and a.recist.slice_index is None
    (b,) = res["b"]
    assert b.recist.long_length == pytest.approx(math.hypot(9, 5))
    # The volume: one RECIST per component per axial slice, with header spacing.
    vol = res["vol"]
    assert [(r.lesion, r.recist.slice_index) for r in vol] == [(1, 3), (2, 3), (3, 7)]
    assert all(r.recist.spacing == pytest.approx((0.8, 0.7)) for r in vol)
    assert vol[0].recist.long_length == pytest.approx(math.hypot(9, 2))
    assert res.failures == [
        (str(dataset / "images" / "c.bmp"), "no mask to derive RECIST from (and no recist.csv)")
    ]
    records, failures = res.as_tuple()
    assert records.keys() == res.keys() and failures == res.failures


def test_per_component(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.fromarray(_grey()).save(tmp_path / "images" / "two.png")
    m = _rect_mask() | _rect_mask(rows=(25, 35), cols=(30, 34))
    write_mask(tmp_path / "masks" / "two_segmentation.png", m)
    ds = scan_dataset(tmp_path)
    assert len(dataset_recists(ds)["two"]) == 1
    both = dataset_recists(ds, per_component=True)["two"]
    assert [r.lesion for r in both] == [1, 2]
    assert both[0].recist.long_length > both[1].recist.long_length


def test_failures_reported_not_raised(dataset: Path, isic_dir: Path) -> None:
    write_mask(dataset / "masks" / "b.png", np.ones((20, 20), bool))  # wrong size
    data = (isic_dir / "masks" / "ISIC_0000000_segmentation.png").read_bytes()
    (dataset / "masks" / "a_segmentation.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(_grey()).save(dataset / "images" / "d.png")
    write_mask(dataset / "masks" / "d.png", np.zeros((40, 50), bool))  # empty
    res = dataset_recists(scan_dataset(dataset))
    assert sorted(res) == ["vol"]  # the good one still done
    reasons = dict(res.failures)
    assert "truncated" in reasons[str(dataset / "masks" / "a_segmentation.png")]
    assert reasons[str(dataset / "masks" / "b.png")] == (
        "mask size 20x20 does not match image size 40x50 (b.png)"
    )
    assert "empty" in reasons[str(dataset / "masks" / "d.png")]
    assert str(dataset / "images" / "c.bmp") in reasons


def test_recists_from_csv(dataset: Path) -> None:
    r = Recist([[10, 10], [10, 30]], [[5, 20], [15, 20]])
    write_recist_csv(
        dataset / "recist.csv",
        [
            RecistRecord(dataset / "images" / "b.jpg", 4, r),
            RecistRecord(dataset / "images" / "vol.nii.gz", 1,
                         Recist([[2, 2], [2, 4]], [[1, 3], [3, 3]], slice_index=3)),
            RecistRecord(dataset / "images" / "gone.png", 1, r),
        ],
    )
    ds = scan_dataset(dataset)
    assert ds.recist_csv == dataset / "recist.csv"
    res = dataset_recists(ds)
    assert sorted(res) == ["b", "vol"]  # the CSV wins over the masks
    assert res["b"][0].lesion == 4 and res["b"][0].recist.long_length == 20
    assert res["vol"][0].recist.spacing == pytest.approx((0.8, 0.7))  # from the header
    assert res.failures == [
        (str(dataset / "images" / "gone.png"), "listed in recist.csv but not in the dataset's images")
    ]


def test_broken_csv_is_input_error(dataset: Path) -> None:
    (dataset / "recist.csv").write_text("image,lesion\n")
    with pytest.raises(InputError, match="missing required column"):
        dataset_recists(scan_dataset(dataset))


def test_flat_folder(tmp_path: Path) -> None:
    Image.fromarray(_grey()).save(tmp_path / "p.png")
    Image.fromarray(_grey()).save(tmp_path / "q.tif")
    write_mask(tmp_path / "p_segmentation.png", _rect_mask())
    ds = scan_dataset(tmp_path)
    assert [(i.stem, i.mask_path.name if i.mask_path else None) for i in ds.items] == [
        ("p", "p_segmentation.png"),
        ("q", None),
    ]
    assert ds.images_dir == tmp_path


def test_subfolders_and_dicom_series(tmp_path: Path, write_dicom) -> None:
    img = tmp_path / "images"
    (img / "000001_01_01").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(img / "000001_01_01" / "109.png")
    for z in range(3):
        write_dicom(img / "series1" / f"{z}.dcm", np.zeros((4, 5), np.uint16), position_z=z * 2.0)
    items = scan_dataset(tmp_path).items
    assert [(i.stem, i.image_path.name) for i in items] == [
        ("000001_01_01_109", "109.png"),  # DeepLesion's File_name without .png
        ("series1", "series1"),
    ]


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset folder not found"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="no images found"):
        scan_dataset(tmp_path / "empty")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        scan_dataset(tmp_path / "file.png")
    dup = tmp_path / "dup" / "images"
    dup.mkdir(parents=True)
    Image.fromarray(_grey()).save(dup / "a.png")
    Image.fromarray(_grey()).save(dup / "a.jpg")
    with pytest.raises(InputError, match="two images share the name 'a'"):
        scan_dataset(tmp_path / "dup")


def test_image_stem() -> None:
    assert image_stem("x.nii.gz") == "x"
    assert image_stem("/a/b/Case.NII.GZ") == "Case"
    assert image_stem("ISIC_0000000.jpg") == "ISIC_0000000"


def test_real_isic_subset(tmp_path: Path, isic_dir: Path) -> None:
    names = sorted(os.listdir(isic_dir / "images"))[:6]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for n in names:
        stem = n[:-4]
        os.symlink(isic_dir / "images" / n, tmp_path / "images" / n)
        os.symlink(isic_dir / "masks" / f"{stem}_segmentation.png",
                   tmp_path / "masks" / f"{stem}_segmentation.png")
    # One mask at the wrong size: reported, the rest still measured.
    bad_stem = names[0][:-4]
    (tmp_path / "masks" / f"{bad_stem}_segmentation.png").unlink()
    small = Image.open(isic_dir / "masks" / f"{bad_stem}_segmentation.png").resize((128, 128))
    small.save(tmp_path / "masks" / f"{bad_stem}_segmentation.png")
    res = dataset_recists(scan_dataset(tmp_path))
    assert len(res) == 5
    assert res.failures == [
        (str(tmp_path / "masks" / f"{bad_stem}_segmentation.png"),
         f"mask size 128x128 does not match image size 256x256 ({bad_stem}_segmentation.png)")
    ]
    for stem, (rec,) in res.items():
        m = np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0
        r = rec.recist.validate((256, 256))
        # The axes' endpoints lie on the lesion; the long axis is at least as long
        # as the lesion's bounding-box side.
        for row, col in np.round(r.endpoints).astype(int):
            assert m[row, col]
        rows, cols = np.nonzero(m)
        assert r.long_length >= max(np.ptp(rows), np.ptp(cols)) - 1e-9
        assert r.short_length <= r.long_length
