"""Dataset folders: images, optional ground-truth masks, optional RECIST CSV.

Layout (DESIGN.md section 3)::

    DATASET/
      images/       png, jpg, bmp, tif, nii/nii.gz, dcm (or a folder per DICOM series)
      masks/        optional: <stem>_segmentation.png or <stem>.png (or .tif, .nii.gz...)
      recist.csv    optional: RECIST per image (else derived from the masks)

A flat folder of images (no ``images/`` subfolder) is accepted too; its masks are then
looked up in ``masks/`` or, next to the images, as ``<stem>_segmentation.<ext>``.

Inside ``images/``, subfolders are walked: a folder of DICOM files is one image (a
series), other subfolders hold more images whose stems get the folder names
prefixed with ``_`` (DeepLesion's ``000001_01_01/109.png`` has stem
``000001_01_01_109``, its ``File_name`` without the extension).

Examples
--------
>>> import tempfile, pathlib
>>> from napari_recist_seg.data.masks import write_mask
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> m = np.zeros((20, 30), bool); m[5:12, 4:25] = True
>>> write_mask(d / "images" / "case1.png", m)   # any image will do here
>>> write_mask(d / "masks" / "case1_segmentation.png", m)
>>> ds = scan_dataset(d)
>>> [(i.stem, i.mask_path.name) for i in ds.items]
[('case1', 'case1_segmentation.png')]
>>> recists = dataset_recists(ds)
>>> round(recists["case1"][0].recist.long_length, 2), recists.failures
(20.88, [])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_recist_seg.data.deeplesion import read_deeplesion_csv
from napari_recist_seg.data.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    _is_dicom_file,
    image_shape,
    image_spacing,
    image_suffix,
)
from napari_recist_seg.data.masks import MASK_SUFFIXES, MaskReadError, mask_suffix, read_mask
from napari_recist_seg.data.recist_csv import (
    RecistCsvError,
    RecistRecord,
    read_recist_csv,
    write_recist_csv,
)
from napari_recist_seg.progress import CancelToken, InputError, ProgressCallback, ProgressTracker
from napari_recist_seg.recist import RecistError, recist_from_mask

__all__ = [
    "DL_INFO_NAME",
    "Dataset",
    "DatasetItem",
    "RECIST_CSV_NAME",
    "RecistsByStem",
    "dataset_recists",
    "image_stem",
    "scan_dataset",
    "write_derived_recist",
]

RECIST_CSV_NAME = "recist.csv"
DL_INFO_NAME = "DL_info.csv"
MASK_TAG = "_segmentation"
# Mask file names tried for an image stem, in order of preference.
_MASK_PATTERNS: tuple[str, ...] = tuple(
    f"{{stem}}{tag}{ext}"
    for ext in (".png", ".tif", ".tiff", ".nii.gz", ".nii", ".bmp")
    for tag in (MASK_TAG, "")
)
# Volume formats whose headers carry spacing worth reading for RECIST in mm.
_SPACING_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".tif", ".tiff")
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".dcm")


def image_stem(path: str | os.PathLike[str]) -> str:
    """The file name without its image extension (``x.nii.gz`` -> ``x``).

    >>> image_stem("a/case.nii.gz"), image_stem("ISIC_0000000.jpg"), image_stem("ser01/")
    ('case', 'ISIC_0000000', 'ser01')
    """
    p = Path(path)
    name = p.name
    suffix = image_suffix(p)
    if suffix and name.lower().endswith(suffix) and len(name) > len(suffix):
        return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class DatasetItem:
    """One image of a dataset and its ground-truth mask, if any."""

    stem: str
    image_path: Path
    mask_path: Path | None = None


@dataclass
class Dataset:
    """A scanned dataset folder (see :func:`scan_dataset`)."""

    root: Path
    items: list[DatasetItem]
    recist_csv: Path | None = None
    images_dir: Path | None = None
    masks_dir: Path | None = None
    dl_info: Path | None = None
    unmatched_masks: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_masks(self) -> bool:
        return any(item.mask_path is not None for item in self.items)

    def by_stem(self) -> dict[str, DatasetItem]:
        return {item.stem: item for item in self.items}


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name.startswith("~")


def _is_dicom_dir(d: Path) -> bool:
    """A folder whose (first few) files are DICOM: one series."""
    checked = 0
    for f in sorted(d.iterdir()):
        if not f.is_file() or _is_hidden(f):
            continue
        if image_suffix(f) == ".dcm" or _is_dicom_file(f):
            return True
        checked += 1
        if checked >= 3:
            break
    return False


def _is_image_file(f: Path) -> bool:
    suffix = image_suffix(f)
    if suffix in IMAGE_SUFFIXES:
        return True
    # DICOM files often have no extension at all.
    return suffix == "" and _is_dicom_file(f)


def _real(d: Path) -> str:
    return os.path.normcase(os.path.realpath(d))


def _first_visit(d: Path, seen: set[str]) -> bool:
    """Whether folder ``d`` (by its real path) is walked for the first time: a
    symlink loop (``images/loop -> .``) is scanned once, not until the path is too long."""
    real = _real(d)
    if real in seen:
        return False
    seen.add(real)
    return True


def _collect_images(
    folder: Path, *, recurse: bool, skip: set[Path]
) -> list[tuple[str, Path]]:
    """``(stem, path)`` for every image under ``folder``."""
    out: list[tuple[str, Path]] = []
    seen = {_real(folder)}

    def walk(d: Path, prefix: str) -> None:
        for entry in sorted(d.iterdir()):
            if _is_hidden(entry) or entry in skip:
                continue
            if entry.is_dir():
                if not _first_visit(entry, seen):
                    continue  # a symlink loop or a second link to a walked folder
                if _is_dicom_dir(entry):
                    out.append((prefix + entry.name, entry))
                elif recurse:
                    walk(entry, prefix + entry.name + "_")
            elif entry.is_file() and _is_image_file(entry):
                out.append((prefix + image_stem(entry), entry))

    walk(folder, "")
    return out


def _find_mask(stem: str, names: dict[str, Path]) -> Path | None:
    for pattern in _MASK_PATTERNS:
        hit = names.get(pattern.format(stem=stem))
        if hit is not None:
            return hit
    return None


def _mask_index(masks_dir: Path) -> dict[str, Path]:
    """File name -> path for the masks folder (subfolders flattened like images)."""
    names: dict[str, Path] = {}
    seen = {_real(masks_dir)}

    def walk(d: Path, prefix: str) -> None:
        for entry in sorted(d.iterdir()):
            if _is_hidden(entry):
                continue
            if entry.is_dir():
                if _first_visit(entry, seen):
                    walk(entry, prefix + entry.name + "_")
            elif entry.is_file() and mask_suffix(entry) in MASK_SUFFIXES:
                names.setdefault(prefix + entry.name, entry)

    walk(masks_dir, "")
    return names


def scan_dataset(folder: str | os.PathLike[str]) -> Dataset:
    """Find a dataset's images, their masks and its RECIST CSV.

    Parameters
    ----------
    folder : path-like
        A dataset folder (with ``images/``) or a flat folder of images.

    Returns
    -------
    Dataset
        Items sorted by stem; paths absolute (symlinks kept).

    Raises
    ------
    InputError
        When the folder does not exist, holds no images, or two images share a stem
        (``a.png`` and ``a.jpg``: their masks would be ambiguous).
    """
    root = Path(os.path.normpath(Path(folder).expanduser().absolute()))
    if not root.exists():
        raise InputError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder (a dataset is a folder with images/)")
    images_dir = root / "images"
    masks_dir: Path | None = root / "masks"
    if not masks_dir.is_dir():
        masks_dir = None
    if images_dir.is_dir():
        found = _collect_images(images_dir, recurse=True, skip=set())
        flat = False
    else:
        images_dir = root
        skip = {root / "masks"}
        found = _collect_images(root, recurse=False, skip=skip)
        flat = True
    mask_names = _mask_index(masks_dir) if masks_dir is not None else {}
    if flat and masks_dir is None:
        # Masks next to the images: <stem>_segmentation.<ext> is a mask, not an image.
        stems = {s for s, _ in found}
        side = {s for s, _ in found if s.endswith(MASK_TAG) and s[: -len(MASK_TAG)] in stems}
        mask_names = {p.name: p for s, p in found if s in side}
        found = [(s, p) for s, p in found if s not in side]
    if not found:
        kinds = ", ".join(IMAGE_SUFFIXES)
        where = images_dir if not flat else root
        raise InputError(
            f"no images found in {where} (expected {kinds} files or DICOM series folders"
            f"{'' if not flat else ', or an images/ subfolder'})"
        )
    seen: dict[str, Path] = {}
    for stem, path in found:
        if stem in seen:
            raise InputError(
                f"two images share the name {stem!r}: {seen[stem]} and {path}; "
                "rename one so masks and RECIST can be matched"
            )
        seen[stem] = path
    items = []
    used: set[Path] = set()
    for stem, path in sorted(found, key=lambda t: t[0]):
        mask = _find_mask(stem, mask_names) if mask_names else None
        if mask is not None:
            used.add(mask)
        items.append(DatasetItem(stem=stem, image_path=path, mask_path=mask))
    unmatched = sorted(p for p in mask_names.values() if p not in used) if masks_dir else []
    csv_path = root / RECIST_CSV_NAME
    dl_info = root / DL_INFO_NAME
    return Dataset(
        root=root,
        items=items,
        recist_csv=csv_path if csv_path.is_file() else None,
        images_dir=images_dir,
        masks_dir=masks_dir,
        dl_info=dl_info if dl_info.is_file() else None,
        unmatched_masks=unmatched,
    )


class RecistsByStem(dict):
    """``{stem: [RecistRecord, ...]}`` with the per-file failures on ``.failures``.

    A plain dict for callers that only want the records; ``failures`` lists
    ``(file, reason)`` pairs (unreadable mask, size mismatch, empty mask, a CSV row
    naming an image that is not in the dataset...). ``records, failures =
    result.as_tuple()`` unpacks both.
    """

    def __init__(self, *args: object, failures: list[tuple[str, str]] | None = None, **kw: object):
        super().__init__(*args, **kw)
        self.failures: list[tuple[str, str]] = list(failures or [])

    def as_tuple(self) -> tuple[dict[str, list[RecistRecord]], list[tuple[str, str]]]:
        return dict(self), list(self.failures)


def _norm(p: Path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(p)))


def _spacing_for(item: DatasetItem) -> tuple[float, ...] | None:
    if item.image_path.is_dir() or image_suffix(item.image_path) in _SPACING_SUFFIXES:
        return image_spacing(item.image_path)
    return None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _from_csv(dataset: Dataset, csv_path: Path, deeplesion: bool) -> RecistsByStem:
    try:
        if deeplesion:
            records = read_deeplesion_csv(csv_path, dataset.images_dir)
        else:
            records = read_recist_csv(csv_path)
    except RecistCsvError as exc:
        raise InputError(str(exc)) from exc
    by_path = {_norm(item.image_path): item for item in dataset.items}
    by_stem = dataset.by_stem()
    out = RecistsByStem()
    spacing_cache: dict[str, tuple[float, ...] | None] = {}
    for rec in records:
        item = by_path.get(_norm(rec.image))
        if item is None:
            # A CSV written elsewhere may name the image by another relative path.
            item = by_stem.get(image_stem(rec.image))
        if item is None and deeplesion:
            item = by_stem.get(f"{rec.image.parent.name}_{image_stem(rec.image)}")
        if item is None:
            out.failures.append(
                (str(rec.image), f"listed in {csv_path.name} but not in the dataset's images")
            )
            continue
        r = rec.recist
        if r.spacing is None:
            try:
                if item.stem not in spacing_cache:
                    spacing_cache[item.stem] = _spacing_for(item)
                sp = spacing_cache[item.stem]
            except ImageReadError:
                sp = None  # reported when the image itself is read
            if sp is not None:
                r = r.with_spacing((sp[-2], sp[-1]))
        out.setdefault(item.stem, []).append(
            RecistRecord(image=item.image_path, lesion=rec.lesion, recist=r)
        )
    return out


def _from_mask(item: DatasetItem, per_component: bool) -> list[RecistRecord]:
    """RECIST derived from one item's mask; raises with a readable reason."""
    assert item.mask_path is not None
    img_shape = image_shape(item.image_path)  # headers only
    mask = read_mask(item.mask_path)
    if tuple(mask.shape) != tuple(img_shape):
        raise ValueError(
            f"mask size {_shape_text(mask.shape)} does not match image size "
            f"{_shape_text(img_shape)} ({item.mask_path.name})"
        )
    sp = _spacing_for(item)
    plane = None if sp is None else (float(sp[-2]), float(sp[-1]))
    recists = []
    if mask.ndim == 2:
        got = recist_from_mask(mask, spacing=plane, per_component=per_component)
        recists = got if isinstance(got, list) else [got]
    else:
        # Volumes: every lesion on every axial slice it crosses.
        for z in np.flatnonzero(mask.any(axis=(1, 2))):
            try:
                got = recist_from_mask(mask[z], spacing=plane, per_component=True,
                                       slice_index=int(z))
            except RecistError:
                continue  # only specks on this slice
            recists.extend(got if isinstance(got, list) else [got])
    if not recists:
        raise RecistError("the mask holds no measurable lesion")
    return [
        RecistRecord(image=item.image_path, lesion=i, recist=r)
        for i, r in enumerate(recists, start=1)
    ]


