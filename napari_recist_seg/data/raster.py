"""2D pictures (PNG, JPEG, BMP... through PIL), TIFF, and DeepLesion's 16-bit PNG slices."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.data.imagedata import (
    ImageData,
    ImageReadError,
    ImageTooLargeError,
    _check_file,
    _check_size,
    _fail,
    _finish,
    _reason,
    image_suffix,
)

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_TIFF_SUFFIXES = (".tif", ".tiff")

#: DeepLesion stores HU + 32768 in uint16 PNGs.
DEEPLESION_OFFSET = 32768
# DeepLesion series folders are named <patient>_<study>_<series>, e.g. 000001_01_01.
_DEEPLESION_DIR = re.compile(r"^\d{6}_\d{2}_\d{2}$")


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


def _pil_shape(path: Path) -> tuple[int, ...]:
    """``(H, W)`` from the header (PIL opens lazily)."""
    with _open_pil(path) as im:
        w, h = im.size
    return (h, w)


def _pil_spacing(path: Path) -> None:
    """PNG, JPEG, BMP... carry no spacing in mm."""
    return None


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


def _tiff_shape(path: Path) -> tuple[int, ...]:
    """``(H, W)`` or ``(Z, H, W)`` from the TIFF header (samples axis dropped)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes = list(series.shape), series.axes
    if axes.endswith("S"):
        shape = shape[:-1]
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return tuple(int(s) for s in shape)


def _tiff_header_spacing(path: Path) -> tuple[float, ...] | None:
    """Spacing from the resolution tags (centimetre unit only); 1 mm between pages."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        sp = _tiff_spacing(tif)
    if sp is not None and len(_tiff_shape(path)) == 3:
        return (1.0,) + sp
    return sp


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
