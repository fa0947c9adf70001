"""``recist-seg segment``: bulk segmentation of stored RECIST measurements.

Inputs are a dataset folder (``images/``, optional ``masks/`` and ``recist.csv``; with
masks and no ``recist.csv`` the RECIST are derived from the masks, which is how a
held-out evaluation with "RECIST derived from expert masks" is run) or a list of image
files plus a RECIST CSV (the interchange format of DESIGN.md, or DeepLesion's
``DL_info.csv``, recognised by its header).

Outputs, all written atomically into ``OUT``:

- ``<stem>.png`` (2D) or ``<stem>.nii.gz`` (volumes, with the voxel spacing): the union
  of the image's lesion masks, 0/255 ``uint8``, the size of the image;
- ``<stem>_labels.png`` / ``<stem>_labels.nii.gz`` when an image has several lesions
  (label value = lesion id);
- ``measurements.csv``: one row per lesion (:data:`MEASUREMENT_COLUMNS`); ``image`` is
  the image path relative to ``OUT`` (the RECIST CSV convention);
- ``failures.csv`` when some files or RECIST could not be processed.

Each image is committed on its own (:mod:`napari_recist_seg.jobs.outdir`): its masks
are written atomically, then a record of its files and measurement rows
(``OUT/.recist-seg/records/<stem>.json``); ``measurements.csv`` is rebuilt from all
records, during and at the end of every run. So a crash, ``kill -9`` or full disk at
any moment leaves a state from which a re-run gives exactly the outputs of a clean
run. An image whose record and masks exist is skipped (resume) unless ``overwrite``.
One run at a time writes into an ``OUT`` (a lock; a second run refuses). Before
writing anything the run checks its plan: two inputs that would write the same output
name, an ``OUT`` inside an input folder, or files in ``OUT`` that the tool did not
write and would overwrite (without ``overwrite``) are refused with one line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from napari_recist_seg.jobs.common import (
    FAILURES_CSV,
    CancelToken,
    InputError,
    JobReport,
    ProgressCallback,
    ProgressTracker,
    describe_error,
)
from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.data.deeplesion import read_deeplesion_csv
from napari_recist_seg.jobs import outdir
from napari_recist_seg.jobs.outdir import OutputWriteError, describe_os_error
from napari_recist_seg.jobs.pipeline import Steps, run_pipelined
# The columns and the row builder live in measurements (the annotator uses them too);
# re-exported here, where the bulk job and its callers import them.
from napari_recist_seg.measurements import MEASUREMENT_COLUMNS, measurement_row
from napari_recist_seg.recist import Recist, RecistError, snap

if TYPE_CHECKING:  # pragma: no cover
    from napari_recist_seg.predict import LesionResult, Predictor

__all__ = ["MEASUREMENTS_CSV", "MEASUREMENT_COLUMNS", "SegmentItem", "plan_segment", "run_segment"]

MEASUREMENTS_CSV = "measurements.csv"
# measurements.csv is rebuilt from the records (atomically) at most this often during a
# run, and always at the end; a re-run after a crash rebuilds it from all records.
_CSV_FLUSH_SECONDS = 2.0
# Images read ahead and segmented together: at most this many, and no more once
# their pixels take this many bytes (a chunk of large photographs stays small).
_CHUNK_IMAGES = 8
_CHUNK_BYTES = 64 << 20


@dataclass
class SegmentItem:
    """One image to segment: where it is, its output stem and its RECIST."""

    image_path: Path
    stem: str
    lesions: list[tuple[int, Recist]] = field(default_factory=list)
    deeplesion: bool = False


# -- planning --------------------------------------------------------------------------


def _is_deeplesion_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read RECIST CSV {path}: {exc}") from exc
    return "Measurement_coordinates" in [h.strip() for h in header]


def _read_records(recist_csv: Path) -> tuple[list, bool]:
    """Records from a RECIST CSV or a DeepLesion DL_info.csv, and whether it is the latter."""
    from napari_recist_seg.data import recist_csv as rcsv

    recist_csv = Path(recist_csv)
    if not recist_csv.is_file():
        raise InputError(f"RECIST CSV not found: {recist_csv}")
    if _is_deeplesion_csv(recist_csv):
        return list(read_deeplesion_csv(recist_csv, recist_csv.parent)), True
    return list(rcsv.read_recist_csv(recist_csv)), False


def _key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def _output_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output stems; files with the same name in different folders (DeepLesion's
    ``000001_01_01/103.png``) get their parent folders prefixed until unique."""
    stems = [_output_stem(p) for p in paths]
    seen: dict[tuple[str, str], Path] = {}
    for p, s in zip(paths, stems):
        # x.jpg and x.png in one folder: no folder prefix tells them apart.
        other = seen.setdefault((_key(p.parent), s.casefold()), p)
        if other != p:
            raise InputError(
                f"{other} and {p} would both be written as {s}.* in the output folder; "
                "rename one, or segment them into different --out folders"
            )
    depth = 0
    while len(set(stems)) < len(stems) and depth < 8:
        depth += 1
        counts = defaultdict(int)
        for s in stems:
            counts[s] += 1
        for i, p in enumerate(paths):
            if counts[stems[i]] > 1:
                parents = [q.name for q in list(p.parents)[:depth] if q.name][::-1]
                stems[i] = "_".join(parents + [_output_stem(p)])
    return stems


