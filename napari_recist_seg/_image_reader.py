"""napari readers for radiology images: NIfTI, DICOM files and series, DeepLesion PNGs.

Each gives one Image layer with

- ``scale`` = the voxel spacing in mm (``(z, row, col)`` or ``(row, col)``), 1 per axis
  when the file does not know it (``metadata["spacing_known"]`` says which);
- a helpful name (the file name without ``.nii.gz``, or the series folder name and its
  ``SeriesDescription``);
- ``metadata``: ``modality`` (``"ct"``, ``"mr"``, ``"grey"``...), ``spacing``,
  ``spacing_known``, ``path`` and, when the file has one, the NIfTI/RAS ``affine``;
- contrast limits by :mod:`napari_recist_seg.intensity` (CT soft-tissue window, else
  the 1-99 percentiles: MR is never shown through a CT window).

Claimed patterns (``napari.yaml``): ``*.nii``, ``*.nii.gz``, ``*.dcm``, ``*.dicom``,
``*.ima``, folders, and ``[0-9][0-9][0-9].png`` (DeepLesion's slice names, 16-bit
only). napari's own reader also claims these extensions, so ``viewer.open(path)``
asks which reader to use (GUI) or raises ``MultipleReaderError``; pass
``plugin="napari-recist-seg"`` (``recist-seg view`` does). Claiming every ``*.png``
would make napari ask for every photograph, hence the narrow pattern. Anything the
readers cannot read (an 8-bit PNG, a folder without DICOM files, a non-DICOM file)
is declined (``get_reader`` returns ``None``); a file of the right kind that is broken
(a 4D NIfTI, a series with missing slices, two series in one folder) raises one
clear :class:`~napari_recist_seg.data.images.ImageReadError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from napari_recist_seg.data.images import _is_dicom_file, read_deeplesion_png, read_image
from napari_recist_seg.intensity import detect_modality, display_range

__all__ = ["get_image_reader", "image_layer_data", "is_readable"]

LayerData = tuple[Any, dict[str, Any], str]

_NIFTI = (".nii", ".nii.gz")
_DICOM = (".dcm", ".dicom", ".ima")


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


def _is_16bit_grey_png(p: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(p) as im:
            return im.mode in ("I;16", "I;16B", "I;16L", "I")
    except Exception:  # noqa: BLE001 - not an image we read: decline
        return False


def _has_dicom(folder: Path) -> bool:
    try:
        for f in folder.iterdir():
            if f.is_file() and (_suffix(f) in _DICOM or _is_dicom_file(f)):
                return True
    except OSError:
        return False
    return False


def is_readable(path: str | os.PathLike[str]) -> bool:
    """Whether these readers take ``path`` (by kind, not by checking it is intact)."""
    p = Path(path)
    if p.is_dir():
        return _has_dicom(p)
    if not p.is_file():
        return False
    suffix = _suffix(p)
    if suffix in _NIFTI or suffix in _DICOM:
        return True
    if suffix == ".png":
        return _is_16bit_grey_png(p)
    return suffix == "" and _is_dicom_file(p)


def _layer_name(p: Path, img: Any) -> str:
    if p.is_dir():
        name = p.name
        files = img.metadata.get("files") or []
        if files:
            try:
                import pydicom

                desc = pydicom.dcmread(str(files[0]), stop_before_pixels=True).get(
                    "SeriesDescription", "")
                if desc:
                    name = f"{name} ({desc})"
            except Exception:  # noqa: BLE001 - the name is only a convenience
                pass
        return name
    name = p.name
    for ext in (".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def image_layer_data(path: str | os.PathLike[str]) -> LayerData:
    """Read ``path`` into one napari Image layer tuple ``(data, kwargs, "image")``.

    Raises
    ------
    ImageReadError
        A broken file of a kind these readers take (one line naming file and reason).
    """
    p = Path(path)
    img = read_deeplesion_png(p) if _suffix(p) == ".png" else read_image(p)
    if img.is_rgb:
        modality = "rgb"
    else:
        modality = detect_modality(img.array, img.modality)
    known = img.spacing is not None and bool(img.metadata.get("spacing_known", True))
    ndim = 2 if img.is_rgb else img.array.ndim
    scale = tuple(float(s) for s in img.spacing) if known else (1.0,) * ndim
    meta: dict[str, Any] = {
        "modality": modality,
        "spacing": scale if known else None,
        "spacing_known": known,
        "path": str(p),
    }
    if "affine" in img.metadata:
        meta["affine"] = img.metadata["affine"]
    kwargs: dict[str, Any] = {
        "name": _layer_name(p, img),
        "scale": scale,
        "metadata": meta,
        "rgb": bool(img.is_rgb),
    }
    if not img.is_rgb:
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = display_range(img.array, modality)
    return img.array, kwargs, "image"


def _read(path: str | Sequence[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [image_layer_data(p) for p in paths]


def get_image_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: a reader for what :func:`is_readable` takes, else ``None``."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(isinstance(p, (str, os.PathLike)) and is_readable(p) for p in paths):
        return None
    return _read
