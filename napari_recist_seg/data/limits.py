"""The size limit every image and mask reader checks before it allocates pixels.

A file's header says how many pixels it holds; a 352-byte NIfTI can declare
4000 x 4000 x 1000 int16 voxels (30 GiB), a 41 MB deflated TIFF 204800^2 bytes. The
readers in :mod:`napari_recist_seg.data.images` and :mod:`napari_recist_seg.data.masks`
compare that declared size (pixels x bytes per pixel of the array they would
return) with :func:`max_image_bytes` *before* decoding, so such a file is one failed
item (a specific :class:`ValueError`) instead of a ``MemoryError`` that ends the run.

The limit is :data:`DEFAULT_MAX_IMAGE_BYTES` (2 GiB, far above any CT volume or
photograph the tool is meant for: a 512 x 512 x 1000 int16 CT is 0.5 GiB) unless the
environment variable :data:`MAX_IMAGE_BYTES_ENV` (``RECIST_SEG_MAX_IMAGE_BYTES``)
gives another number of bytes.

Examples
--------
>>> size_problem((4000, 4000, 1000), 2, limit=2**31)
'declares 4000 x 4000 x 1000 pixels of 2 bytes (29.8 GiB), over the 2.0 GiB limit (RECIST_SEG_MAX_IMAGE_BYTES)'
>>> size_problem((512, 512, 300), 2, limit=2**31) is None
True
"""

from __future__ import annotations

import math
import os
from typing import Sequence

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "MAX_IMAGE_BYTES_ENV", "max_image_bytes", "size_problem"]

#: Largest decoded image (bytes of the returned array) a reader accepts by default.
DEFAULT_MAX_IMAGE_BYTES: int = 2**31
#: Environment variable that overrides :data:`DEFAULT_MAX_IMAGE_BYTES` (a number of bytes).
MAX_IMAGE_BYTES_ENV = "RECIST_SEG_MAX_IMAGE_BYTES"


def max_image_bytes() -> int:
    """The limit in bytes: ``$RECIST_SEG_MAX_IMAGE_BYTES`` when set, else the default.

    Read at every call so a changed environment takes effect without a restart.

    Raises
    ------
    ValueError
        When the variable is set but is not a positive number.
    """
    raw = os.environ.get(MAX_IMAGE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{MAX_IMAGE_BYTES_ENV}={raw!r} is not a positive number of bytes")
    return int(value)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def size_problem(
    shape: Sequence[int], bytes_per_pixel: int, *, limit: int | None = None
) -> str | None:
    """Why an image of ``shape`` is refused, or ``None`` when it fits.

    Parameters
    ----------
    shape : sequence of int
        The declared shape (any axis order; samples per pixel may be an axis).
    bytes_per_pixel : int
        Bytes per element of the array the reader would return.
    limit : int, optional
        Bytes; :func:`max_image_bytes` by default.
    """
    dims = [int(s) for s in shape]
    if any(s < 0 for s in dims):
        return f"declares a negative size {tuple(dims)}"
    cap = max_image_bytes() if limit is None else int(limit)
    n = math.prod(dims) * max(1, int(bytes_per_pixel))  # Python ints: no overflow
    if n <= cap:
        return None
    return (
        f"declares {' x '.join(str(s) for s in dims)} pixels of {int(bytes_per_pixel)} bytes "
        f"({_gib(n)}), over the {_gib(cap)} limit ({MAX_IMAGE_BYTES_ENV})"
    )
