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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.data.limits import size_problem

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageData",
    "ImageReadError",
    "ImageTooLargeError",
    "image_plane",
    "image_shape",
    "image_spacing",
    "image_suffix",
    "is_deeplesion_png",
    "read_deeplesion_png",
    "dicom_affine",
    "read_dicom_series",
    "read_image",
]

#: File name endings read as images (lower case). A DICOM file may have no extension.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm",
)
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_TIFF_SUFFIXES = (".tif", ".tiff")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

#: DeepLesion stores HU + 32768 in uint16 PNGs.
DEEPLESION_OFFSET = 32768
# DeepLesion series folders are named <patient>_<study>_<series>, e.g. 000001_01_01.
_DEEPLESION_DIR = re.compile(r"^\d{6}_\d{2}_\d{2}$")


class ImageReadError(ValueError):
    """An image that cannot be read; the message names the file and the reason."""


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than the size limit allows.

    Raised before any pixel is allocated; see :mod:`napari_recist_seg.data.limits`
    (``RECIST_SEG_MAX_IMAGE_BYTES``).
    """


def _check_size(path: Path, shape: Sequence[int], bytes_per_pixel: int) -> None:
    """Refuse a declared size over the limit before decoding (no MemoryError later)."""
    problem = size_problem(shape, bytes_per_pixel)
    if problem is not None:
        raise ImageTooLargeError(f"{path}: {problem}")


@dataclass(eq=False)
class ImageData:
    """A read image: the array plus what the file says about it.

    Attributes
    ----------
    array : ndarray
        ``(H, W)``, ``(H, W, 3)`` or ``(Z, H, W)``.
    spacing : tuple of float or None
        ``(row_mm, col_mm)`` for a plane, ``(z_mm, row_mm, col_mm)`` for a volume.
    path : Path or None
        Where it was read from.
    is_volume, is_rgb : bool
        Layout of ``array``.
    modality : str
        ``"ct"`` when the values are Hounsfield units, ``"rgb"`` for colour images,
        else ``"grey"`` (or the DICOM modality in lower case, e.g. ``"mr"``).
    has_nan : bool
        True when a float image holds NaN pixels (kept as they are; the model side
        decides what to do with them).
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    path: Path | None = None
    is_volume: bool = False
    is_rgb: bool = False
    modality: str = "grey"
    has_nan: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def hu(self) -> bool:
        """True when the values are Hounsfield units (CT)."""
        return self.modality == "ct"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one image plane."""
        if self.is_volume:
            return int(self.array.shape[1]), int(self.array.shape[2])
        return int(self.array.shape[0]), int(self.array.shape[1])

    @property
    def plane_spacing(self) -> tuple[float, float] | None:
        """``(row_mm, col_mm)`` of one plane (what :class:`~napari_recist_seg.recist.Recist` takes)."""
        if self.spacing is None:
            return None
        return (float(self.spacing[-2]), float(self.spacing[-1]))

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0]) if self.is_volume else 1

    def plane(self, slice_index: int | None = None) -> np.ndarray:
        """Shortcut for :func:`image_plane`."""
        return image_plane(self, slice_index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # Lets ``np.asarray(read_image(p))`` work where an array is expected.
        arr = self.array
        if dtype is not None:
            arr = arr.astype(dtype, copy=bool(copy))
        return arr.copy() if copy else arr


def image_plane(image: ImageData | np.ndarray, slice_index: int | None = None) -> np.ndarray:
    """One 2D plane (grey ``(H, W)`` or RGB ``(H, W, 3)``) as a view, never a copy.

    Parameters
    ----------
    image : ImageData or ndarray
        For a bare array, 3 dimensions with a last axis of 3 or 4 is taken as colour,
        any other 3D array as a ``(Z, H, W)`` volume.
    slice_index : int, optional
        Required for volumes; must be ``None`` or 0 for 2D images.

    Examples
    --------
    >>> vol = np.zeros((5, 4, 6), np.int16)
    >>> image_plane(vol, 2).base is vol
    True
    """
    if isinstance(image, ImageData):
        arr, is_volume = image.array, image.is_volume
    else:
        arr = np.asarray(image)
        is_volume = arr.ndim == 3 and arr.shape[-1] not in (3, 4)
    if not is_volume:
        if slice_index not in (None, 0):
            raise ValueError(f"slice {slice_index} requested from a 2D image")
        return arr
    if slice_index is None:
        raise ValueError(
            f"the image is a volume of {arr.shape[0]} slices; give a slice index"
        )
    z = int(slice_index)
    if not 0 <= z < arr.shape[0]:
        raise ValueError(f"slice {z} is outside the volume (0..{arr.shape[0] - 1})")
    return arr[z]


def image_suffix(path: str | os.PathLike[str]) -> str:
    """Lower-case format suffix; ``".nii.gz"`` counts as one.

    >>> image_suffix("CT.Nii.Gz"), image_suffix("a.b.JPG")
    ('.nii.gz', '.jpg')
    """
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _fail(path: Path, reason: str, exc: BaseException | None = None) -> ImageReadError:
    err = ImageReadError(f"{path}: {reason}")
    if exc is not None:
        err.__cause__ = exc
    return err


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if "truncated" in low or isinstance(exc, EOFError) or "end of file" in low:
        return f"truncated or incomplete file ({text})"
    return f"cannot decode ({text})"


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise _fail(path, "file not found")
    if not path.is_dir() and path.stat().st_size == 0:
        raise _fail(path, "empty file (0 bytes)")


def _finish(arr: np.ndarray, **kw: Any) -> ImageData:
    has_nan = bool(np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any())
    return ImageData(array=arr, has_nan=has_nan, **kw)


# -- 2D pictures (PIL) -----------------------------------------------------------------


def _png_16bit_colour(path: Path) -> bool:
    """True for a 16-bit RGB(A) PNG, which PIL would cut to 8 bits."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