class _RecordIndex:
    """RECIST records grouped by image, looked up by path.

    A CSV written on another machine may name an image by another absolute or
    relative path: when the full path does not match, the last two path components
    (DeepLesion's ``<series>/<slice>.png``), then the file name are tried, when
    unambiguous.
    """

    def __init__(self, records: Iterable) -> None:
        self.by_path: dict[str, list[tuple[int, Recist]]] = defaultdict(list)
        for rec in records:
            self.by_path[_key(Path(rec.image))].append((int(rec.lesion), rec.recist))
        self.by_tail: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for k in self.by_path:
            parts = Path(k).parts
            self.by_tail[parts[-2:]].append(k)
            self.by_tail[parts[-1:]].append(k)

    def get(self, path: Path) -> list[tuple[int, Recist]]:
        k = _key(path)
        if k in self.by_path:
            return self.by_path[k]
        parts = Path(k).parts
        for tail in (parts[-2:], parts[-1:]):
            cands = self.by_tail.get(tail, [])
            if len(cands) == 1:
                return self.by_path[cands[0]]
        return []


def plan_segment(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    recist_csv: str | os.PathLike[str] | None = None,
) -> tuple[list[SegmentItem], list[tuple[str, str]], list[Path]]:
    """Resolve inputs to images with their RECIST (see :func:`_plan`)."""
    items, failures, protect, _ = _plan(inputs, recist_csv=recist_csv)
    return items, failures, protect


def _plan(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    recist_csv: str | os.PathLike[str] | None = None,
) -> tuple[list[SegmentItem], list[tuple[str, str]], list[Path], list[Path]]:
    """Resolve inputs to images with their RECIST.

    Returns
    -------
    items : list of SegmentItem
    failures : list of (file, reason)
        Images without any RECIST.
    protect : list of Path
        Input folders that must not receive outputs (a dataset's images and masks).
    nested : list of Path
        Input folders scanned recursively: no output folder may lie inside them (the
        next run would take the outputs for inputs).

    Raises
    ------
    InputError
        If the inputs do not exist, or a file list comes without a RECIST CSV.
    """
    failures: list[tuple[str, str]] = []
    if isinstance(inputs, (str, os.PathLike)):
        inputs_list: list[Path] = [Path(inputs)]
    else:
        inputs_list = [Path(p) for p in inputs]
    if not inputs_list:
        raise InputError("no inputs given")

    if len(inputs_list) == 1 and inputs_list[0].is_dir():
        from napari_recist_seg.data.dataset import dataset_recists, scan_dataset

        dataset = scan_dataset(inputs_list[0])
        protect = [d for d in (dataset.images_dir, dataset.masks_dir) if d is not None]
        # A flat dataset (images in the root) is not walked into subfolders.
        nested = [d for d in protect if d != dataset.root]
        deeplesion = False
        if recist_csv is not None:
            records, deeplesion = _read_records(Path(recist_csv))
            index = _RecordIndex(records)
            lesions_for = [index.get(item.image_path) for item in dataset.items]
        else:
            if dataset.recist_csv is None and dataset.dl_info is None and not dataset.has_masks:
                raise InputError(
                    f"{dataset.root} has no recist.csv and no masks/ to derive RECIST "
                    "from; pass --recist CSV"
                )
            deeplesion = dataset.recist_csv is None and dataset.dl_info is not None
            derived = dataset_recists(dataset)
            failures.extend(derived.failures)
            lesions_for = [
                [(int(r.lesion), r.recist) for r in derived.get(item.stem, [])]
                for item in dataset.items
            ]
        reported = {f for f, _ in failures}
        items = []
        for item, lesions in zip(dataset.items, lesions_for):
            if not lesions:
                if str(item.image_path) not in reported and str(item.mask_path) not in reported:
                    failures.append((str(item.image_path), "no RECIST for this image"))
                continue
            lesions = sorted(lesions, key=lambda t: t[0])
            items.append(SegmentItem(item.image_path, item.stem, lesions, deeplesion))
        return items, failures, protect, nested

    for p in inputs_list:
        if p.is_dir():
            raise InputError(
                f"{p} is a folder: give either one dataset folder or a list of image files"
            )
    if recist_csv is None:
        raise InputError("image files need a RECIST CSV: pass --recist CSV (or DL_info.csv)")
    records, deeplesion = _read_records(Path(recist_csv))
    index = _RecordIndex(records)
    stems = _unique_stems(inputs_list)
    items = []
    for path, stem in zip(inputs_list, stems):
        lesions = index.get(path)
        if not path.exists():
            failures.append((str(path), "file not found"))
            continue
        if not lesions:
            failures.append((str(path), f"no RECIST for this image in {recist_csv}"))
            continue
        items.append(SegmentItem(path, stem, sorted(lesions, key=lambda t: t[0]), deeplesion))
    return items, failures, [], []


