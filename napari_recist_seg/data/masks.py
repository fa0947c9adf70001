"""Reading and writing lesion masks and label images (png, tif, bmp, NIfTI).

Masks are boolean arrays: ``(rows, cols)`` for a 2D image, ``(z, rows, cols)`` for a
volume. Any non-zero pixel of a file is lesion.

Axis order for NIfTI
--------------------
A NIfTI voxel array ``d[i, j, k]`` maps to our ``(z, row, col)`` array as
``v[z, row, col] = d[col, row, z]`` (``v = d.transpose(2, 1, 0)``): the first NIfTI axis
is the image column (x), the second the row (y), the last the slice (z). This is the
order ITK / SimpleITK use, so masks written here overlay the images that
:func:`napari_recist_seg.data.images.read_image` reads. No reorientation to RAS is
applied: the voxel grid is taken as stored. Spacing goes in the header zooms (and the
diagonal of the affine) as ``(col_mm, row_mm, z_mm)``, i.e. our ``spacing`` reversed.
A 2D mask is written as a NIfTI volume with one slice.

Writers are atomic (temporary file + rename, :mod:`napari_recist_seg.data.atomic`):
an interrupted write never leaves a half-written file and never touches the target.

Examples
--------
>>> import tempfile, pathlib
>>> m = np.zeros((4, 6), bool); m[1:3, 2:5] = True
>>> p = pathlib.Path(tempfile.mkdtemp()) / "case_segmentation.png"
>>> write_mask(p, m)
>>> bool((read_mask(p) == m).all())
True
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.data.atomic import atomic_path
from napari_recist_seg.data.limits import size_problem

__all__ = [
    "MASK_SUFFIXES",
    "MaskReadError",
    "mask_suffix",
    "read_labels",
    "read_mask",
    "write_labels",
    "write_mask",
]

#: File name endings read as masks (lower case, longest first where they overlap).
MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".png", ".tif", ".tiff", ".bmp")
_PIL_SUFFIXES = {".png": "PNG", ".bmp": "BMP"}
_TIFF_SUFFIXES = (".tif", ".tiff")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


class MaskReadError(ValueError):
    """A mask or label file that cannot be read; the message names the file and why."""


def mask_suffix(path: str | os.PathLike[str]) -> str:
    """The lower-case format suffix of ``path`` (``".nii.gz"`` counts as one).

    >>> mask_suffix("a/b/Case.NII.GZ"), mask_suffix("x.png")
    ('.nii.gz', '.png')
    """
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


# -- reading ---------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MaskReadError(f"{path}: file not found")
    if path.is_dir():
        raise MaskReadError(f"{path}: is a folder, not a mask file")
    if path.stat().st_size == 0:
        raise MaskReadError(f"{path}: empty file (0 bytes)")


def _check_size(path: Path, shape: Sequence[int], bytes_per_pixel: int) -> None:
    """Refuse a header that declares more than the size limit before allocating."""
    problem = size_problem(shape, bytes_per_pixel)
    if problem is not None:
        raise MaskReadError(f"{path}: {problem}")


def _read_pil(path: Path) -> tuple[np.ndarray, str]:
    """Pixel array and PIL mode; raises on truncated files (never pads them)."""
    from PIL import Image, ImageFile

    # Truncated files must fail, not come back half black.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise MaskReadError(f"{path}: {exc}") from exc
    with im:
        w, h = im.size
        # At most 4 bytes a band (I, F; most masks are 1): an upper bound of the array.
        _check_size(path, (h, w), 4 * len(im.getbands()))
        im.load()
        mode = im.mode
        if mode == "P":
            # Palette masks (e.g. VOC style): the index is the label.
            return np.asarray(im).copy(), mode
        if mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im).astype(np.uint16, copy=True), mode
        if mode == "CMYK":
            im = im.convert("RGB")
            mode = "RGB"
        return np.asarray(im).copy(), mode


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    """Array and whether its last axis holds colour samples."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        _check_size(path, series.shape, np.dtype(series.dtype).itemsize)
        arr = series.asarray()
    return np.asarray(arr), axes.endswith("S")


