"""NIfTI outputs keep the input's geometry: an oblique, shifted affine survives the mask
and label writers; a DICOM series gets its RAS affine (LPS positions negated in x, y)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from napari_recist_seg.data.images import dicom_affine, read_image
from napari_recist_seg.data.masks import read_mask, write_labels, write_mask


def test_mask_keeps_the_input_affine(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.7 * c, -0.8 * s, 0, -120.5],
                       [0.7 * s, 0.8 * c, 0, 33.0],
                       [0, 0, 3.0, -400.0],
                       [0, 0, 0, 1]])
    vol = (np.arange(4 * 5 * 6).reshape(6, 5, 4) % 7).astype(np.int16) - 1000
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(ct))
    img = read_image(ct)
    mask = img.array > -996
    out = tmp_path / "mask.nii.gz"
    write_mask(out, mask, spacing=img.spacing, affine=img.metadata["affine"])
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_allclose(written.header.get_zooms(), (0.7, 0.8, 3.0), atol=1e-5)
    assert (read_mask(out) == mask).all()
    labels = tmp_path / "labels.nii.gz"
    write_labels(labels, mask.astype(np.uint8) * 3, affine=img.metadata["affine"])
    np.testing.assert_allclose(nib.load(str(labels)).affine, affine, atol=1e-5)
    # Without an affine: the diagonal from the spacing, as before.
    write_mask(tmp_path / "diag.nii.gz", mask, spacing=(3.0, 0.8, 0.7))
    np.testing.assert_allclose(nib.load(str(tmp_path / "diag.nii.gz")).affine,
                               np.diag([0.7, 0.8, 3.0, 1.0]))


def test_dicom_affine_is_ras():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    aff = dicom_affine(ds, ds, 1)
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ps = float(ds.PixelSpacing[0])
    # CT_small is axial (orientation 1,0,0 / 0,1,0): x and y flip sign (LPS -> RAS).
    np.testing.assert_allclose(aff[:3, 3], [-ipp[0], -ipp[1], ipp[2]])
    np.testing.assert_allclose(np.diag(aff)[:2], [-ps, -ps])
    # Voxel (col 10, row 20) lies 10 columns along x and 20 rows along y in LPS.
    world = aff @ [10, 20, 0, 1]
    np.testing.assert_allclose(world[:3], [-(ipp[0] + 10 * ps), -(ipp[1] + 20 * ps), ipp[2]])
