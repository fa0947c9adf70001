"""Bulk ``recist-seg segment`` in worker processes, one per core.

On a 2-core CPU the threaded pipeline (:mod:`napari_recist_seg.jobs.pipeline`) keeps
the cores about 85 % busy: the per-lesion Python (cropping, refinement, measurement)
holds the GIL, so the second segmenter often waits for it. Processes do not share a
GIL. Each worker loads its own predictor (ONNX Runtime, one intra-op thread), reads
its images, segments them and encodes their masks (PNG bytes; volumes as arrays); it
never writes into ``OUT``. The parent is the one writer, in the order of the images,
as the serial loop: each image's masks (atomically), then its record in the journal;
the failures, progress, cancel (between images) and ``measurements.csv``. So the
outputs are byte-identical to the serial loop's, and a cancel, full disk or
``kill -9`` leaves what it leaves there (workers die with the parent). A cancel or an
error kills the workers at once (they never write into ``OUT``); a worker that dies
(killed, out of memory) stops the run with one line (:class:`WorkerDied`).

Used by :func:`~napari_recist_seg.jobs.segment.run_segment` when it loads the model
itself for the CPU, the run is big enough and holds no volume (:func:`holds_volumes`);
``RECIST_SEG_WORKERS=1`` (or
``workers=1``, ``--workers 1``) keeps the threads. Workers are forked (Linux only:
fork is cheap and the parent has not loaded a model), never from a process that runs
other Python threads (the viewer). Measured in benchmarks/README.md (bulk.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from napari_recist_seg.data.imagedata import image_suffix
from napari_recist_seg.jobs import outdir
from napari_recist_seg.jobs.common import CancelToken, JobReport, ProgressTracker
from napari_recist_seg.jobs.pipeline import FailureLog
from napari_recist_seg.jobs.segment_commit import (
    encode_outputs,
    output_write_error,
    write_encoded,
    write_record_of,
)
from napari_recist_seg.jobs.segment_plan import SegmentItem
from napari_recist_seg.jobs.segment_reading import set_reading
from napari_recist_seg.predict import Predictor
from napari_recist_seg.progress import InputError
from napari_recist_seg.runtime import usable_cores
from napari_recist_seg.stored_graph import runs_on_cpu

__all__ = ["WorkerDied", "WorkerSetup", "holds_volumes", "process_workers", "segment_in_processes"]

# At most this many workers (each holds a model and its chunk: ~150 MB).
MAX_WORKERS = 8
# Fewer images than this many chunks per worker: the threads (no processes to start).
_MIN_CHUNKS_PER_WORKER = 2


class WorkerDied(InputError):
    """A worker process died (killed, out of memory): the run stops with one line;
    what was committed is kept and a re-run resumes."""


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs, sent once: how to load and set up the predictor, and
    the run's output folder and claimed names."""

    model: str | None
    device: str
    precision: str
    reading: dict[str, Any]  # set_reading's keywords (window, modality, polarity, tta)
    out: Path
    ours: frozenset[str]
    batch_size: int
    chunk_bytes: int
    check_ct: bool  # a --window was given: collect the names of images that are not CT
    load: Callable[..., Any]  # segment._load with its keywords (picklable: a partial)
    segment_chunk: Callable[..., list]  # segment._segment_chunk
    reason: Callable[[BaseException, Path], str]  # segment._reason


@dataclass
class _Outcome:
    """One image done in a worker: its kept ``report.fail`` calls (bad RECIST), the
    ``not_ct`` names its reading added, and ``done`` (its
    :class:`~napari_recist_seg.jobs.segment_commit.EncodedOutputs`) or ``failed``
    (the reason)."""

    fails: list[tuple[Any, str]] = field(default_factory=list)
    not_ct: list[str] = field(default_factory=list)
    kind: str = "failed"
    value: Any = None