def _check_collisions(items: Sequence[SegmentItem], out: Path) -> None:
    """Refuse two images that would write the same output name (``x.jpg`` and ``x.png``
    both write ``x.png``; ``a`` with several lesions writes ``a_labels``, as does an
    image ``a_labels``). Compared case-blind, as on macOS and Windows disks."""
    owner: dict[str, SegmentItem] = {}
    for item in items:
        names = [item.stem] + ([f"{item.stem}_labels"] if len(item.lesions) > 1 else [])
        for name in names:
            other = owner.setdefault(name.casefold(), item)
            if other is not item:
                raise InputError(
                    f"{other.image_path} and {item.image_path} would both be written as "
                    f"{name}.* in {out}; rename one, or segment them into different --out folders"
                )


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_out(
    out: Path,
    protect: Sequence[Path],
    items: Sequence[SegmentItem],
    nested: Sequence[Path] = (),
) -> None:
    """Refuse an output folder that holds inputs: an input mask is never overwritten,
    and outputs are never written where a later scan would take them for inputs."""
    out_key = _key(out)
    forbidden: set[str] = {_key(d) for d in protect}
    for item in items:
        forbidden.add(_key(item.image_path.parent))
        if item.image_path.is_dir():  # a DICOM series folder
            forbidden.add(_key(item.image_path))
        if item.image_path.parent.name == "images":
            forbidden.add(_key(item.image_path.parent.parent / "masks"))
    try:
        out_real = _key(out.resolve())
        forbidden |= {_key(Path(f).resolve()) for f in forbidden}
    except OSError:  # pragma: no cover - unresolvable paths: compare as given
        out_real = out_key
    if out_key in forbidden or out_real in forbidden:
        raise InputError(
            f"refusing to write into {out}: it holds input images or masks; choose another --out"
        )
    for d in nested:
        for folder in {_key(d), _key(d.resolve())}:
            if _inside(out_key, folder) or _inside(out_real, folder):
                raise InputError(
                    f"refusing to write into {out}: it is inside the input folder {d}, whose "
                    "next scan would take the outputs for inputs; choose another --out"
                )


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


# -- the job ---------------------------------------------------------------------------


def _outputs(out: Path, stem: str, volume: bool) -> tuple[Path, Path]:
    ext = ".nii.gz" if volume else ".png"
    return out / f"{stem}{ext}", out / f"{stem}_labels{ext}"


def _existing_output(out: Path, item: SegmentItem) -> Path | None:
    for volume in (False, True):
        mask_path, _ = _outputs(out, item.stem, volume)
        if mask_path.exists():
            return mask_path
    return None


def _read(item: SegmentItem):
    from napari_recist_seg.data.images import read_image

    # DL_info.csv names 16-bit PNG slices that store HU + 32768.
    return read_image(item.image_path, deeplesion=True if item.deeplesion else None)