def dataset_recists(
    dataset: Dataset,
    *,
    per_component: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> RecistsByStem:
    """RECIST per image stem: from ``recist.csv`` when present, else from the masks.

    Parameters
    ----------
    dataset : Dataset
        From :func:`scan_dataset`.
    per_component : bool
        For 2D masks: one RECIST per connected component (largest first) instead of
        the largest component only. 3D masks always give one RECIST per component on
        each axial slice it crosses (``slice_index`` set).
    progress, cancel : optional
        A progress callback and cancel token (:mod:`napari_recist_seg.progress`),
        for the mask-derivation pass (one step per mask).

    Returns
    -------
    RecistsByStem
        ``{stem: [RecistRecord, ...]}`` (records' ``image`` is the item's image path,
        lesion ids from 1), with ``.failures``: ``(file, reason)`` per image that
        gave nothing (unreadable mask or image header, mask size different from the
        image size, empty mask, no mask at all) or per CSV row naming an unknown image.
        Spacing is filled from NIfTI / DICOM / TIFF headers when known.

    Raises
    ------
    InputError
        When the dataset's ``recist.csv`` (or ``DL_info.csv``) itself is unusable.
    """
    if dataset.recist_csv is not None:
        return _from_csv(dataset, dataset.recist_csv, deeplesion=False)
    if dataset.dl_info is not None and not dataset.has_masks:
        return _from_csv(dataset, dataset.dl_info, deeplesion=True)

    out = RecistsByStem()
    tracker = ProgressTracker(len(dataset.items), progress)
    for item in dataset.items:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if item.mask_path is None:
            out.failures.append(
                (str(item.image_path), "no mask to derive RECIST from (and no recist.csv)")
            )
        else:
            try:
                out[item.stem] = _from_mask(item, per_component)
            except (MaskReadError, ImageReadError) as exc:
                out.failures.append((str(item.mask_path), str(exc)))
            except RecistError as exc:
                out.failures.append((str(item.mask_path), f"no RECIST from the mask: {exc}"))
            except ValueError as exc:  # size mismatch
                out.failures.append((str(item.mask_path), str(exc)))
        tracker.step(item.stem)
    return out


def write_derived_recist(dataset: str | os.PathLike[str], out_csv: str | os.PathLike[str]) -> Path:
    """Derive RECIST from a dataset's masks (ignoring its ``recist.csv``) into ``out_csv``.

    Used to segment or evaluate "from simulated RECIST" on a folder that also has
    hand-drawn RECIST.

    Raises
    ------
    InputError
        The dataset has no masks, or no mask gave a RECIST.
    """
    ds = scan_dataset(dataset)
    if not ds.has_masks:
        raise InputError(f"{dataset} has no masks/ to derive RECIST from")
    ds = replace(ds, recist_csv=None, dl_info=None)
    by_stem = dataset_recists(ds)
    records = [rec for stem in sorted(by_stem) for rec in by_stem[stem]]
    if not records:
        reasons = "; ".join(f"{f}: {r}" for f, r in by_stem.failures[:3])
        raise InputError(f"no RECIST could be derived from the masks of {dataset} ({reasons})")
    write_recist_csv(out_csv, records)
    return Path(out_csv)
