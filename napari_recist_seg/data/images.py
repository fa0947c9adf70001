"""Reading images: 2D pictures, NIfTI and DICOM volumes, DeepLesion 16-bit PNG slices.

Every reader returns an :class:`ImageData`: the pixel array in ``(row, col)`` order
(napari order), its spacing in mm when the file knows it, and what kind of image it
is. Bad files raise :class:`ImageReadError` naming the file and a readable reason.

Array layouts
-------------
- 2D grey: ``(H, W)``, dtype as stored (uint8, uint16 for 16-bit files, float32...).
- 2D colour: ``(H, W, 3)`` RGB. RGBA drops alpha; palette and CMYK become RGB.
- Volume: ``(Z, H, W)``: NIfTI, a DICOM series folder, a multi-frame DICOM or a
  multi-page TIFF.

Spacing is ``(row_mm, col_mm)`` for a plane and ``(z_mm, row_mm, col_mm)`` for a
volume, ``None`` when the file does not say (png, jpg, bmp, most tif).

NIfTI axis order: a voxel array ``d[i, j, k]`` becomes ``v[z, row, col] = d[col, row, z]``
(``d.transpose(2, 1, 0)``, the order ITK / SimpleITK use): the last NIfTI axis is the
slice axis, the first is the column (x). The voxel grid is taken as stored (no
reorientation to RAS), so masks written by :func:`napari_recist_seg.data.masks.write_mask`
overlay it exactly. Spacing comes from the header zooms, reversed.

DICOM: ``RescaleSlope`` / ``RescaleIntercept`` are applied (float32; Hounsfield units
for CT); ``PixelSpacing`` (row spacing, column spacing) gives the plane spacing. A
folder is read as one series, sorted along the slice normal by
``ImagePositionPatient`` (else ``InstanceNumber``), with the slice spacing taken from
the positions.

DeepLesion: its 16-bit PNG slices store ``HU + 32768``; :func:`read_deeplesion_png`
(and :func:`read_image` on a PNG inside a DeepLesion ``Images_png/<series>/`` folder)
returns int16 HU.

Formats
-------
One table, :data:`FORMATS`, names each format once with its suffixes and its three
functions (read, shape from the header, spacing from the header), the way
cornerstone3D registers a tool under its ``toolName``; :func:`read_image`,
:func:`image_shape` and :func:`image_spacing` look a file up in it
(:func:`image_format`). The readers live per format: :mod:`.raster` (PIL pictures,
TIFF, DeepLesion PNG), :mod:`.nifti`, :mod:`.dicom`; :mod:`.imagedata` holds
:class:`ImageData` and the errors. Every name stays importable from here.

Examples
--------
>>> import tempfile, pathlib
>>> from PIL import Image
>>> p = pathlib.Path(tempfile.mkdtemp()) / "grey.png"
>>> Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(p)
>>> img = read_image(p)
>>> img.array.shape, img.is_rgb, img.is_volume, img.spacing
((3, 4), False, False, None)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Re-exported: the names other modules import from ``data.images``.
from napari_recist_seg.data.dicom import (  # noqa: F401
    _DICOM_SUFFIXES,
    _dicom_shape,
    _dicom_spacing,
    _read_dicom_file,
    _series_shape_spacing,
    dicom_affine,
    read_dicom_series,
)
from napari_recist_seg.data.imagedata import (  # noqa: F401
    ImageData,
    ImageReadError,
    ImageTooLargeError,
    _check_file,
    _check_size,
    _fail,
    _finish,
    _is_dicom_file,
    _reason,
    image_plane,
    image_suffix,
)
from napari_recist_seg.data.nifti import (  # noqa: F401
    _NIFTI_SUFFIXES,
    _nifti_shape,
    _nifti_spacing,
    _read_nifti,
)
from napari_recist_seg.data.raster import (  # noqa: F401
    _PIL_SUFFIXES,
    _TIFF_SUFFIXES,
    DEEPLESION_OFFSET,
    _deeplesion_hu,
    _pil_shape,
    _pil_spacing,
    _read_pil,
    _read_tiff,
    _tiff_header_spacing,
    _tiff_shape,
    is_deeplesion_png,
    read_deeplesion_png,
)

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "ImageData",
    "ImageFormat",
    "ImageReadError",
    "ImageTooLargeError",
    "image_format",
    "image_plane",
    "image_shape",
    "image_spacing",
    "image_suffix",
    "is_deeplesion_png",
    "read_deeplesion_png",
    "dicom_affine",
    "read_dicom_series",
    "read_image",
    "register_format",
]

#: File name endings read as images (lower case). A DICOM file may have no extension.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm",
)


@dataclass(frozen=True)
class ImageFormat:
    """One file format: its suffixes and its three functions of a file path.

    Attributes
    ----------
    name : str
        The key in :data:`FORMATS`.
    suffixes : tuple of str
        Lower-case endings (:func:`image_suffix`) that select it.
    read : callable
        ``read(path) -> ImageData``.
    shape, spacing : callable
        ``(H, W)`` / ``(Z, H, W)`` and the spacing in mm (or ``None``), from the
        header only.
    sniff : callable, optional
        Recognises a file of this format by its content when no suffix matched
        (DICOM's ``DICM`` preamble).
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], ImageData]
    shape: Callable[[Path], tuple[int, ...]]
    spacing: Callable[[Path], tuple[float, ...] | None]
    sniff: Callable[[Path], bool] | None = None