@dataclass
class _Loaded:
    """An image read from disk with its usable (validated, snapped) RECIST."""

    item: SegmentItem
    data: object
    lesions: list[tuple[int, Recist]]

    @property
    def volume(self) -> bool:
        return bool(self.data.is_volume)  # type: ignore[attr-defined]


def _load(item: SegmentItem, report: JobReport) -> _Loaded:
    """Read one image and check its RECIST (bad ones are reported and dropped)."""
    data = _read(item)
    array = data.array
    volume = bool(data.is_volume)
    spacing = data.plane_spacing
    valid: list[tuple[int, Recist]] = []
    for lesion, r in item.lesions:
        if not volume and r.slice_index is not None:
            # A 2D slice file (DeepLesion key slice): the slice index names the file.
            r = replace(r, slice_index=None)
        if r.spacing is None and spacing is not None:
            r = r.with_spacing(spacing)
        try:
            if volume and r.slice_index is None:
                raise RecistError("no slice index for a RECIST on a volume")
            r.validate(array.shape)
            valid.append((lesion, snap(r, image_shape=array.shape)))
        except RecistError as exc:
            report.fail(item.image_path, f"lesion {lesion}: {exc}")
    if not valid:
        raise RecistError("no usable RECIST for this image")
    return _Loaded(item, data, valid)


def _segment_chunk(
    chunk: Sequence[_Loaded], predictor: "Predictor", batch_size: int
) -> list[list["LesionResult"] | BaseException]:
    """All lesions of several images in shared forward passes (one result list or
    the error per image)."""
    jobs = [(c.data.array, [r for _, r in c.lesions]) for c in chunk]  # type: ignore[attr-defined]
    many = getattr(predictor, "segment_many", None)
    if many is not None and len(jobs) > 1:
        try:
            return list(many(jobs, batch_size=batch_size))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception:  # noqa: BLE001 - redo one by one to blame the right image
            pass
    out: list[list["LesionResult"] | BaseException] = []
    for array, recists in jobs:
        try:
            out.append(list(predictor.segment(array, recists, batch_size=batch_size)))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - reported per file by the caller
            out.append(exc)
    return out


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
) -> dict:
    """Commit one image: its masks (atomically), then its record (files + rows).

    Until the record exists the image counts as not done, so a crash in between
    only means the image is redone. ``ours`` are the names the tool claimed in
    ``out`` (a labels file is removed only if it is one of them).

    Raises
    ------
    OutputWriteError
        ``out`` cannot be written (full disk, read-only...): the run must stop.
    """
    from napari_recist_seg.data.masks import write_labels, write_mask

    item, data, volume = loaded.item, loaded.data, loaded.volume
    union, labels = _masks(loaded, results)
    mask_path, labels_path = _outputs(out, item.stem, volume)
    out_spacing = data.spacing  # type: ignore[attr-defined]
    # The input's geometry (NIfTI affine / DICOM series RAS affine), for volume outputs.
    out_affine = getattr(data, "metadata", {}).get("affine") if volume else None
    image_label = _image_label(item.image_path, out)
    rows = [
        {k: _fmt(v) for k, v in _measurement_row(image_label, lesion, res, res.recist.spacing).items()}
        for (lesion, _), res in zip(loaded.lesions, results)
    ]
    outputs = [mask_path.name] + ([labels_path.name] if labels is not None else [])
    try:
        # An old record must not vouch for the new masks while they are half done.
        outdir.remove_record(out, item.stem)
        if labels is not None:
            write_labels(labels_path, labels, spacing=out_spacing, affine=out_affine)
        elif labels_path.name in ours and labels_path.exists():
            labels_path.unlink()  # from an earlier run with more lesions (overwrite)
        write_mask(mask_path, union > 0, spacing=out_spacing, affine=out_affine)
        outdir.write_record(out, item.stem, outputs, rows)
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write into {out}: {describe_os_error(exc)}; {report.processed} image(s) "
            "finished and kept, run again (with space / write access) to resume"
        ) from None
    report.outputs.extend(out / n for n in outputs)
    return {"outputs": outputs, "rows": rows}


def _paste(res: "LesionResult", target: np.ndarray, value: int, volume: bool) -> None:
    if volume:
        z = res.recist.slice_index
        res.paste_into(target[z], value)  # a view: pastes into the volume in place
    else:
        res.paste_into(target, value)


