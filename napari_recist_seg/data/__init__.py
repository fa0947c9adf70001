"""File I/O: images (2D, NIfTI, DICOM, DeepLesion), masks, RECIST CSV, datasets.

The public names below are re-exported lazily (PEP 562): ``import
napari_recist_seg.data`` stays cheap (no PIL / nibabel / pydicom until used), and
``jobs.common`` can import :mod:`.atomic` without an import cycle through
:mod:`.dataset`.

>>> from napari_recist_seg.data import read_mask, write_mask  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # atomic.py
    "atomic_path": "atomic",
    "atomic_write_text": "atomic",
    # masks.py
    "MASK_SUFFIXES": "masks",
    "MaskReadError": "masks",
    "mask_suffix": "masks",
    "read_labels": "masks",
    "read_mask": "masks",
    "write_labels": "masks",
    "write_mask": "masks",
    # images.py
    "IMAGE_SUFFIXES": "images",
    "ImageData": "images",
    "ImageReadError": "images",
    "ImageTooLargeError": "images",
    "image_plane": "images",
    "image_shape": "images",
    "image_spacing": "images",
    "is_deeplesion_png": "images",
    "read_deeplesion_png": "images",
    "read_dicom_series": "images",
    "read_image": "images",
    "image_suffix": "images",
    # recist_csv.py
    "RecistCsvError": "recist_csv",
    "RecistRecord": "recist_csv",
    "format_number": "recist_csv",
    "read_recist_csv": "recist_csv",
    "write_recist_csv": "recist_csv",
    # deeplesion.py
    "DeepLesionRow": "deeplesion",
    "deeplesion_image_path": "deeplesion",
    "read_deeplesion_csv": "deeplesion",
    "read_deeplesion_rows": "deeplesion",
    # dataset.py
    "Dataset": "dataset",
    "DatasetItem": "dataset",
    "dataset_recists": "dataset",
    "RecistsByStem": "dataset",
    "image_stem": "dataset",
    "scan_dataset": "dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
