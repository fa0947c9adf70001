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
are written atomically, then a record of its files and measurement rows (one line
appended to ``OUT/.recist-seg/journal.jsonl``; a torn last line is cut off by the next
run); ``measurements.csv`` is rebuilt from all records, during and at the end of
every run. So a crash, ``kill -9`` or full disk at
any moment leaves a state from which a re-run gives exactly the outputs of a clean
run. An image whose record and masks exist is skipped (resume) unless ``overwrite``.
One run at a time writes into an ``OUT`` (a lock; a second run refuses). Before
writing anything the run checks its plan: two inputs that would write the same output
name, an ``OUT`` inside an input folder, or files in ``OUT`` that the tool did not
write and would overwrite (without ``overwrite``) are refused with one line.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from napari_recist_seg.data.images import read_image
from napari_recist_seg.intensity import detect_modality, is_ct
from napari_recist_seg.jobs import outdir
from napari_recist_seg.jobs.common import (
    CancelToken,
    JobReport,
    ProgressCallback,
    ProgressTracker,
)
from napari_recist_seg.jobs.outdir import OutputWriteError, describe_os_error
from napari_recist_seg.jobs.pipeline import Steps, run_pipelined

# The rooms of the job: planning, and committing one image. Their names are
# re-exported here, where the bulk job's callers (and tests) import them; the loops
# below look ``_load`` and ``_commit`` up in this module.
from napari_recist_seg.jobs.segment_commit import (  # noqa: F401
    _as_int,
    _commit,
    _existing_output,
    _finish,
    _fmt,
    _image_label,
    _Loaded,
    _masks,
    _measurement_row,
    _outputs,
    _paste,
    _write_measurements,
    _write_tables,
)
from napari_recist_seg.jobs.segment_plan import (  # noqa: F401
    MEASUREMENTS_CSV,
    SegmentItem,
    _candidate_names,
    _check_collisions,
    _check_out,
    _claim_outputs,
    _inside,
    _is_deeplesion_csv,
    _key,
    _output_stem,
    _plan,
    _plan_dataset,
    _plan_files,
    _read_records,
    _RecordIndex,
    _unique_stems,
    plan_segment,
    stale_record,
)
from napari_recist_seg.jobs.segment_processes import (
    WorkerSetup,
    holds_volumes,
    process_workers,
    segment_in_processes,
)
from napari_recist_seg.jobs.segment_reading import (  # noqa: F401 - set_reading: re-exported
    _opencv_threads,
    _reason,
    _window_note,
    set_reading,
)

# The columns and the row builder live in measurements (the annotator uses them too);
# re-exported here, where the bulk job and its callers import them.
from napari_recist_seg.measurements import (  # noqa: F401
    MEASUREMENT_COLUMNS,
    VOLUME_COLUMNS,
    measurement_row,
    volume_values,
)
from napari_recist_seg.predict import LesionResult, Predictor
from napari_recist_seg.recist import Recist, RecistError, snap
from napari_recist_seg.runtime import default_threads

__all__ = ["MEASUREMENTS_CSV", "MEASUREMENT_COLUMNS", "SegmentItem", "plan_segment", "run_segment"]

# measurements.csv is rebuilt from the records (atomically) at most this often during a
# run, and always at the end; a re-run after a crash rebuilds it from all records.
_CSV_FLUSH_SECONDS = 2.0
# Images read ahead and segmented together: at most this many, and no more once
# their pixels take this many bytes (a chunk of large photographs stays small).
_CHUNK_IMAGES = 8
_CHUNK_BYTES = 64 << 20
# Chunks segmented at once by the pipelined run (one in the network while the other
# is prepared or post-processed in Python; jobs/pipeline.py).
_SEGMENTERS = max(1, int(os.environ.get("RECIST_SEG_SEGMENTERS", "2") or 2))


# -- the job ---------------------------------------------------------------------------


def _read(item: SegmentItem):
    # DL_info.csv names 16-bit PNG slices that store HU + 32768.
    return read_image(item.image_path, deeplesion=True if item.deeplesion else None)