def run_segment(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    recist_csv: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    batch_size: int = 32,
    predictor: "Predictor | None" = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    window: object = None,
    modality: str | None = None,
) -> JobReport:
    """Segment every RECIST of a dataset folder or a list of image files.

    Parameters
    ----------
    inputs : path or list of paths
        A dataset folder, or image files (then ``recist_csv`` is required).
    out : path
        Output folder (created); must not be the dataset's ``images/`` or ``masks/``.
    recist_csv : path, optional
        RECIST CSV or DeepLesion ``DL_info.csv``; for a dataset folder the default is
        its ``recist.csv``, or RECIST derived from its masks.
    model : path, optional
        Checkpoint; ``None`` = the default model shipped with the package.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    overwrite : bool
        Redo images whose outputs exist (default: skip them and keep their rows).
    batch_size : int
        Crops per forward pass; all lesions of one image go in one call.
    predictor : Predictor, optional
        An already loaded predictor (the napari widget reuses its model); overrides
        ``model`` and ``device``.
    progress, cancel
        See :mod:`napari_recist_seg.jobs.common`. Cancelling stops between images;
        finished outputs and their rows are kept.
    window, modality
        Intensity rule (:mod:`napari_recist_seg.intensity`): a CT window preset or
        ``(level, width)``, and ``"ct"`` / another modality to override detection.

    Returns
    -------
    JobReport
        ``processed`` images written, ``skipped`` (already done), ``failures`` per
        file (unreadable image, bad RECIST), ``cancelled``.

    Raises
    ------
    InputError
        Missing inputs, a file list without a RECIST CSV, or ``out`` being an input
        folder.
    """
    out = Path(out)
    items, plan_failures, protect, nested = _plan(inputs, recist_csv=recist_csv)
    _check_out(out, protect, items, nested)
    _check_collisions(items, out)
    report = JobReport()
    for file, reason in plan_failures:
        report.fail(file, reason)
    outdir.prepare_out(out)
    with outdir.OutputLock(out):
        outdir.clean_temps(out)
        records = outdir.read_records(out)
        todo: list[SegmentItem] = []
        for item in items:
            if not overwrite and outdir.committed(out, records.get(item.stem)):
                report.skipped += 1
            else:
                todo.append(item)
        ours = _claim_outputs(out, todo, overwrite)
        if todo and predictor is None:
            from napari_recist_seg.predict import Predictor

            predictor = Predictor.load(model, device=device)
        if predictor is not None and (window is not None or modality is not None):
            predictor.window, predictor.modality = window, modality
        try:
            # Overlapped read / segment / write unless RECIST_SEG_SERIAL=1 (same outputs).
            run = _segment_all if os.environ.get("RECIST_SEG_SERIAL") == "1" else _segment_pipelined
            run(todo, out, predictor, batch_size, report, records, ours,
                ProgressTracker(len(todo), progress), cancel)
        except BaseException:
            # Whatever stopped the run, the tables follow the committed records; on a
            # full disk this may fail too (a re-run rebuilds them).
            with contextlib.suppress(OSError):
                _finish(out, records, report)
            raise
        try:
            _finish(out, records, report)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write into {out}: {describe_os_error(exc)}; the masks are kept, run "
                "again (with space / write access) to write the tables"
            ) from None
    return report


def _candidate_names(item: SegmentItem) -> list[str]:
    """Output names ``item`` may write (2D or volume: known only once it is read)."""
    stems = [item.stem] + ([f"{item.stem}_labels"] if len(item.lesions) > 1 else [])
    return [f"{s}{ext}" for s in stems for ext in (".png", ".nii.gz")]


def _claim_outputs(out: Path, todo: Sequence[SegmentItem], overwrite: bool) -> set[str]:
    """Refuse files in ``out`` the tool did not write and would replace (unless
    ``overwrite``); then record every name this run may write in the manifest."""
    ours = outdir.load_manifest(out)
    names = [MEASUREMENTS_CSV, FAILURES_CSV] + [n for it in todo for n in _candidate_names(it)]
    foreign = [n for n in names if n not in ours and os.path.lexists(out / n)]
    if foreign and not overwrite:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InputError(
            f"{out} already holds {foreign[0]}{more}, which recist-seg did not write; move "
            "it away, choose another --out, or pass --overwrite to replace it"
        )
    return outdir.claim(out, ours, names)


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