def process_workers(n_items: int, chunk_images: int, device: str, workers: int | None = None) -> int:
    """How many worker processes a run of ``n_items`` images gets (1: none).

    ``workers`` (else ``RECIST_SEG_WORKERS``, else the usable cores, at most
    :data:`MAX_WORKERS`); 1 unless the model runs on the CPU, ``fork`` exists, this
    process runs no other Python thread, and there are at least two chunks per worker.
    Unasked (``workers`` and the variable unset), a process that imported torch gets 1.
    """
    if workers is None:
        env = os.environ.get("RECIST_SEG_WORKERS", "")
        # torch's thread pool does not survive a fork: unasked, a process that loaded
        # torch (training, a notebook) keeps the threads; the CLI never imports it here.
        workers = int(env) if env.isdigit() else 1 if "torch" in sys.modules else min(
            MAX_WORKERS, usable_cores())
    workers = min(max(1, int(workers)), max(1, n_items // (chunk_images * _MIN_CHUNKS_PER_WORKER)))
    if (workers < 2 or sys.platform != "linux" or threading.active_count() > 1
            or "fork" not in multiprocessing.get_all_start_methods() or not runs_on_cpu(device)):
        return 1
    return workers


# Files that may hold a volume (a TIFF or DICOM file can be multi-page), and folders
# (DICOM series).
_VOLUME_SUFFIXES = frozenset({".nii", ".nii.gz", ".dcm", ".tif", ".tiff"})


def holds_volumes(todo: Sequence[SegmentItem]) -> bool:
    """Whether any image of ``todo`` may be a volume: such runs keep the threads (a
    volume's labels are raw arrays of ~100 MB or more, too big to send between
    processes a chunk at a time)."""
    return any(item.image_path.is_dir() or image_suffix(item.image_path) in _VOLUME_SUFFIXES for item in todo)


# -- in a worker -----------------------------------------------------------------------
# One worker process runs one job: its predictor and setup live here from the
# initializer to the process's end (a process pool's only way to keep them).
_WORKER: dict[str, Any] = {}


def _init_worker(setup: WorkerSetup) -> None:
    """Load the worker's predictor (an error is raised by its first chunk, so the
    parent reports the real reason, not a broken pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # The CLI turns SIGTERM into KeyboardInterrupt; a worker must die of it (the pool
    # terminates the others when one dies), not carry on into a pipe no one reads.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER.clear()
    _WORKER["setup"] = setup
    _exit_with_parent(os.getppid())
    try:
        import cv2

        cv2.setNumThreads(1)
        predictor = Predictor.load(setup.model, device=setup.device, precision=setup.precision, threads=1)
        set_reading(predictor, **setup.reading)
        _WORKER["predictor"] = predictor
    except Exception as exc:  # noqa: BLE001 - re-raised in the parent by _segment_items
        _WORKER["error"] = exc


def _exit_with_parent(parent: int, every_s: float = 0.2) -> None:
    """End this worker when the parent is gone (``kill -9``): the pool's queues would
    not tell it (the other workers hold their pipes open), so it would wait forever.
    The kernel kills it with the parent (Linux ``PR_SET_PDEATHSIG``); a watch thread
    stands in where that is missing."""
    with contextlib.suppress(Exception):  # best effort: libc or prctl may be missing
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="recist-parent-watch", daemon=True).start()


def _segment_items(items: Sequence[SegmentItem]) -> list[_Outcome]:
    """Read and segment ``items`` (one chunk) and encode their outputs."""
    if "error" in _WORKER:
        raise _WORKER["error"]
    setup: WorkerSetup = _WORKER["setup"]
    outcomes = [_Outcome() for _ in items]
    group: list[tuple[int, Any]] = []
    size = 0
    for i, item in enumerate(items):
        log, not_ct = FailureLog(), ([] if setup.check_ct else None)
        try:
            loaded = setup.load(item, log, not_ct=not_ct)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
            outcomes[i].value = setup.reason(exc, item.image_path)
            loaded = None
        outcomes[i].fails, outcomes[i].not_ct = log.calls, not_ct or []
        if loaded is None:
            continue
        if group and size >= setup.chunk_bytes:  # large images: a smaller batch
            _segment_group(group, outcomes, setup)
            group, size = [], 0
        group.append((i, loaded))
        size += int(loaded.data.array.nbytes)
    if group:
        _segment_group(group, outcomes, setup)
    return outcomes


def _segment_group(group: list[tuple[int, Any]], outcomes: list[_Outcome], setup: WorkerSetup) -> None:
    """Segment loaded images in shared forward passes and encode each one's outputs."""
    loaded = [g for _, g in group]
    results = setup.segment_chunk(loaded, _WORKER["predictor"], setup.batch_size)
    for (i, one), result in zip(group, results):
        outcome = outcomes[i]
        if isinstance(result, BaseException):
            outcome.value = setup.reason(result, one.item.image_path)
            continue
        try:
            outcome.value = encode_outputs(one, result, setup.out, setup.ours)
            outcome.kind = "done"
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - reported per file
            outcome.value = setup.reason(exc, one.item.image_path)


# -- in the parent ---------------------------------------------------------------------


def _chunks(todo: Sequence[SegmentItem], max_lesions: int, max_images: int) -> list[list[SegmentItem]]:
    """``todo`` in chunks by the serial loop's rule on the lesions each image lists."""
    chunks: list[list[SegmentItem]] = []
    current: list[SegmentItem] = []
    n = 0
    for item in todo:
        if current and (n + len(item.lesions) > max_lesions or len(current) >= max_images):
            chunks.append(current)
            current, n = [], 0
        current.append(item)
        n += len(item.lesions)
    if current:
        chunks.append(current)
    return chunks


def segment_in_processes(
    todo: Sequence[SegmentItem],
    setup: WorkerSetup,
    workers: int,
    report: JobReport,
    records: dict[str, dict],
    tracker: ProgressTracker,
    cancel: CancelToken | None,
    journal: outdir.Journal | None,
    *,
    max_images: int,
    not_ct: list[str] | None,
    tick: Callable[[], None] = lambda: None,
) -> None:
    """Segment ``todo`` in ``workers`` processes; the parent commits in order.

    What the caller sees is the serial loop's (same files and records, failures in
    the order of the images, cancel honoured between images, ``OutputWriteError``
    stopping the run at the image that could not be written).
    """
    chunks = deque(_chunks(todo, setup.batch_size, max_images))
    context = multiprocessing.get_context("fork")
    running: deque[tuple[list[SegmentItem], Future]] = deque()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(setup,))
    submit = partial(_submit, pool, chunks, running, report)
    finished = False
    try:
        for _ in range(2 * workers):  # one being segmented, one waiting, per worker
            submit()
        while running and not report.cancelled:
            chunk, future = running.popleft()
            for item, outcome in zip(chunk, _result(future, report, chunk)):
                if cancel is not None and cancel.cancelled:
                    report.cancelled = True
                    break
                _take(item, outcome, setup.out, report, records, tracker, journal, not_ct)
            if not report.cancelled:
                submit()
            tick()
        finished = not report.cancelled
    finally:
        _close(pool, running, finished)


def _close(pool: ProcessPoolExecutor, running: deque, finished: bool) -> None:
    """Shut the pool down: wait when every chunk was taken; else (cancel, an error, a
    second Ctrl-C) kill the workers now -- they never write into ``OUT``, so nothing a
    worker was doing needs to finish."""
    if finished:
        pool.shutdown(wait=True)
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for _, future in running:
        future.cancel()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.kill()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(timeout=5.0)


def _worker_died(report: JobReport, first: SegmentItem) -> WorkerDied:
    # The pool breaks every chunk in flight: the one waited on (or sent) need not be the
    # one that killed its worker.
    return WorkerDied(
        f"a worker process died (killed, or out of memory?); {report.processed} image(s) "
        f"finished and kept, the first not done: {first.image_path.name}; run again to "
        "resume (--workers 1: no worker processes)"
    )


def _result(future: Future, report: JobReport, chunk: Sequence[SegmentItem]) -> list[_Outcome]:
    try:
        return future.result()
    except BrokenProcessPool:
        raise _worker_died(report, chunk[0]) from None


def _submit(pool: ProcessPoolExecutor, chunks: deque, running: deque, report: JobReport) -> None:
    """Send the next chunk to a worker (a pool already broken: :class:`WorkerDied`)."""
    if chunks:
        chunk = chunks.popleft()
        try:
            running.append((chunk, pool.submit(_segment_items, chunk)))
        except BrokenProcessPool:
            raise _worker_died(report, running[0][0][0] if running else chunk[0]) from None


def _take(item: SegmentItem, outcome: _Outcome, out: Path, report: JobReport, records: dict[str, dict],
          tracker: ProgressTracker, journal: outdir.Journal | None, not_ct: list[str] | None) -> None:
    """One image's outcome, as the serial loop would have reported it."""
    for call in outcome.fails:
        report.fail(*call)
    if not_ct is not None:
        not_ct.extend(outcome.not_ct)
    if outcome.kind == "failed":
        report.fail(item.image_path, outcome.value)
        tracker.step(f"failed {item.image_path.name}")
        return
    record = outcome.value.record
    try:  # as segment_commit._commit: the old record goes, then the masks, then the record
        outdir.remove_record(out, item.stem, journal)  # it must not vouch for half-written masks
        records.pop(item.stem, None)
        write_encoded(outcome.value)
        write_record_of(out, item.stem, record, journal)
    except OSError as exc:
        raise output_write_error(out, exc, report.processed) from None
    records[item.stem] = record
    report.outputs.extend(out / n for n in record["outputs"])
    report.processed += 1
    tracker.step(item.image_path.name)