# Bytes per pixel of the array _read_pil returns for each PIL mode (others become RGB).
_PIL_BYTES = {"1": 1, "L": 1, "LA": 1, "La": 1, "RGB": 3, "I": 4, "F": 4,
              "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _open_pil(path: Path) -> Any:
    """``Image.open`` (lazy: header only), with PIL's own bomb guard as our error."""
    from PIL import Image

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{path}: {exc}") from exc


def _read_pil(path: Path) -> ImageData:
    from PIL import ImageFile

    # A truncated file must fail, never come back half grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with _open_pil(path) as im:
        w, h = im.size
        # A 16-bit colour PNG is re-read by OpenCV as (H, W, 4) uint16: 8 bytes a pixel.
        bpp = 8 if _png_16bit_colour(path) else _PIL_BYTES.get(im.mode, 3)
        _check_size(path, (h, w), bpp)
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            arr = np.asarray(im).astype(np.uint16)
        elif mode == "I":
            arr = np.asarray(im)
            if arr.size and arr.min() >= 0 and arr.max() <= 65535:
                arr = arr.astype(np.uint16)  # 16-bit grey that PIL widened
        elif mode == "F":
            arr = np.asarray(im, dtype=np.float32).copy()
        elif mode == "1":
            arr = np.asarray(im.convert("L")).copy()
        elif mode in ("L",):
            arr = np.asarray(im).copy()
        elif mode in ("LA", "La"):
            arr = np.asarray(im.convert("L")).copy()
        elif mode == "RGB":
            arr = np.asarray(im).copy()
        else:  # RGBA, P, PA, CMYK, YCbCr, LAB, HSV...: to RGB, alpha dropped
            arr = np.asarray(im.convert("RGB")).copy()
    if arr.ndim == 3 and _png_16bit_colour(path):
        import cv2

        full = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if full is not None and full.dtype == np.uint16 and full.ndim == 3:
            arr = np.ascontiguousarray(full[..., 2::-1])  # BGR(A) -> RGB
    is_rgb = arr.ndim == 3
    return _finish(arr, path=path, is_rgb=is_rgb, modality="rgb" if is_rgb else "grey")


# -- TIFF --------------------------------------------------------------------------------


def _tiff_spacing(tif: Any) -> tuple[float, float] | None:
    """Plane spacing from TIFF resolution tags, only when the unit is centimetre."""
    try:
        tags = tif.pages[0].tags
        unit = tags.get("ResolutionUnit")
        xres, yres = tags.get("XResolution"), tags.get("YResolution")
        if unit is None or xres is None or yres is None or int(unit.value) != 3:
            return None  # inch-based DPI says nothing about the anatomy
        x = xres.value[0] / xres.value[1]
        y = yres.value[0] / yres.value[1]
        if x <= 0 or y <= 0:
            return None
        return (10.0 / y, 10.0 / x)
    except Exception:
        return None


def _read_tiff(path: Path) -> ImageData:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        _check_size(path, series.shape, np.dtype(series.dtype).itemsize)
        arr = np.asarray(series.asarray())
        spacing = _tiff_spacing(tif)
    is_rgb = axes.endswith("S") and arr.shape[-1] in (3, 4)
    if axes.endswith("S") and not is_rgb:
        arr = arr[..., 0]
    if is_rgb:
        arr = arr[..., :3]
    while arr.ndim > (3 if is_rgb else 2) and arr.shape[0] == 1:
        arr = arr[0]
    if is_rgb and arr.ndim != 3:
        raise _fail(path, f"multi-page colour TIFF (shape {arr.shape}) is not supported")
    if arr.ndim > 3:
        raise _fail(path, f"TIFF with {arr.ndim} dimensions ({axes}) is not supported")
    is_volume = arr.ndim == 3 and not is_rgb
    if is_volume and spacing is not None:
        spacing = (1.0,) + spacing
    modality = "rgb" if is_rgb else "grey"
    return _finish(arr, path=path, spacing=spacing, is_rgb=is_rgb, is_volume=is_volume,
                   modality=modality)


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
    from napari_recist_seg.intensity import detect_modality

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


# -- DICOM -------------------------------------------------------------------------------


def _dicom_bytes(ds: Any) -> int:
    """Bytes per pixel we end up holding: the stored size, float32 once rescaled."""
    stored = max(1, int(ds.get("BitsAllocated", 16) or 16) // 8)
    rescaled = ds.get("RescaleSlope", None) is not None or ds.get("RescaleIntercept", None) is not None
    return max(stored, 4) if rescaled else stored


def _dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    _check_size(path, (frames, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), samples),
                _dicom_bytes(ds))
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        raise _fail(path, f"cannot decode DICOM pixel data (transfer syntax {name}: {exc})",
                    exc) from exc
    return np.asarray(arr)


def _rescale(ds: Any, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    if slope is None and intercept is None:
        return arr, False
    s = float(slope) if slope is not None else 1.0
    b = float(intercept) if intercept is not None else 0.0
    out = arr.astype(np.float32)
    if s != 1.0:
        out *= np.float32(s)
    if b != 0.0:
        out += np.float32(b)
    return out, True


def _dicom_plane_spacing(ds: Any) -> tuple[float, float] | None:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = ds.get(tag, None)
        if ps is not None and len(ps) >= 2:
            # DICOM order: distance between rows, then between columns.
            sp = (float(ps[0]), float(ps[1]))
            if sp[0] > 0 and sp[1] > 0:
                return sp
    return None


def _dicom_modality(ds: Any, rescaled: bool) -> str:
    mod = str(ds.get("Modality", "") or "").lower()
    if mod == "ct" or str(ds.get("RescaleType", "")).upper() == "HU":
        return "ct"
    return mod or "grey"


def _read_dicom_file(path: Path) -> ImageData:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise _fail(path, f"not a readable DICOM file ({_reason(exc)})", exc) from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise _fail(path, "DICOM file holds no pixel data")
    arr = _dicom_pixels(ds, path)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    is_rgb = samples > 1
    if is_rgb:
        arr = arr[..., :3]
        if frames > 1:
            raise _fail(path, "multi-frame colour DICOM is not supported")
        return _finish(np.ascontiguousarray(arr), path=path, is_rgb=True, modality="rgb",
                       spacing=_dicom_plane_spacing(ds))
    arr, rescaled = _rescale(ds, arr)
    plane = _dicom_plane_spacing(ds)
    is_volume = frames > 1 and arr.ndim == 3
    spacing: tuple[float, ...] | None = plane
    if is_volume and plane is not None:
        dz = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0
        spacing = (float(dz),) + plane
    affine = dicom_affine(ds, ds, 1) if not is_volume else None
    return _finish(arr, path=path, spacing=spacing, is_volume=is_volume,
                   modality=_dicom_modality(ds, rescaled),
                   metadata={} if affine is None else {"affine": affine})


def _slice_normal(ds: Any) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return None
    r = np.asarray([float(v) for v in iop[:3]])
    c = np.asarray([float(v) for v in iop[3:]])
    n = np.cross(r, c)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _scan_series(root: Path) -> tuple[list[tuple[Path, Any]], float]:
    """Headers of one series folder (no pixels), sorted along the slice axis, and the
    slice spacing in mm."""
    import pydicom

    if not root.is_dir():
        raise _fail(root, "not a folder")
    headers = []
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.stat().st_size == 0:
            continue
        if not (_is_dicom_file(f) or image_suffix(f) in _DICOM_SUFFIXES):
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue  # DICOMDIR, structured reports, ...
        headers.append((f, ds))
    if not headers:
        raise _fail(root, "no DICOM images in the folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise _fail(root, f"the folder holds {len(series)} DICOM series; "
                    "put each series in its own folder")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise _fail(root, f"slices have different sizes {sorted(sizes)}")
    if len(headers) == 1:
        return headers, 1.0

    normal = _slice_normal(headers[0][1])
    positions = []
    for _, ds in headers:
        ipp = ds.get("ImagePositionPatient", None)
        positions.append(None if ipp is None or len(ipp) != 3 or normal is None
                         else float(np.dot([float(v) for v in ipp], normal)))
    dz: float | None = None
    if all(p is not None for p in positions):
        order = np.argsort(np.asarray(positions, dtype=float), kind="stable")
        steps = np.diff(np.asarray(positions, dtype=float)[order])
        if np.any(np.abs(steps) < 1e-6):
            raise _fail(root, "two slices share one position (duplicate files?)")
        dz = float(np.median(steps))
        if np.max(np.abs(steps - dz)) > max(0.01 * dz, 0.05):
            raise _fail(root, f"uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm): "
                        "slices are missing or the folder mixes acquisitions")
    else:
        inst = [int(ds.get("InstanceNumber", 0) or 0) for _, ds in headers]
        order = np.argsort(np.asarray(inst), kind="stable")
    ordered = [headers[int(i)] for i in order]
    if dz is None:
        first = ordered[0][1]
        raw = first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None)
        dz = float(raw) if raw else 1.0
    return ordered, dz


def _series_shape_spacing(root: Path) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    headers, dz = _scan_series(root)
    first = headers[0][1]
    plane = _dicom_plane_spacing(first)
    if len(headers) == 1:
        return image_shape(headers[0][0]), image_spacing(headers[0][0])
    shape = (len(headers), int(first.Rows), int(first.Columns))
    return shape, ((dz,) + plane if plane is not None else None)


def read_dicom_series(folder: str | os.PathLike[str]) -> ImageData:
    """Read a folder holding one DICOM series as a ``(Z, H, W)`` float32 volume.

    Files are recognised by content (``.dcm`` or no extension); other files are
    ignored. Slices are sorted along the slice normal by ``ImagePositionPatient``
    (falling back to ``InstanceNumber``, then the file name); the slice spacing is
    the median distance between neighbouring positions (else ``SpacingBetweenSlices``
    or ``SliceThickness``, else 1 mm). Each slice's own slope / intercept is applied.
    A folder with a single image gives what that file gives (usually a 2D image).

    Raises
    ------
    ImageReadError
        No DICOM images, several series, or slices of different sizes.
    """
    import pydicom

    root = Path(folder)
    headers, dz = _scan_series(root)
    if len(headers) == 1:
        return _read_dicom_file(headers[0][0])
    first = headers[0][1]
    _check_size(root, (len(headers), int(first.Rows), int(first.Columns)), 4)
    vol = np.empty((len(headers), int(first.Rows), int(first.Columns)), dtype=np.float32)
    rescaled_any = False
    for z, (f, _) in enumerate(headers):
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:
            raise _fail(f, f"not a readable DICOM file ({_reason(exc)})", exc) from exc
        px = _dicom_pixels(ds, f)
        if px.ndim != 2:
            raise _fail(f, f"expected one grey image per file, got shape {px.shape}")
        px, rescaled = _rescale(ds, px)
        rescaled_any |= rescaled
        vol[z] = px
    plane = _dicom_plane_spacing(first)
    spacing = (dz,) + plane if plane is not None else None
    meta: dict[str, Any] = {"files": [f for f, _ in headers]}
    affine = dicom_affine(first, headers[-1][1], len(headers))
    if affine is not None:
        meta["affine"] = affine
    return _finish(vol, path=root, spacing=spacing, is_volume=True,
                   modality=_dicom_modality(first, rescaled_any), metadata=meta)


def dicom_affine(first: Any, last: Any, n_slices: int) -> np.ndarray | None:
    """The NIfTI (RAS) affine of a DICOM series, for our ``d[col, row, z]`` NIfTI order.

    Column ``i`` runs along the first ``ImageOrientationPatient`` vector (spaced by
    ``PixelSpacing[1]``), row ``j`` along the second (``PixelSpacing[0]``), slice ``k``
    from the first slice's ``ImagePositionPatient`` to the last one's. DICOM patient
    coordinates are LPS; NIfTI's are RAS (x and y negated). ``None`` without the
    orientation, position or spacing tags.
    """
    iop, ipp = first.get("ImageOrientationPatient", None), first.get("ImagePositionPatient", None)
    plane = _dicom_plane_spacing(first)
    if iop is None or len(iop) != 6 or ipp is None or len(ipp) != 3 or plane is None:
        return None
    r = np.asarray([float(v) for v in iop[:3]])
    c = np.asarray([float(v) for v in iop[3:]])
    p0 = np.asarray([float(v) for v in ipp])
    last_ipp = last.get("ImagePositionPatient", None)
    if n_slices > 1 and last_ipp is not None and len(last_ipp) == 3:
        step = (np.asarray([float(v) for v in last_ipp]) - p0) / (n_slices - 1)
    else:
        thick = first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None) or 1.0
        step = np.cross(r, c) * float(thick)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = r * plane[1], c * plane[0], step, p0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# -- DeepLesion --------------------------------------------------------------------------