def _segment_all(
    todo: Sequence[SegmentItem],
    out: Path,
    predictor: "Predictor",
    batch_size: int,
    report: JobReport,
    records: dict[str, dict],
    ours: set[str],
    tracker: ProgressTracker,
    cancel: CancelToken | None,
) -> None:
    """Read, segment and commit ``todo`` a chunk at a time (updates ``records``)."""
    last_flush = time.perf_counter()
    pending = list(reversed(todo))

    def failed(item: SegmentItem, exc: BaseException) -> None:
        report.fail(item.image_path, _reason(exc, item.image_path))
        tracker.step(f"failed {item.image_path.name}")

    while pending and not report.cancelled:
        # Read a few images (each once), then segment all their lesions together:
        # batching crops of several images halves the CPU cost per lesion.
        chunk: list[_Loaded] = []
        n_lesions = n_bytes = 0
        while pending:
            if cancel is not None and cancel.cancelled:
                report.cancelled = True
                break
            nxt = pending[-1]
            if chunk and (
                n_lesions + len(nxt.lesions) > batch_size
                or n_bytes >= _CHUNK_BYTES
                or len(chunk) >= _CHUNK_IMAGES
            ):
                break
            pending.pop()
            try:
                loaded = _load(nxt, report)
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:  # one bad file never stops the run
                failed(nxt, exc)
                continue
            chunk.append(loaded)
            n_lesions += len(loaded.lesions)
            n_bytes += int(loaded.data.array.nbytes)  # type: ignore[attr-defined]
        if not chunk:
            continue
        for loaded, results in zip(chunk, _segment_chunk(chunk, predictor, batch_size)):
            # Cancel takes effect between images, also inside a chunk: the rest of
            # the chunk is left unwritten and a later run resumes from there.
            if cancel is not None and cancel.cancelled:
                report.cancelled = True
                break
            item = loaded.item
            if isinstance(results, BaseException):
                failed(item, results)
                continue
            try:
                records[item.stem] = _commit(loaded, results, out, report, ours)
            except (MemoryError, KeyboardInterrupt, OutputWriteError):
                raise
            except Exception as exc:
                failed(item, exc)
                continue
            report.processed += 1
            tracker.step(item.image_path.name)
        del chunk
        if time.perf_counter() - last_flush > _CSV_FLUSH_SECONDS:
            # A table to watch during long runs; the records are what counts.
            _write_tables(out, records)
            last_flush = time.perf_counter()


def _segment_pipelined(
    todo: Sequence[SegmentItem],
    out: Path,
    predictor: "Predictor",
    batch_size: int,
    report: JobReport,
    records: dict[str, dict],
    ours: set[str],
    tracker: ProgressTracker,
    cancel: CancelToken | None,
) -> None:
    """:func:`_segment_all` with reading ahead and writing behind in threads
    (:mod:`napari_recist_seg.jobs.pipeline`): the same outputs, in the same order."""
    last_flush = [time.perf_counter()]

    def failed(item: SegmentItem, exc: BaseException) -> None:
        report.fail(item.image_path, _reason(exc, item.image_path))
        tracker.step(f"failed {item.image_path.name}")

    def done(loaded: _Loaded, record: dict) -> None:
        records[loaded.item.stem] = record
        report.processed += 1
        tracker.step(loaded.item.image_path.name)

    def cancelled() -> bool:
        if cancel is not None and cancel.cancelled:
            report.cancelled = True
        return report.cancelled

    def tick() -> None:
        if time.perf_counter() - last_flush[0] > _CSV_FLUSH_SECONDS:
            _write_tables(out, records)
            last_flush[0] = time.perf_counter()

    steps = Steps(
        load=_load,
        lesions=lambda item: len(item.lesions),
        weight=lambda c: (len(c.lesions), int(c.data.array.nbytes)),
        segment=lambda chunk: _segment_chunk(chunk, predictor, batch_size),
        commit=lambda c, results: _commit(c, results, out, report, ours),
        done=done, failed=failed, replay=lambda call: report.fail(*call),
        cancelled=cancelled, tick=tick,
        fatal=(MemoryError, KeyboardInterrupt, OutputWriteError),
    )
    run_pipelined(todo, steps, max_lesions=batch_size, max_images=_CHUNK_IMAGES,
                  max_bytes=_CHUNK_BYTES)


def _reason(exc: BaseException, path: Path) -> str:
    """A one-line reason without repeating the file name (failures.csv has it)."""
    text = describe_error(exc)
    if isinstance(exc, ValueError):  # our readers' errors: the message is the reason
        for prefix in (f"{type(exc).__name__}: ", f"{path}: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
    return text


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
