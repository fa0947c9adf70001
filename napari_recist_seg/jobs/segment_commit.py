"""Committing a ``recist-seg segment`` image (:mod:`napari_recist_seg.jobs.segment`).

One image's union mask and label image pasted from its results and written atomically,
then its record (:mod:`napari_recist_seg.jobs.outdir`); ``measurements.csv`` rebuilt
from the committed records.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from napari_recist_seg.data.atomic import atomic_write_bytes, atomic_write_text
from napari_recist_seg.data.masks import write_labels, write_mask
from napari_recist_seg.jobs import outdir
from napari_recist_seg.jobs.common import JobReport
from napari_recist_seg.jobs.outdir import OutputWriteError, describe_os_error
from napari_recist_seg.jobs.segment_plan import MEASUREMENTS_CSV, SegmentItem, prompts_digest
from napari_recist_seg.measurements import MEASUREMENT_COLUMNS, measurement_row
from napari_recist_seg.recist import Recist

if TYPE_CHECKING:  # pragma: no cover
    from napari_recist_seg.predict import LesionResult


# 2D masks and label images: no PNG row filter, zlib level 1 with its run-length
# strategy. The same 8-bit grey pixels as PIL's default encoding, in a fifth of the
# CPU and smaller (a 256 px ISIC mask: 0.07 ms and 0.7 kB against 0.42 ms and 1.2 kB;
# with OpenCV's adaptive filters 0.39 ms): flat regions are runs, filters only cost.
_PNG_LEVEL, _PNG_STRATEGY_RLE = 1, 3  # zlib's Z_RLE = cv2.IMWRITE_PNG_STRATEGY_RLE


def _write_png(path: Path, image: np.ndarray | bytes) -> None:
    """A 2D uint8 image (or its :func:`_png_bytes`) as an 8-bit grey PNG, atomically."""
    atomic_write_bytes(path, image if isinstance(image, bytes) else _png_bytes(path, image))


def _png_bytes(path: Path, image: np.ndarray) -> bytes:
    import cv2  # loaded by the predictor already; kept out of this module's import

    params = [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL, cv2.IMWRITE_PNG_STRATEGY, _PNG_STRATEGY_RLE]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image), params)
    if not ok:  # pragma: no cover - OpenCV encodes any 2D uint8 array
        raise ValueError(f"{path}: OpenCV could not encode the mask")
    return encoded.tobytes()


# -- measurements.csv ------------------------------------------------------------------


def _write_measurements(path: Path, rows: Sequence[dict[str, object]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MEASUREMENT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in MEASUREMENT_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    return str(value)


def _image_label(image_path: Path, out: Path) -> str:
    """The image path relative to OUT (forward slashes), like the RECIST CSV convention."""
    try:
        rel = os.path.relpath(os.path.abspath(image_path), os.path.abspath(out))
    except ValueError:  # different drives on Windows
        rel = os.path.abspath(image_path)
    return rel.replace(os.sep, "/")


def _measurement_row(
    image: str, lesion: int, res: "LesionResult", spacing: tuple[float, float] | None
) -> dict[str, object]:
    return measurement_row(
        image, lesion, res.recist, res.measured, cluster=res.cluster,
        confidence=res.confidence, area_px=res.area_px, spacing=spacing,
    )


def _outputs(out: Path, stem: str, volume: bool) -> tuple[Path, Path]:
    ext = ".nii.gz" if volume else ".png"
    return out / f"{stem}{ext}", out / f"{stem}_labels{ext}"


def _existing_output(out: Path, item: SegmentItem) -> Path | None:
    for volume in (False, True):
        mask_path, _ = _outputs(out, item.stem, volume)
        if mask_path.exists():
            return mask_path
    return None


@dataclass
class _Loaded:
    """An image read from disk with its usable (validated, snapped) RECIST."""

    item: SegmentItem
    data: object
    lesions: list[tuple[int, Recist]]

    @property
    def volume(self) -> bool:
        return bool(self.data.is_volume)  # type: ignore[attr-defined]


def _masks(loaded: _Loaded, results: Sequence["LesionResult"]) -> tuple[np.ndarray, np.ndarray | None]:
    """The union mask (uint8 0/255) and, with several lesions, the label image."""
    valid, volume = loaded.lesions, loaded.volume
    array = loaded.data.array  # type: ignore[attr-defined]
    shape = array.shape if volume else array.shape[:2]
    union = np.zeros(shape, dtype=np.uint8)
    labels = None
    ids = [lesion for lesion, _ in valid]
    values = ids
    if len(valid) > 1:
        # Label value = lesion id. Ids below 1 (0-based CSVs) would vanish into the
        # background, and a PNG holds at most 65535: then the lesions are numbered
        # 1.. in id order instead (the rows of measurements.csv give the ids).
        if min(ids) < 1 or (not volume and max(ids) > 65535):
            values = list(range(1, len(ids) + 1))
        top = max(values)
        dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
        labels = np.zeros(shape, dtype=dtype)
    for value, res in zip(values, results):
        _paste(res, union, 255, volume)
        if labels is not None:
            _paste(res, labels, value, volume)
    return union, labels


def _commit(
    loaded: _Loaded,
    results: Sequence["LesionResult"],
    out: Path,
    report: JobReport,
    ours: set[str],
    journal: "outdir.Journal | None" = None,
) -> dict:
    """Commit one image: its masks (atomically), then its record (files + rows), a
    line of ``journal`` (else a record file).

    Until the record exists the image counts as not done, so a crash in between
    only means the image is redone. ``ours`` are the names the tool claimed in
    ``out`` (a labels file is removed only if it is one of them).

    Raises
    ------
    OutputWriteError
        ``out`` cannot be written (full disk, read-only...): the run must stop.
    """
    try:
        # An old record must not vouch for the new masks while they are half done.
        outdir.remove_record(out, loaded.item.stem, journal)
        record = _write_outputs(loaded, results, out, ours)
        write_record_of(out, loaded.item.stem, record, journal)
    except OSError as exc:
        raise output_write_error(out, exc, report.processed) from None
    report.outputs.extend(out / n for n in record["outputs"])
    return record


def output_write_error(out: Path, exc: OSError | str, processed: int) -> OutputWriteError:
    """The one line for an ``out`` that cannot be written (``exc``: the error or its
    description), with the number of images finished and kept."""
    reason = exc if isinstance(exc, str) else describe_os_error(exc)
    return OutputWriteError(
        f"cannot write into {out}: {reason}; {processed} image(s) "
        "finished and kept, run again (with space / write access) to resume"
    )


def write_record_of(out: Path, stem: str, record: dict, journal: "outdir.Journal | None") -> None:
    """The record of :func:`_write_outputs`' files (the commit's second half)."""
    outdir.write_record(out, stem, record["outputs"], record["rows"], journal=journal,
                        prompts=record["prompts"])


def _write_outputs(loaded: _Loaded, results: Sequence["LesionResult"], out: Path, ours: set[str]) -> dict:
    """Write one image's masks atomically (no record); its record's content (the
    first half of :func:`_commit`). ``OSError`` passes through."""
    encoded = encode_outputs(loaded, results, out, ours)
    write_encoded(encoded)
    return encoded.record


@dataclass
class EncodedOutputs:
    """One image's outputs made and ready to write: 2D files as PNG bytes, volumes as
    arrays (written as NIfTI with the input's geometry), and its record's content.
    Made where the pixels are (a worker process, :mod:`.segment_processes`) and
    written by the one process that owns ``OUT``."""

    record: dict  # outputs, rows, prompts
    files: list[tuple[Path, "bytes | np.ndarray"]]  # labels first, then the mask
    spacing: object = None
    affine: object = None
    stale_labels: Path | None = None  # an earlier run's labels file of this image (ours)


def encode_outputs(loaded: _Loaded, results: Sequence["LesionResult"], out: Path,
                   ours: "set[str] | frozenset[str]") -> EncodedOutputs:
    """The union mask, label image and measurement rows of one image (no file written)."""
    item, data, volume = loaded.item, loaded.data, loaded.volume
    union, labels = _masks(loaded, results)
    mask_path, labels_path = _outputs(out, item.stem, volume)
    image_label = _image_label(item.image_path, out)
    rows = [
        {k: _fmt(v) for k, v in _measurement_row(image_label, lesion, res, res.recist.spacing).items()}
        for (lesion, _), res in zip(loaded.lesions, results)
    ]
    outputs = [mask_path.name] + ([labels_path.name] if labels is not None else [])
    files: list[tuple[Path, bytes | np.ndarray]] = []
    if labels is not None:
        png = not volume and labels.dtype == np.uint8
        files.append((labels_path, _png_bytes(labels_path, labels) if png else labels))
    files.append((mask_path, union > 0 if volume else _png_bytes(mask_path, union)))  # 0 / 255
    return EncodedOutputs(
        {"outputs": outputs, "rows": rows, "prompts": prompts_digest(item)}, files,
        spacing=data.spacing,  # type: ignore[attr-defined]
        # The input's geometry (NIfTI affine / DICOM series RAS affine), for volume outputs.
        affine=getattr(data, "metadata", {}).get("affine") if volume else None,
        stale_labels=labels_path if labels is None and labels_path.name in ours else None,
    )


def write_encoded(encoded: EncodedOutputs) -> None:
    """Write :func:`encode_outputs`' files, each atomically. ``OSError`` passes through."""
    if encoded.stale_labels is not None and encoded.stale_labels.exists():
        encoded.stale_labels.unlink()  # from an earlier run with more lesions (overwrite)
    for path, content in encoded.files:
        if isinstance(content, bytes):
            _write_png(path, content)
        elif content.dtype == bool:
            write_mask(path, content, spacing=encoded.spacing, affine=encoded.affine)
        else:
            write_labels(path, content, spacing=encoded.spacing, affine=encoded.affine)


def _paste(res: "LesionResult", target: np.ndarray, value: int, volume: bool) -> None:
    if volume:
        z = res.recist.slice_index
        res.paste_into(target[z], value)  # a view: pastes into the volume in place
    else:
        res.paste_into(target, value)


def _finish(out: Path, records: dict[str, dict], report: JobReport) -> None:
    """Rebuild measurements.csv from the committed records; write failures.csv."""
    _write_tables(out, records)
    report.write_failures(out)


def _write_tables(out: Path, records: dict[str, dict]) -> None:
    csv_path = out / MEASUREMENTS_CSV
    rows = [row for rec in records.values() if outdir.committed(out, rec) for row in rec["rows"]]
    if rows or csv_path.exists():
        rows.sort(key=lambda r: (str(r.get("image")), _as_int(r.get("lesion"))))
        _write_measurements(csv_path, rows)


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
