"""Files the annotator writes and reads: RECIST CSV, label masks, measurements, images."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.annotation.lesions import SyncResult
from napari_recist_seg.annotation.session import AnnotationSession
from napari_recist_seg.data import RecistRecord, write_labels, write_recist_csv
from napari_recist_seg.data.atomic import atomic_path, atomic_write_text
from napari_recist_seg.measurements import MEASUREMENT_COLUMNS, VOLUME_COLUMNS

__all__ = [
    "MEASUREMENT_FIELDS",
    "export_masks",
    "export_measurements",
    "export_recist_csv",
    "export_recist_csv_many",
    "free_path",
    "lesion_status",
    "records_for_image",
    "restore_states",
    "save_image",
    "session_records",
]


def free_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it does not exist, else the first free ``name-1.ext``, ``name-2.ext``...

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.nii.gz").write_text("x")
    >>> free_path(d / "a.nii.gz").name
    'a-1.nii.gz'
    """
    p = Path(path)
    if not p.exists():
        return p
    name = p.name
    stem, suffix = (name[: -len(".nii.gz")], ".nii.gz") if name.lower().endswith(".nii.gz") else (p.stem, p.suffix)
    i = 1
    while True:
        cand = p.with_name(f"{stem}-{i}{suffix}")
        if not cand.exists():
            return cand
        i += 1


def _target(path: str | os.PathLike[str], if_exists: str) -> Path:
    p = Path(path)
    if if_exists not in ("error", "rename", "overwrite"):
        raise ValueError(f"if_exists must be 'error', 'rename' or 'overwrite', got {if_exists!r}")
    if p.exists():
        if if_exists == "error":
            raise FileExistsError(f"{p} already exists; not overwriting it")
        if if_exists == "rename":
            return free_path(p)
    return p


def export_recist_csv(
    path: str | os.PathLike[str],
    session: AnnotationSession,
    image_path: str | os.PathLike[str],
    *,
    if_exists: str = "error",
) -> Path:
    """Write the session's valid lesions as a RECIST CSV (DESIGN.md) for one image.

    Parameters
    ----------
    if_exists : {"error", "rename", "overwrite"}
        What to do when ``path`` exists: refuse (``FileExistsError``), write next to
        it under a free name, or replace it (atomically).

    Returns
    -------
    Path
        The file written.
    """
    return export_recist_csv_many(path, [(session, image_path)], if_exists=if_exists)


def export_recist_csv_many(
    path: str | os.PathLike[str],
    items: Sequence[tuple[AnnotationSession, str | os.PathLike[str]]],
    *,
    if_exists: str = "error",
) -> Path:
    """Write the valid lesions of several images, ``(session, image file)`` pairs, to one CSV.

    Each row's ``status`` column keeps the lesion's state (:func:`lesion_status`), so
    :func:`restore_states` can give it back on import.
    """
    records = [rec for session, image_path in items for rec in session_records(session, image_path)]
    if not records:
        raise ValueError("no complete lesion to export (draw two crossing axes first)")
    target = _target(path, if_exists)
    write_recist_csv(target, records)
    return target


def session_records(session: AnnotationSession, image_path: str | os.PathLike[str]) -> list[RecistRecord]:
    """The RECIST CSV records of a session's complete lesions, each with its ``status``."""
    return [
        RecistRecord(image=Path(image_path), lesion=i, recist=r, status=lesion_status(session, i))
        for i, r in session.recists()
    ]


def lesion_status(session: AnnotationSession, lesion_id: int) -> str:
    """The RECIST CSV ``status`` of one lesion: ``draft`` / ``committed``, ``+edited`` if hand-edited."""
    les = session.lesions[lesion_id]
    return ("committed" if les.committed else "draft") + ("+edited" if les.edited else "")


def restore_states(session: AnnotationSession, records: Sequence[Any]) -> SyncResult:
    """Give imported lesions back the committed state their CSV rows recorded.

    Call it right after the records were added with their ids (``add_recist(...,
    lesion_id=record.lesion)``); no undo step of its own, so one Undo removes the
    import as before. Records without a status (an old CSV) change nothing. ``+edited``
    is not restored: the CSV holds lines, not the hand-edited mask, so the imported
    lesion's mask is the segmenter's until its masks file is imported.

    Returns
    -------
    SyncResult
        ``rewrite`` when some lesion was committed (its lines are now drawn locked).
    """
    out = SyncResult()
    for r in records:
        if not (getattr(r, "status", None) or "").startswith("committed"):
            continue
        les = _imported_lesion(session, r)
        if les is not None:
            les.committed = True
            out.rewrite = out.changed = True
    return out


def _imported_lesion(session: AnnotationSession, record: Any) -> Any:
    """The uncommitted lesion holding ``record``'s lines: its id, else (the id was taken
    by a lesion already there, so the import got a new one) the one with its long axis."""
    def holds(les: Any) -> bool:
        return (les is not None and les.recist is not None and not les.committed
                and les.slice_index == record.recist.slice_index
                and np.allclose(les.recist.long_axis, record.recist.long_axis, atol=0.5))

    first = session.lesions.get(int(record.lesion))
    if holds(first):
        return first
    return next((les for les in session.lesions.values() if holds(les)), None)


