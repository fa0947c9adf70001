"""The predictor's input rules: which arrays are images, and the plane of a RECIST."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_recist_seg.recist import Recist


def _is_volume(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[-1] not in (3, 4)


def _as_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """Input rules beyond the shape (issue 12): complex images are refused, and an
    integer RGB(A) image whose values all lie in 0..255 is taken as the 8-bit image it
    is (int64 from a list, int32, int16, even uint16), so it gives the uint8 result
    instead of being scaled by its dtype's range."""
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"the image must be real; got dtype {arr.dtype}")
    if (arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype != np.uint8
            and np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 255):
        return arr.astype(np.uint8)
    return arr


def _check_plane_values(plane: np.ndarray, where: str) -> None:
    """Refuse a float plane holding infinities or no finite pixel at all (it would give
    a confident mask of nothing); NaN pixels among finite ones count as the lowest
    intensity (see :func:`~napari_recist_seg.preprocess.normalize_intensity`)."""
    if not np.issubdtype(plane.dtype, np.floating):
        return
    finite = np.isfinite(plane)
    if not finite.any():
        raise ValueError(f"{where}the image (plane) has no finite pixel values (all NaN or infinite)")
    n_inf = int(np.isinf(plane).sum())
    if n_inf:
        raise ValueError(f"{where}the image holds {n_inf} infinite pixel values; replace them first "
                         "(e.g. numpy.nan_to_num)")


def _check_image(image: Any) -> np.ndarray:
    # np.asarray never copies an ndarray or memmap: volumes stay where they are.
    arr = image if isinstance(image, np.ndarray) else np.asarray(image)
    if arr.ndim in (2, 3):
        if min(arr.shape) == 0:
            raise ValueError(f"the image has no pixels (shape {arr.shape})")
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
        ):
            raise ValueError(f"the image must be numeric; got dtype {arr.dtype}")
        return _as_uint8_rgb(arr)
    raise ValueError(
        "expected an (H, W) grey, (H, W, 3) RGB image or a (Z, H, W) volume; "
        f"got shape {arr.shape}"
    )


def _plane(image: np.ndarray, recist: Recist) -> np.ndarray:
    """The 2D plane of a RECIST: the image itself, or a view of the volume slice."""
    if _is_volume(image):
        return image[recist.slice_index]
    return image