def _load(item: SegmentItem, report: JobReport, *, not_ct: list[str] | None = None,
          modality: str | None = None) -> _Loaded:
    """Read one image and check its RECIST (bad ones are reported and dropped); with
    ``not_ct`` (a ``--window`` was given) the names of images that are not CT (by
    ``modality`` when given, else their file and values) are appended to it."""
    data = _read(item)
    array = data.array
    if not_ct is not None and not is_ct(modality or detect_modality(array, data.modality)):
        not_ct.append(item.image_path.name)
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
    # What the file says (a DICOM's Modality tag) unless the user said otherwise: an MR
    # file whose values happen to look like HU must not get the CT window.
    modalities = [getattr(predictor, "modality", None) or c.data.modality for c in chunk]  # type: ignore[attr-defined]
    many = getattr(predictor, "segment_many", None)
    if many is not None and len(jobs) > 1:
        try:
            return list(many(jobs, batch_size=batch_size, modalities=modalities))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception:  # noqa: BLE001 - redo one by one to blame the right image
            pass
    out: list[list["LesionResult"] | BaseException] = []
    for (array, recists), modality in zip(jobs, modalities):
        try:
            out.append(list(predictor.segment(array, recists, batch_size=batch_size, modality=modality)))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - reported per file by the caller
            out.append(exc)
    return out


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
    precision: str = "auto",
    polarity: str | None = None,
    tta: str | None = None,
    workers: int | None = None,
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
    precision : str
        ``"auto"``, ``"int8"`` or ``"fp32"`` for the loaded model (see
        :mod:`napari_recist_seg.stored_graph`); unused with ``predictor``.
    polarity : str, optional
        ``"auto"`` / ``"dark"`` / ``"bright"``: the predictor's lesion-polarity mode
        (:mod:`napari_recist_seg.polarity`); ``None`` keeps the predictor's.
    tta : str, optional
        ``"none"`` / ``"flip"`` / ``"flip4"``: the predictor's test-time augmentation
        (:mod:`napari_recist_seg.tta`; 1x / 2x / 4x the network's compute); ``None``
        keeps the predictor's (``"none"`` for the default).
    workers : int, optional
        Worker processes for a large run on the CPU (:mod:`.segment_processes`);
        ``None``: ``RECIST_SEG_WORKERS``, else the usable cores (at most 8); 1: none
        (the reading / segmenting / writing threads of one process). Unused with
        ``predictor``.

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
    with outdir.OutputLock(out), _opencv_threads(1):
        outdir.clean_temps(out)
        records, journal = outdir.open_journal(out)
        with journal:
            todo: list[SegmentItem] = []
            for item in items:
                record = records.get(item.stem)
                if overwrite or not outdir.committed(out, record):
                    todo.append(item)
                elif stale_record(record, item):  # kept: the user may have checked them
                    report.fail(item.image_path, f"the masks of {item.stem} in {out} were made from other "
                                "RECIST than these; pass --overwrite to redo them, or choose another --out")
                else:
                    report.skipped += 1
            ours = _claim_outputs(out, todo, overwrite)
            # A CT window on a photograph or an MR image is not applied: say so, once.
            not_ct: list[str] | None = [] if window is not None else None
            options = _Options(model, device, precision, batch_size, predictor, workers,
                               {"window": window, "modality": modality, "polarity": polarity, "tta": tta})
            try:
                _segment_todo(todo, out, options, report, records, ours, journal,
                              ProgressTracker(len(todo), progress), cancel, not_ct)
            except BaseException:
                # Whatever stopped the run, the tables follow the committed records; on
                # a full disk this may fail too (a re-run rebuilds them).
                with contextlib.suppress(OSError):
                    _finish(out, records, report)
                raise
        if not_ct:
            report.notes.append(_window_note(not_ct))
        try:
            _finish(out, records, report)
        except KeyboardInterrupt:  # SIGTERM as the last image was done: the tables still
            with contextlib.suppress(OSError):  # follow the records (measurements.csv is
                _finish(out, records, report)  # written atomically, the old one stayed)
            raise
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write into {out}: {describe_os_error(exc)}; the masks are kept, run "
                "again (with space / write access) to write the tables"
            ) from None
    return report