def _nifti_to_zrc(data: np.ndarray) -> np.ndarray:
    """NIfTI ``(i, j[, k, ...])`` voxel order -> ``(z, row, col)`` (or ``(row, col)``)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return data.T
    if data.ndim != 3:
        raise ValueError(f"expected a 2D or 3D NIfTI image, got shape {data.shape}")
    out = data.transpose(2, 1, 0)
    return out[0] if out.shape[0] == 1 else out


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    img = nib.load(str(path))
    scaled = img.dataobj.slope != 1.0 or img.dataobj.inter != 0.0
    itemsize = np.dtype(img.get_data_dtype()).itemsize
    _check_size(path, img.shape, max(itemsize, 8) if scaled else itemsize)
    data = np.asanyarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    out = _nifti_to_zrc(np.asarray(data))
    zooms = zooms + (1.0,) * (3 - len(zooms))
    # zooms are (col_mm, row_mm, z_mm); ours run the other way.
    spacing = (zooms[1], zooms[0]) if out.ndim == 2 else (zooms[2], zooms[1], zooms[0])
    return out, spacing


def _read_raw(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Read the stored array of a mask/label file: ``(array, kind)``.

    ``kind`` is ``"grey"``, ``"palette"``, ``"rgb"`` or ``"rgba"`` (colour in the last
    axis), or ``"volume"``.
    """
    p = Path(path)
    _check_file(p)
    suffix = mask_suffix(p)
    try:
        if suffix in _PIL_SUFFIXES:
            arr, mode = _read_pil(p)
            if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
                return arr, "rgba"
            if mode in ("RGB", "YCbCr", "LAB", "HSV"):
                return arr, "rgb"
            return arr, "palette" if mode == "P" else "grey"
        if suffix in _TIFF_SUFFIXES:
            arr, has_samples = _read_tiff(p)
            if has_samples:
                return arr, "rgba" if arr.shape[-1] in (2, 4) else "rgb"
            return arr, "grey" if arr.squeeze().ndim <= 2 else "volume"
        if suffix in _NIFTI_SUFFIXES:
            arr, _ = _read_nifti(p)
            return arr, "grey" if arr.ndim == 2 else "volume"
    except MaskReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # PIL/tifffile/nibabel/gzip raise many unrelated types
        raise MaskReadError(f"{p}: cannot read ({_describe(exc)})") from exc
    raise MaskReadError(
        f"{p}: unsupported mask format {suffix or '(no extension)'!r}; "
        f"use one of {', '.join(MASK_SUFFIXES)}"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if "truncated" in low or isinstance(exc, EOFError) or "end of" in low:
        return f"truncated or incomplete file: {text}"
    return text


def _squeeze_to_image(arr: np.ndarray, path: Path) -> np.ndarray:
    # Drop singleton axes that some writers add (e.g. (1, H, W) tif pages).
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise MaskReadError(f"{path}: expected a 2D or 3D mask, got shape {arr.shape}")
    if min(arr.shape) == 0:
        raise MaskReadError(f"{path}: the mask has no pixels (shape {arr.shape})")
    return arr


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a lesion mask as a boolean array.

    Parameters
    ----------
    path : path-like
        A ``.png``, ``.bmp``, ``.tif``/``.tiff`` (multi-page = volume), ``.nii`` or
        ``.nii.gz`` file.

    Returns
    -------
    ndarray of bool
        ``(rows, cols)`` or ``(z, rows, cols)``. Any non-zero (finite) value is lesion;
        for colour masks, a pixel is lesion when any colour channel is non-zero, and a
        fully transparent pixel (alpha 0) is background. Palette images use the
        palette index (0 = background). NaN counts as background.

    Raises
    ------
    MaskReadError
        For a missing, empty (0 bytes), truncated or otherwise unreadable file, or an
        unsupported extension.
    """
    p = Path(path)
    arr, kind = _read_raw(p)
    if kind in ("rgb", "rgba"):
        if kind == "rgba":
            colour, alpha = arr[..., :-1], arr[..., -1]
            if colour.any():
                fg = colour.any(axis=-1) & (alpha != 0)
            else:  # an alpha-only mask: the shape lives in the alpha channel
                fg = alpha != 0
        else:
            fg = arr.any(axis=-1)
    else:
        if np.issubdtype(arr.dtype, np.floating):
            fg = np.isfinite(arr) & (arr != 0)
        else:
            fg = arr != 0
    return _squeeze_to_image(np.asarray(fg, dtype=bool), p)


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label image (0 = background, 1.. = lesion ids) as an integer array.

    Colour files are refused: labels must be stored as grey / palette values, as
    :func:`write_labels` writes them.

    Raises
    ------
    MaskReadError
        For unreadable files, colour images, or non-integer values.
    """
    p = Path(path)
    arr, kind = _read_raw(p)
    if kind in ("rgb", "rgba"):
        raise MaskReadError(
            f"{p}: a colour image is not a label image (labels are stored as grey values)"
        )
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise MaskReadError(f"{p}: label values must be whole numbers")
        arr = arr.astype(np.int64)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return _squeeze_to_image(arr, p)


# -- writing ---------------------------------------------------------------------------


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    sp = tuple(float(s) for s in spacing)
    if len(sp) == 2 and ndim == 3:
        sp = (1.0,) + sp  # a plane spacing for a volume: slice thickness unknown
    if len(sp) != ndim:
        raise ValueError(
            f"spacing {sp} has {len(sp)} values but the array has {ndim} dimensions"
        )
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be positive numbers (mm), got {sp}")
    return sp


def _write_nifti(
    tmp: Path, arr: np.ndarray, spacing: tuple[float, ...] | None, affine: Any = None
) -> None:
    import nibabel as nib

    vol = arr[None] if arr.ndim == 2 else arr
    data = np.ascontiguousarray(vol.transpose(2, 1, 0))  # (z,row,col) -> (col,row,z)
    if affine is not None:
        # The input's geometry (orientation, origin): the mask overlays the image in
        # ITK-SNAP / 3D Slicer; the zooms follow from the affine.
        aff = np.asarray(affine, dtype=float)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
        img = nib.Nifti1Image(data, aff)
        img.header.set_xyzt_units("mm")
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, str(tmp))
        return
    sp = spacing if spacing is not None else (1.0,) * arr.ndim
    if len(sp) == 2:
        sp = (1.0,) + tuple(sp)
    zooms = (sp[2], sp[1], sp[0])
    diag = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(data, diag)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm")
    img.set_qform(diag, code=1)
    img.set_sform(diag, code=1)
    nib.save(img, str(tmp))


