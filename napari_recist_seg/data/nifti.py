"""NIfTI volumes (``.nii``, ``.nii.gz``) through nibabel: ``v[z, row, col] = d[col, row, z]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_recist_seg.data.imagedata import ImageData, _check_size, _fail, _finish
from napari_recist_seg.intensity import detect_modality

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


# -- NIfTI -------------------------------------------------------------------------------


def _nifti_bytes(img: Any) -> int:
    """Bytes per voxel of ``np.asanyarray(img.dataobj)``: float64 once scaling is set."""
    itemsize = np.dtype(img.get_data_dtype()).itemsize
    proxy = img.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    scaled = (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0)
    return max(itemsize, 8) if scaled else itemsize


def _read_nifti(path: Path) -> ImageData:
    import nibabel as nib

    img = nib.load(str(path))
    _check_size(path, img.shape, _nifti_bytes(img))
    # dataobj applies scl_slope / scl_inter only when set (else keeps int16 etc.).
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise _fail(path, f"a {data.ndim}D NIfTI (shape {data.shape}) is not a single volume")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    if data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 1):
        arr = np.ascontiguousarray(data.reshape(data.shape[:2]).T)
        spacing: tuple[float, ...] = (zooms[1], zooms[0])
        is_volume = False
    else:
        # NIfTI data are Fortran ordered, so this transpose is C-contiguous (no copy).
        arr = np.ascontiguousarray(data.transpose(2, 1, 0))
        spacing = (zooms[2], zooms[1], zooms[0])
        is_volume = True
    # NIfTI does not name the modality: Hounsfield units are recognised by their air
    # (see napari_recist_seg.intensity), not by a negative minimum (MR artefacts).
    modality = detect_modality(arr)
    hdr = img.header
    # pixdim 1 with neither qform nor sform: the writer did not know the voxel size.
    known = not (int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0
                 and all(abs(z - 1.0) < 1e-6 for z in zooms))
    return _finish(arr, path=path, spacing=spacing if known else None, is_volume=is_volume,
                   modality=modality,
                   metadata={"affine": np.asarray(img.affine), "spacing_known": known,
                             "header": hdr.copy()})


def _nifti_shape(path: Path) -> tuple[int, ...]:
    """``(H, W)`` or ``(Z, H, W)`` from the header, in our axis order."""
    import nibabel as nib

    shape = list(nib.load(str(path)).shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return (int(shape[1]), int(shape[0]))
    return (int(shape[2]), int(shape[1]), int(shape[0]))


def _nifti_spacing(path: Path) -> tuple[float, ...]:
    """The header zooms, reversed to ``(z, row, col)`` (``(row, col)`` for a plane)."""
    import nibabel as nib

    img = nib.load(str(path))
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    if len(_nifti_shape(path)) == 2:
        return (zooms[1], zooms[0])
    return (zooms[2], zooms[1], zooms[0])