@dataclass(frozen=True)
class _Options:
    """How :func:`run_segment` segments: the model to load (or a loaded ``predictor``),
    the worker processes asked for, and set_reading's keywords."""

    model: str | os.PathLike[str] | None
    device: str
    precision: str
    batch_size: int
    predictor: "Predictor | None"
    workers: int | None
    reading: dict


def _segment_todo(todo: Sequence[SegmentItem], out: Path, options: _Options, report: JobReport,
                  records: dict[str, dict], ours: set[str], journal: outdir.Journal,
                  tracker: ProgressTracker, cancel: CancelToken | None, not_ct: list[str] | None) -> None:
    """Segment and commit ``todo``: in worker processes (:mod:`.segment_processes`),
    else pipelined in threads, else (``RECIST_SEG_SERIAL=1``) the plain loop; the
    outputs are the same."""
    if not todo:
        return
    serial = os.environ.get("RECIST_SEG_SERIAL") == "1"
    modality = options.reading["modality"]
    load = partial(_load, modality=modality)
    predictor = options.predictor
    n_workers = 1 if serial or predictor is not None or holds_volumes(todo) else process_workers(
        len(todo), _CHUNK_IMAGES, options.device, options.workers)
    if n_workers > 1:  # each worker loads its own model
        model = None if options.model is None else str(options.model)
        setup = WorkerSetup(model, options.device, options.precision, options.reading, out,
                            frozenset(ours), options.batch_size, _CHUNK_BYTES, not_ct is not None,
                            load, _segment_chunk, _reason)
        segment_in_processes(todo, setup, n_workers, report, records, tracker, cancel, journal,
                             max_images=_CHUNK_IMAGES, not_ct=not_ct,
                             tick=partial(_flush_tables, out, records, [time.perf_counter()]))
        return
    if predictor is None:
        # Pipelined, _SEGMENTERS chunks run at once: they share the cores.
        threads = None if serial else max(1, default_threads() // _SEGMENTERS)
        predictor = Predictor.load(options.model, device=options.device, precision=options.precision,
                                   threads=threads)
    set_reading(predictor, **options.reading)
    run = _segment_all if serial else _segment_pipelined
    run(todo, out, predictor, options.batch_size, report, records, ours, tracker, cancel, journal,
        load=partial(load, not_ct=not_ct))


def _flush_tables(out: Path, records: dict[str, dict], last: list[float]) -> None:
    """measurements.csv rebuilt at most every _CSV_FLUSH_SECONDS (``last``: when)."""
    if time.perf_counter() - last[0] > _CSV_FLUSH_SECONDS:
        _write_tables(out, records)
        last[0] = time.perf_counter()




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
    journal: outdir.Journal | None = None,
    load: Callable[..., _Loaded] = _load,
) -> None:
    """Read, segment and commit ``todo`` a chunk at a time (updates ``records``)."""
    last_flush = [time.perf_counter()]
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
                loaded = load(nxt, report)
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
                records[item.stem] = _commit(loaded, results, out, report, ours, journal)
            except (MemoryError, KeyboardInterrupt, OutputWriteError):
                raise
            except Exception as exc:
                failed(item, exc)
                continue
            report.processed += 1
            tracker.step(item.image_path.name)
        del chunk
        _flush_tables(out, records, last_flush)  # a table to watch; the records count


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
    journal: outdir.Journal | None = None,
    load: Callable[..., _Loaded] = _load,
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

    steps = Steps(
        load=load,
        lesions=lambda item: len(item.lesions),
        weight=lambda c: (len(c.lesions), int(c.data.array.nbytes)),
        segment=lambda chunk: _segment_chunk(chunk, predictor, batch_size),
        commit=lambda c, results: _commit(c, results, out, report, ours, journal),
        done=done, failed=failed, replay=lambda call: report.fail(*call),
        cancelled=cancelled, tick=partial(_flush_tables, out, records, last_flush),
        fatal=(MemoryError, KeyboardInterrupt, OutputWriteError),
    )
    run_pipelined(todo, steps, max_lesions=batch_size, max_images=_CHUNK_IMAGES,
                  max_bytes=_CHUNK_BYTES, segmenters=_SEGMENTERS)