#: The formats by name, in lookup order (suffixes first, then content sniffing).
FORMATS: dict[str, ImageFormat] = {}


def register_format(fmt: ImageFormat) -> ImageFormat:
    """Add (or replace) a format in :data:`FORMATS` under ``fmt.name``."""
    FORMATS[fmt.name] = fmt
    return fmt


register_format(ImageFormat("picture", _PIL_SUFFIXES, _read_pil, _pil_shape, _pil_spacing))
register_format(ImageFormat("tiff", _TIFF_SUFFIXES, _read_tiff, _tiff_shape, _tiff_header_spacing))
register_format(ImageFormat("nifti", _NIFTI_SUFFIXES, _read_nifti, _nifti_shape, _nifti_spacing))
register_format(ImageFormat("dicom", _DICOM_SUFFIXES, _read_dicom_file, _dicom_shape,
                            _dicom_spacing, sniff=_is_dicom_file))


def image_format(path: str | os.PathLike[str]) -> ImageFormat | None:
    """The format of a file: by suffix, else by content; ``None`` when unknown.

    >>> image_format("scan.NII.gz").name, image_format("photo.jpeg").name
    ('nifti', 'picture')
    """
    suffix = image_suffix(path)
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    p = Path(path)
    for fmt in FORMATS.values():
        if fmt.sniff is not None and fmt.sniff(p):
            return fmt
    return None


def _decode(p: Path, fn: Callable[[Path], Any], keep: tuple[type[BaseException], ...]) -> Any:
    """``fn(p)``, any decoder error but those in ``keep`` as an :class:`ImageReadError`."""
    try:
        return fn(p)
    except keep:
        raise
    except Exception as exc:  # decoders raise many unrelated exception types
        raise _fail(p, _reason(exc), exc) from exc


def _read_png(p: Path) -> ImageData:
    """A PNG that may be a DeepLesion slice: 16-bit grey is taken as HU + 32768."""
    img = _read_pil(p)
    if img.array.dtype == np.uint16 and not img.is_rgb:
        return _deeplesion_hu(img, p, None)
    return img


def read_image(path: str | os.PathLike[str], *, deeplesion: bool | None = None) -> ImageData:
    """Read an image file (or a DICOM series folder).

    Parameters
    ----------
    path : path-like
        png, jpg/jpeg, bmp, tif/tiff, nii/nii.gz, a DICOM file (``.dcm`` or any file
        with the DICOM preamble) or a folder holding one DICOM series.
    deeplesion : bool, optional
        Treat a 16-bit PNG as a DeepLesion slice (HU = value - 32768). By default
        (``None``) this is decided from the folder name (``000001_01_01/``).

    Returns
    -------
    ImageData

    Raises
    ------
    ImageReadError
        Missing, empty (0 bytes), truncated or undecodable files, and unknown
        formats, with the file name and reason in the message.

    Notes
    -----
    JPEG EXIF orientation is not applied: the array is the stored pixel grid, which
    is what masks of the same image are drawn on.
    """
    p = Path(path)
    _check_file(p)
    if p.is_dir():
        return read_dicom_series(p)
    keep = (ImageReadError, MemoryError)
    if image_suffix(p) == ".png" and (deeplesion or (deeplesion is None and is_deeplesion_png(p))):
        return _decode(p, _read_png, keep)
    fmt = image_format(p)
    if fmt is None:
        suffix = image_suffix(p)
        raise _fail(
            p,
            f"unknown image format {suffix or '(no extension)'!r}; supported: "
            + ", ".join(IMAGE_SUFFIXES)
            + " or a DICOM series folder",
        )
    return _decode(p, fmt.read, keep)


def image_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The spatial shape ``(H, W)`` or ``(Z, H, W)`` of an image, reading headers only.

    Cheap enough to compare an image with its mask before reading either in full.

    Raises
    ------
    ImageReadError
        When the header cannot be read.
    """
    return _header(path, "shape")


def image_spacing(path: str | os.PathLike[str]) -> tuple[float, ...] | None:
    """Spacing in mm from the file header, without reading the pixels.

    ``(z_mm, row_mm, col_mm)`` for volumes, ``(row_mm, col_mm)`` for planes, ``None``
    for formats that do not carry it (png, jpg, bmp; tif unless in centimetres).
    A DICOM series folder reads every file's header (no pixels) for the slice spacing.

    Raises
    ------
    ImageReadError
        When the header cannot be read.
    """
    return _header(path, "spacing")


def _header(path: str | os.PathLike[str], what: str) -> Any:
    """``shape`` or ``spacing`` of a file (its format's function) or a series folder."""
    p = Path(path)
    _check_file(p)
    if p.is_dir():
        index = 0 if what == "shape" else 1
        return _decode(p, lambda q: _series_shape_spacing(q)[index], (ImageReadError,))
    fmt = image_format(p)
    if fmt is None:
        suffix = image_suffix(p)
        raise _fail(p, f"unknown image format {suffix or '(no extension)'!r}")
    return _decode(p, getattr(fmt, what), (ImageReadError,))
