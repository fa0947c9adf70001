"""Saving a curation as a dataset folder, atomically, never silently overwriting."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_recist_seg.curation_images import AnnotatedImage, safe_name
from napari_recist_seg.data.atomic import atomic_path, atomic_write_text
from napari_recist_seg.data.images import read_image
from napari_recist_seg.data.masks import _write_nifti, read_labels, read_mask, write_labels, write_mask
from napari_recist_seg.data.recist_csv import RecistRecord, read_recist_csv, write_recist_csv
from napari_recist_seg.progress import InputError

__all__ = ["MANIFEST", "CurationConflict", "SavedCuration", "curation_conflicts", "save_curated"]

#: Name of the manifest written next to a saved curation.
MANIFEST = "curation.json"


class CurationConflict(FileExistsError):
    """Saving would replace existing files with different content; ``paths`` lists them."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        shown = ", ".join(str(p) for p in self.paths[:5])
        more = f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else ""
        super().__init__(
            f"{len(self.paths)} file(s) already exist with different content: {shown}{more}; "
            "choose another folder or allow overwriting"
        )


@dataclass
class SavedCuration:
    """Where a curation was saved: a dataset folder ``recist-seg`` reads as is."""

    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, Path] = field(default_factory=dict)
    recist_csv: Path | None = None
    unchanged: list[Path] = field(default_factory=list)


def _image_suffix(img: AnnotatedImage) -> str:
    if img.source is not None and Path(img.source).is_file():
        name = Path(img.source).name.lower()
        return ".nii.gz" if name.endswith(".nii.gz") else Path(img.source).suffix.lower()
    a = np.asarray(img.image)
    if img.is_volume:
        return ".nii.gz"
    if a.dtype == np.uint8:
        return ".png"
    return ".tif"  # keeps 16-bit / float / HU values exactly


def _planned(img: AnnotatedImage, folder: Path) -> dict[str, Path]:
    stem = safe_name(img.name)
    out = {"image": folder / "images" / f"{stem}{_image_suffix(img)}"}
    if img.curated and img.labels is not None:
        ext = ".nii.gz" if img.is_volume else ".png"
        out["mask"] = folder / "masks" / f"{stem}_segmentation{ext}"
        out["labels"] = folder / "labels" / f"{stem}_labels{ext}"
    return out


def _same_image(path: Path, img: AnnotatedImage) -> bool:
    if img.source is not None and Path(img.source).is_file():
        try:
            return filecmp.cmp(path, img.source, shallow=False)
        except OSError:
            return False
    try:
        return np.array_equal(read_image(path).array, np.asarray(img.image))
    except Exception:  # unreadable: different
        return False


def _same_mask(path: Path, mask: np.ndarray, labels: bool) -> bool:
    try:
        stored = read_labels(path) if labels else read_mask(path)
    except Exception:
        return False
    want = np.asarray(mask)
    return stored.shape == want.shape and np.array_equal(
        stored.astype(np.int64) if labels else stored, want.astype(np.int64) if labels else want > 0
    )


def _records(images: Sequence[AnnotatedImage], paths: dict[str, dict[str, Path]]):
    recs = []
    for img in images:
        sp = img.spacing
        plane_sp = (float(sp[-2]), float(sp[-1])) if sp is not None else None
        for lesion, r in img.recists:
            if r.spacing is None and plane_sp is not None:
                r = r.with_spacing(plane_sp)
            recs.append(RecistRecord(paths[img.name]["image"], int(lesion), r))
    return recs


def _same_records(path: Path, records) -> bool:
    """Whether the RECIST CSV at ``path`` holds exactly ``records`` (same images, ids, axes)."""
    try:
        stored = read_recist_csv(path)
    except Exception:  # unreadable: treat as different, never replace silently
        return False

    def key(rec) -> tuple:
        r = rec.recist
        return (os.path.normcase(os.path.abspath(rec.image)), int(rec.lesion), r.slice_index,
                tuple(np.round(r.endpoints.ravel(), 6)),
                None if r.spacing is None else tuple(np.round(r.spacing, 9)))

    return sorted(map(key, stored)) == sorted(map(key, records))