def records_for_image(records: Sequence[Any], image_path: str | os.PathLike[str] | None, image_name: str) -> list[Any]:
    """The records of a RECIST CSV that belong to one image.

    Matched by resolved path, else by file stem (``ISIC_0000000`` matches a layer named
    ``ISIC_0000000``); a CSV about a single image matches any image.
    """
    if not records:
        return []
    if image_path is not None:
        target = Path(image_path).resolve()
        hits = [r for r in records if Path(r.image).resolve() == target]
        if hits:
            return hits
    def stem(p: Any) -> str:
        n = Path(p).name
        for suf in (".nii.gz", ".nii"):
            if n.lower().endswith(suf):
                return n[: -len(suf)]
        return Path(n).stem
    hits = [r for r in records if stem(r.image) == image_name or stem(r.image) == stem(image_name)]
    if hits:
        return hits
    if len({str(Path(r.image)) for r in records}) == 1:
        return list(records)
    return []


def save_image(
    path: str | os.PathLike[str], image: np.ndarray, spacing: Sequence[float] | None = None
) -> Path:
    """Save an in-memory image so that a RECIST CSV can point at it.

    ``.png`` for uint8 grey / RGB, ``.tif`` for other 2D images, ``.nii.gz`` for
    ``(z, row, col)`` volumes (spacing in the header, axis order as
    :mod:`napari_recist_seg.data.masks` writes NIfTI, so :func:`read_image` reads it
    back the same way). Written atomically; an existing file is refused.
    """
    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p} already exists; not overwriting it")
    arr = np.asarray(image)
    name = p.name.lower()
    with atomic_path(p) as tmp:
        if name.endswith((".nii.gz", ".nii")):
            import nibabel as nib

            vol = arr[None] if arr.ndim == 2 else arr
            if vol.ndim != 3:
                raise ValueError(f"{p.name}: NIfTI needs a 2D image or a (z, row, col) volume")
            sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * vol.ndim
            if len(sp) == 2:
                sp = (1.0,) + sp
            zooms = (sp[2], sp[1], sp[0])
            nimg = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.diag([*zooms, 1.0]))
            nimg.header.set_zooms(zooms)
            nimg.header.set_xyzt_units("mm")
            nib.save(nimg, str(tmp))
        elif name.endswith(".png"):
            from PIL import Image

            if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
                raise ValueError(f"{p.name}: PNG needs a uint8 grey or RGB image; use .tif")
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
        elif name.endswith((".tif", ".tiff")):
            import tifffile

            tifffile.imwrite(tmp, np.ascontiguousarray(arr))
        else:
            raise ValueError(f"{p.name}: save images as .png, .tif or .nii.gz")
    return p


def export_masks(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    if_exists: str = "error",
    affine: Any = None,
) -> Path:
    """Write the label image (one id per lesion): png/tif for 2D, nii.gz (with spacing) for 3D.

    ``affine``: the image's voxel-to-world affine (the reader's ``metadata["affine"]``)
    for a NIfTI of the same grid: the masks then keep the image's orientation and
    origin and overlay it in ITK-SNAP / 3D Slicer (without it: a diagonal affine from
    ``spacing``, which an oblique or off-origin scan does not match).
    """
    target = _target(path, if_exists)
    lab = np.asarray(labels)
    name = target.name.lower()
    if lab.ndim == 3 and not (name.endswith(".nii.gz") or name.endswith(".nii") or name.endswith((".tif", ".tiff"))):
        raise ValueError(f"{target.name}: a volume's masks are saved as .nii.gz (or .tif)")
    write_labels(target, lab, spacing, affine=affine)
    return target


# The bulk job's measurements.csv columns, plus the annotator's per-lesion state, so a
# table exported from the viewer reads like one written by `recist-seg segment`.
MEASUREMENT_FIELDS: tuple[str, ...] = MEASUREMENT_COLUMNS + ("status", "committed", "edited")
#: With a 3D lesion among the rows: the volume columns of ``segment --3d`` as well.
MEASUREMENT_FIELDS_3D: tuple[str, ...] = MEASUREMENT_COLUMNS + VOLUME_COLUMNS + (
    "status", "committed", "edited")


def export_measurements(
    path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, if_exists: str = "error"
) -> Path:
    """Write measurement rows (:meth:`AnnotationSession.measurement_rows`) as CSV."""
    target = _target(path, if_exists)
    buf = io.StringIO()
    is_3d = any(row.get("volume_voxels") not in (None, "") for row in rows)
    fields = MEASUREMENT_FIELDS_3D if is_3d else MEASUREMENT_FIELDS
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) else v)) for k, v in row.items()})
    atomic_write_text(target, buf.getvalue())
    return target