def is_deeplesion_png(path: str | os.PathLike[str]) -> bool:
    """True for a PNG inside a DeepLesion series folder (``000001_01_01/109.png``)."""
    p = Path(path)
    return image_suffix(p) == ".png" and bool(_DEEPLESION_DIR.match(p.parent.name))


def read_deeplesion_png(
    path: str | os.PathLike[str], spacing: Sequence[float] | None = None
) -> ImageData:
    """Read a DeepLesion 16-bit PNG slice as int16 Hounsfield units (value - 32768).

    Parameters
    ----------
    path : path-like
        The PNG (``Images_png/<patient>_<study>_<series>/<slice>.png``).
    spacing : (row_mm, col_mm), optional
        From ``DL_info.csv`` (the PNG does not carry it).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "1.png"
    >>> Image.fromarray(np.array([[32768 - 1000, 32768 + 40]], np.uint16)).save(p)
    >>> read_deeplesion_png(p).array.tolist()
    [[-1000, 40]]
    """
    p = Path(path)
    _check_file(p)
    try:
        img = _read_pil(p)
    except ImageReadError:
        raise
    except Exception as exc:
        raise _fail(p, _reason(exc), exc) from exc
    return _deeplesion_hu(img, p, spacing)


def _deeplesion_hu(img: ImageData, p: Path, spacing: Sequence[float] | None) -> ImageData:
    arr = img.array
    if img.is_rgb or arr.dtype != np.uint16:
        raise _fail(p, f"not a DeepLesion slice: expected a 16-bit grey PNG, got {arr.dtype}"
                    f"{' colour' if img.is_rgb else ''}")
    # uint16 - 32768 spans exactly int16: no clipping, no float.
    hu = (arr.astype(np.int32) - DEEPLESION_OFFSET).astype(np.int16)
    sp = None if spacing is None else (float(spacing[0]), float(spacing[1]))
    return ImageData(array=hu, spacing=sp, path=p, modality="ct")