def _check_names(images: Sequence[AnnotatedImage]) -> None:
    seen: dict[str, str] = {}
    for img in images:
        key = safe_name(img.name).lower()
        if key in seen:
            raise InputError(
                f"two images would be saved under the same name {safe_name(img.name)!r}: "
                f"{seen[key]!r} and {img.name!r}; rename one layer"
            )
        seen[key] = img.name
        if img.labels is not None and np.asarray(img.labels).shape != img.shape:
            raise InputError(
                f"{img.name}: labels of shape {np.asarray(img.labels).shape} do not match "
                f"the image shape {img.shape}"
            )


def curation_conflicts(images: Sequence[AnnotatedImage], folder: str | os.PathLike[str]) -> list[Path]:
    """Files that :func:`save_curated` would replace with *different* content."""
    folder = Path(folder)
    _check_names(images)
    paths = {img.name: _planned(img, folder) for img in images}
    conflicts: list[Path] = []
    for img in images:
        p = paths[img.name]
        if p["image"].exists() and not _same_image(p["image"], img):
            conflicts.append(p["image"])
        if "mask" in p and p["mask"].exists() and not _same_mask(p["mask"], img.mask(), False):
            conflicts.append(p["mask"])
        if "labels" in p and p["labels"].exists() and not _same_mask(p["labels"], img.labels, True):
            conflicts.append(p["labels"])
    csv_path = folder / "recist.csv"
    if csv_path.exists() and not _same_records(csv_path, _records(images, paths)):
        conflicts.append(csv_path)
    return conflicts


def _write_image(path: Path, img: AnnotatedImage) -> None:
    if img.source is not None and Path(img.source).is_file():
        with atomic_path(path) as tmp:
            shutil.copyfile(img.source, tmp)
        return
    a = np.asarray(img.image)
    if path.name.endswith(".nii.gz"):
        with atomic_path(path) as tmp:
            _write_nifti(tmp, a, img.spacing)
    elif path.suffix == ".png":
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")
    else:
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, np.ascontiguousarray(a),
                             photometric="rgb" if a.ndim == 3 else "minisblack")


def save_curated(
    images: Sequence[AnnotatedImage],
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> SavedCuration:
    """Save images, curated masks and RECIST as a dataset folder, atomically.

    Layout: ``images/<name>.<ext>``; for curated images ``masks/<name>_segmentation.png``
    (0/255) and ``labels/<name>_labels.png`` (lesion ids; ``.nii.gz`` for volumes);
    ``recist.csv`` for every lesion; ``curation.json`` (which images are curated,
    when). The folder can be passed to ``recist-seg train --curated`` / ``evaluate``.

    Every file is written with a temporary name and renamed into place, so a crash
    never leaves a half-written mask. Files that already hold the same content are left
    alone (saving twice is harmless).

    Raises
    ------
    CurationConflict
        When an existing file would change and ``overwrite`` is False; nothing is
        written then.
    InputError
        Two layers that map to the same file name, or labels of the wrong shape.
    """
    folder = Path(folder)
    if not overwrite:
        conflicts = curation_conflicts(images, folder)
        if conflicts:
            raise CurationConflict(conflicts)
    else:
        _check_names(images)
    paths = {img.name: _planned(img, folder) for img in images}
    saved = SavedCuration(folder)
    for img in images:
        p = paths[img.name]
        if p["image"].exists() and _same_image(p["image"], img):
            saved.unchanged.append(p["image"])
        else:
            _write_image(p["image"], img)
        saved.images[img.name] = p["image"]
        if "mask" in p:
            sp = img.spacing
            write_mask(p["mask"], img.mask(), spacing=sp)
            write_labels(p["labels"], np.asarray(img.labels), spacing=sp)
            saved.masks[img.name] = p["mask"]
            saved.labels[img.name] = p["labels"]
    records = _records(images, paths)
    if records:
        write_recist_csv(folder / "recist.csv", records)
        saved.recist_csv = folder / "recist.csv"
    manifest = {
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "curated": sorted(img.name for img in images if img.curated),
        "images": {img.name: str(paths[img.name]["image"].relative_to(folder)) for img in images},
        "sources": {img.name: str(img.source) for img in images if img.source is not None},
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return saved