def _write_array(
    path: str | os.PathLike[str],
    arr: np.ndarray,
    spacing: Sequence[float] | None,
    affine: Any = None,
) -> None:
    p = Path(path)
    suffix = mask_suffix(p)
    sp = _check_spacing(spacing, arr.ndim)
    if suffix in (".jpg", ".jpeg"):
        raise ValueError(f"{p}: JPEG is lossy and would corrupt a mask; use .png or .tif")
    if suffix in _PIL_SUFFIXES:
        if arr.ndim != 2:
            raise ValueError(
                f"{p}: a {arr.ndim}D mask cannot be stored as {suffix}; use .tif or .nii.gz"
            )
        if suffix == ".bmp" and arr.dtype != np.uint8:
            raise ValueError(f"{p}: BMP holds only 8-bit values; use .png or .tif")
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(arr))
        with atomic_path(p) as tmp:
            img.save(tmp, format=_PIL_SUFFIXES[suffix])
        return
    if suffix in _TIFF_SUFFIXES:
        import tifffile

        with atomic_path(p) as tmp:
            tifffile.imwrite(tmp, np.ascontiguousarray(arr), photometric="minisblack")
        return
    if suffix in _NIFTI_SUFFIXES:
        with atomic_path(p) as tmp:
            _write_nifti(tmp, arr, sp, affine)
        return
    raise ValueError(
        f"{p}: unsupported mask format {suffix or '(no extension)'!r}; "
        "use .png, .tif, .bmp, .nii or .nii.gz"
    )


def _check_ndim(arr: np.ndarray, what: str) -> None:
    if arr.ndim not in (2, 3):
        raise ValueError(f"a {what} must be 2D (rows, cols) or 3D (z, rows, cols); got shape {arr.shape}")
    if min(arr.shape) == 0:
        raise ValueError(f"the {what} has no pixels (shape {arr.shape})")


def write_mask(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
) -> None:
    """Write a binary mask atomically.

    Parameters
    ----------
    path : path-like
        Target file; the format follows the extension: ``.png``/``.bmp`` (2D only),
        ``.tif``/``.tiff`` (2D, or a multi-page volume), ``.nii``/``.nii.gz``.
    mask : array-like, shape (rows, cols) or (z, rows, cols)
        Non-zero = lesion.
    spacing : sequence of float, optional
        ``(row_mm, col_mm)`` or ``(z_mm, row_mm, col_mm)``. Stored in NIfTI headers
        (see the module notes for the axis order); png/tif do not carry it.
    affine : 4x4 array, optional
        NIfTI only: the input image's voxel-to-world affine (``ImageData.metadata
        ["affine"]``), so the mask keeps its orientation and origin; else a diagonal
        affine from ``spacing``.

    Notes
    -----
    png/tif/bmp hold uint8 values 0 / 255 (visible in any viewer); NIfTI holds uint8
    0 / 1, the usual convention for segmentation volumes.
    """
    m = np.asarray(mask)
    _check_ndim(m, "mask")
    fg = m.astype(bool) if m.dtype != bool else m
    if np.issubdtype(m.dtype, np.floating):
        fg = np.isfinite(m) & (m != 0)
    if mask_suffix(path) in _NIFTI_SUFFIXES:
        out = fg.astype(np.uint8)
    else:
        out = fg.astype(np.uint8) * np.uint8(255)
    _write_array(path, out, spacing, affine)


def write_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
) -> None:
    """Write a label image (0 = background, 1.. = lesion ids) atomically.

    ``affine``: as for :func:`write_mask`. Values are kept as they are: stored as uint8 when they all fit (<= 255), else
    uint16 (png, tif, NIfTI); tif and NIfTI also take larger ids (uint32 / int32).
    BMP holds only uint8 labels.

    Raises
    ------
    ValueError
        For negative or fractional labels, or ids too large for the format.
    """
    lab = np.asarray(labels)
    _check_ndim(lab, "label image")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError("labels must be whole numbers (no NaN or fractions)")
    elif not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
    if lo < 0:
        raise ValueError(f"labels must be >= 0, got {lo}")
    suffix = mask_suffix(path)
    if hi <= 255:
        out = lab.astype(np.uint8)
    elif hi <= 65535:
        out = lab.astype(np.uint16)
    elif suffix in _TIFF_SUFFIXES:
        out = lab.astype(np.uint32)
    elif suffix in _NIFTI_SUFFIXES and hi <= np.iinfo(np.int32).max:
        out = lab.astype(np.int32)
    else:
        raise ValueError(f"{path}: label {hi} is too large for {suffix} (max 65535)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PIL's uint16 mode notes
        _write_array(path, out, spacing, affine)