# -- entry points ------------------------------------------------------------------------


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
    suffix = image_suffix(p)
    try:
        if suffix == ".png" and (deeplesion or (deeplesion is None and is_deeplesion_png(p))):
            img = _read_pil(p)
            if img.array.dtype == np.uint16 and not img.is_rgb:
                return _deeplesion_hu(img, p, None)
            return img
        if suffix in _PIL_SUFFIXES:
            return _read_pil(p)
        if suffix in _TIFF_SUFFIXES:
            return _read_tiff(p)
        if suffix in _NIFTI_SUFFIXES:
            return _read_nifti(p)
        if suffix in _DICOM_SUFFIXES or _is_dicom_file(p):
            return _read_dicom_file(p)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise many unrelated exception types
        raise _fail(p, _reason(exc), exc) from exc
    raise _fail(
        p,
        f"unknown image format {suffix or '(no extension)'!r}; supported: "
        + ", ".join(IMAGE_SUFFIXES)
        + " or a DICOM series folder",
    )


def image_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The spatial shape ``(H, W)`` or ``(Z, H, W)`` of an image, reading headers only.

    Cheap enough to compare an image with its mask before reading either in full.

    Raises
    ------
    ImageReadError
        When the header cannot be read.
    """
    p = Path(path)
    _check_file(p)
    suffix = image_suffix(p)
    try:
        if p.is_dir():
            return _series_shape_spacing(p)[0]
        if suffix in _PIL_SUFFIXES:
            with _open_pil(p) as im:
                w, h = im.size
            return (h, w)
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                shape, axes = list(series.shape), series.axes
            if axes.endswith("S"):
                shape = shape[:-1]
            while len(shape) > 2 and shape[0] == 1:
                shape = shape[1:]
            return tuple(int(s) for s in shape)
        if suffix in _NIFTI_SUFFIXES:
            import nibabel as nib

            shape = list(nib.load(str(p)).shape)
            while len(shape) > 3 and shape[-1] == 1:
                shape = shape[:-1]
            if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
                return (int(shape[1]), int(shape[0]))
            return (int(shape[2]), int(shape[1]), int(shape[0]))
        if suffix in _DICOM_SUFFIXES or _is_dicom_file(p):
            import pydicom

            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            rc = (int(ds.Rows), int(ds.Columns))
            return (frames,) + rc if frames > 1 else rc
    except ImageReadError:
        raise
    except Exception as exc:
        raise _fail(p, _reason(exc), exc) from exc
    raise _fail(p, f"unknown image format {suffix or '(no extension)'!r}")


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
    p = Path(path)
    _check_file(p)
    suffix = image_suffix(p)
    try:
        if p.is_dir():
            return _series_shape_spacing(p)[1]
        if suffix in _PIL_SUFFIXES:
            return None
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                sp = _tiff_spacing(tif)
            if sp is not None and len(image_shape(p)) == 3:
                return (1.0,) + sp
            return sp
        if suffix in _NIFTI_SUFFIXES:
            import nibabel as nib

            img = nib.load(str(p))
            zooms = [float(z) for z in img.header.get_zooms()[:3]]
            zooms += [1.0] * (3 - len(zooms))
            if len(image_shape(p)) == 2:
                return (zooms[1], zooms[0])
            return (zooms[2], zooms[1], zooms[0])
        if suffix in _DICOM_SUFFIXES or _is_dicom_file(p):
            import pydicom

            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            plane = _dicom_plane_spacing(ds)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            if frames > 1 and plane is not None:
                dz = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0
                return (float(dz),) + plane
            return plane
    except ImageReadError:
        raise
    except Exception as exc:
        raise _fail(p, _reason(exc), exc) from exc
    raise _fail(p, f"unknown image format {suffix or '(no extension)'!r}")
