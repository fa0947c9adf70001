"""What every image reader returns and raises: :class:`ImageData`, :class:`ImageReadError`,
:func:`image_plane` and :func:`image_suffix`, and the checks the readers share.

The readers themselves live per format (:mod:`.raster`, :mod:`.nifti`, :mod:`.dicom`)
and :mod:`.images` dispatches to them through its format table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.data.limits import size_problem


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
