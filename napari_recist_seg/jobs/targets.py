"""``recist-seg targets``: RECIST (derived if needed) and weak masks for a dataset.

Inputs: a dataset folder (``images/``, optional ``masks/`` and ``recist.csv``; see
:func:`napari_recist_seg.data.dataset.scan_dataset`). The dataset's own ``recist.csv``
is used when present, else RECIST are derived from the masks (simulated RECIST).

Outputs, all written atomically into ``OUT``:

- ``recist.csv``: every lesion of every image that has targets, including images
  skipped because their targets already existed (the RECIST CSV format, ``image``
  relative to ``OUT``);
- ``ellipse/<stem>.png`` and ``grabcut/<stem>.png``: the union of the image's lesion
  targets, 0/255 ``uint8``, the size of the image (for volumes ``<stem>.nii.gz``: the
  per-slice targets in a volume of the image's size, with its spacing);
- ``failures.csv`` when some files could not be used (one row per file, with the
  reason).

An image whose targets already exist is skipped unless ``overwrite``. A bad file
(unreadable or truncated image, mask of another size, RECIST outside the image) is
reported and the run goes on. Cancelling stops between images; finished targets and
``recist.csv`` for them are kept.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_recist_seg.data.dataset import Dataset, DatasetItem, dataset_recists, scan_dataset
from napari_recist_seg.data.images import ImageReadError, read_image
from napari_recist_seg.data.masks import MaskReadError, write_mask
from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
from napari_recist_seg.jobs.common import (
    Cancelled,
    CancelToken,
    InputError,
    JobReport,
    ProgressCallback,
    ProgressEvent,
    ProgressTracker,
    describe_error,
)
from napari_recist_seg.jobs.outdir import OutputWriteError, describe_os_error, prepare_out
from napari_recist_seg.recist import RecistError
from napari_recist_seg.targets import ellipse_mask, grabcut_mask

__all__ = ["CT_WINDOW", "RECIST_CSV", "TARGET_KINDS", "run_targets", "target_paths"]

RECIST_CSV = "recist.csv"
TARGET_KINDS: tuple[str, ...] = ("ellipse", "grabcut")
# Abdominal soft-tissue window (level, width) in HU, for GrabCut on CT.
CT_WINDOW = (40.0, 400.0)
_SUFFIXES = (".png", ".nii.gz")


def target_paths(out: str | os.PathLike[str], stem: str, *, volume: bool = False) -> dict[str, Path]:
    """Where the targets of ``stem`` go: ``{"ellipse": OUT/ellipse/<stem>.png, ...}``.

    >>> sorted(p.as_posix() for p in target_paths("out", "case1").values())
    ['out/ellipse/case1.png', 'out/grabcut/case1.png']
    """
    suffix = ".nii.gz" if volume else ".png"
    return {kind: Path(out) / kind / f"{stem}{suffix}" for kind in TARGET_KINDS}


def _done(out: Path, stem: str, kinds: tuple[str, ...]) -> bool:
    """True when every requested target of ``stem`` exists (2D or volume)."""
    return all(
        any((out / kind / f"{stem}{suffix}").is_file() for suffix in _SUFFIXES) for kind in kinds
    )


def _reason(exc: BaseException, file: Path) -> str:
    """One readable line; the file itself is in the other column of failures.csv."""
    if isinstance(exc, (ImageReadError, MaskReadError)):
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else type(exc).__name__
    else:
        text = describe_error(exc)
    # Reader errors start with the file name: do not repeat it.
    for prefix in (f"{file}: ", f"{file.name}: "):
        if text.startswith(prefix) and len(text) > len(prefix):
            return text[len(prefix):]
    return text


def _check_out(out: Path, ds: Dataset) -> None:
    """Refuse an ``out`` that would rewrite the dataset: its own ``recist.csv`` (rows
    would be dropped), or its images / masks folders (the next scan would take the
    targets for inputs)."""
    def key(p: Path) -> str:
        return os.path.normcase(os.path.realpath(p))

    out_key = key(out)
    dirs = [ds.root] + [d for d in (ds.images_dir, ds.masks_dir) if d is not None and d != ds.root]
    for d in dirs:
        k = key(d)
        inside = out_key == k or (d != ds.root and out_key.startswith(k.rstrip(os.sep) + os.sep))
        if inside:
            raise InputError(
                f"refusing to write into {out}: it is the dataset's own folder {d} "
                f"(its {RECIST_CSV}, images and masks are never rewritten); choose another --out"
            )
    own = out / RECIST_CSV
    if ds.recist_csv is not None and own.exists():
        try:
            same = os.path.samefile(own, ds.recist_csv)
        except OSError:
            same = False
        if same:
            raise InputError(
                f"refusing to write {own}: it is the dataset's own {RECIST_CSV}; choose another --out"
            )


def _output_error(out: Path, exc: OSError, done: int) -> InputError:
    return OutputWriteError(
        f"cannot write into {out}: {describe_os_error(exc)}; {done} image(s) finished and "
        "kept, run again (with space / write access) to resume"
    )


def _make_targets(image, records, *, grabcut: bool):
    """Ellipse and GrabCut masks (union of lesions) for one read image."""
    arr = image.array
    shape = tuple(arr.shape)
    plane = image.plane_shape
    window = CT_WINDOW if getattr(image, "hu", False) else None
    ellipse = np.zeros(shape[:3] if image.is_volume else plane, bool)
    cut = np.zeros_like(ellipse) if grabcut else None
    fallbacks = 0
    for rec in records:
        r = rec.recist
        try:
            r.validate(shape)
        except RecistError as exc:
            raise RecistError(f"lesion {rec.lesion}: {exc}") from None
        if image.is_volume:
            z = r.slice_index
            ellipse[z] |= ellipse_mask(r, plane)
            if cut is not None:
                res = grabcut_mask(arr, r, window=window, return_info=True)
                cut[z] |= res.mask
                fallbacks += res.fell_back
        else:
            if r.slice_index not in (None, 0):
                raise RecistError(
                    f"lesion {rec.lesion}: slice {r.slice_index} given for a 2D image"
                )
            ellipse |= ellipse_mask(r, plane)
            if cut is not None:
                res = grabcut_mask(arr, r, window=window, return_info=True)
                cut |= res.mask
                fallbacks += res.fell_back
    return ellipse, cut, fallbacks


def run_targets(
    dataset: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    grabcut: bool = True,
    overwrite: bool = False,
    per_component: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> JobReport:
    """Write RECIST and ellipse / GrabCut weak targets for every image of a dataset.

    Parameters
    ----------
    dataset : path-like
        Dataset folder (``images/``, optional ``masks/``, optional ``recist.csv``).
    out : path-like
        Output folder (created).
    grabcut : bool
        Also write GrabCut targets (``OUT/grabcut/``); else only ellipses.
    overwrite : bool
        Redo images whose targets already exist.
    per_component : bool
        When deriving RECIST from 2D masks: one lesion per connected component
        instead of the largest component only.
    progress : callable, optional
        Receives :class:`~napari_recist_seg.jobs.common.ProgressEvent` s: first one
        per mask while RECIST are derived (if they are), then one per image, with ETA.
    cancel : CancelToken, optional
        Checked between images; a cancelled run keeps its finished outputs and
        returns a report with ``cancelled=True``.

    Returns
    -------
    JobReport
        ``processed`` / ``skipped`` image counts, per-file ``failures``, written
        ``outputs``.

    Raises
    ------
    InputError
        When the dataset folder is missing, holds no images, or its ``recist.csv``
        is unusable.
    """
    out = Path(out)
    report = JobReport()
    ds = scan_dataset(dataset)
    _check_out(out, ds)
    kinds = TARGET_KINDS if grabcut else TARGET_KINDS[:1]
    try:
        recists = dataset_recists(
            ds, per_component=per_component, progress=_prefixed(progress, "RECIST from masks: "),
            cancel=cancel,
        )
    except Cancelled:
        report.cancelled = True
        return report
    for file, reason in recists.failures:
        report.fail(file, reason)

    items = [item for item in ds.items if item.stem in recists]
    run = _Run(out, kinds, grabcut, overwrite, report, {f for f, _ in recists.failures})
    prepare_out(out, state=False)
    tracker = ProgressTracker(len(items), progress)
    try:
        _target_items(run, items, recists, tracker, cancel)
    except BaseException:
        # Whatever stopped the run, the RECIST of the finished images and the failures
        # are kept where the disk allows (a re-run rewrites them).
        with contextlib.suppress(OSError):
            _write_tables(out, run.done_records, report)
        raise
    try:
        _write_tables(out, run.done_records, report)
    except OSError as exc:
        raise _output_error(out, exc, report.processed) from None
    if progress is not None and grabcut and report.processed:
        progress(tracker.event(f"done; GrabCut fell back to the ellipse for {run.fallbacks} lesion(s)"))
    return report


def _prefixed(progress: ProgressCallback | None, prefix: str) -> ProgressCallback:
    """``progress`` with ``prefix`` before each event's message (a no-op without one)."""
    def forward(event: ProgressEvent) -> None:
        if progress is not None:
            progress(
                ProgressEvent(
                    event.done, event.total, f"{prefix}{event.message}",
                    event.elapsed, event.eta,
                )
            )

    return forward


@dataclass
class _Run:
    """One run's settings and what it has produced so far."""

    out: Path
    kinds: tuple[str, ...]
    grabcut: bool
    overwrite: bool
    report: JobReport
    failed_files: set[str]  # already reported while the RECIST were derived
    done_records: list[RecistRecord] = field(default_factory=list)
    fallbacks: int = 0


def _target_items(run: _Run, items: list[DatasetItem], recists, tracker: ProgressTracker,
                  cancel: CancelToken | None) -> None:
    """Targets for each image in turn: skipped when done before, a bad file reported."""
    out, kinds, report = run.out, run.kinds, run.report
    for i, item in enumerate(items):
        if cancel is not None and cancel.cancelled:
            report.cancelled = True
            # recist.csv must still list images finished by earlier runs.
            run.done_records.extend(
                rec
                for later in items[i:]
                if _done(out, later.stem, kinds)
                for rec in recists[later.stem]
            )
            break
        records = recists[item.stem]
        if not run.overwrite and _done(out, item.stem, kinds):
            report.skipped += 1
            run.done_records.extend(records)
            tracker.step(f"{item.stem} (done before)")
            continue
        try:
            n_fb = _target_image(run, item, records)
        except OutputWriteError:
            raise
        except Exception as exc:  # one bad file must not stop the run
            if str(item.image_path) not in run.failed_files:
                report.fail(item.image_path, _reason(exc, item.image_path))
            tracker.step(f"{item.stem} failed")
            continue
        run.fallbacks += n_fb
        report.processed += 1
        run.done_records.extend(records)
        tracker.step(item.stem)


def _target_image(run: _Run, item: DatasetItem, records: list[RecistRecord]) -> int:
    """Read one image, write its targets; the number of GrabCut fallbacks."""
    image = read_image(item.image_path)
    ellipse, cut, n_fb = _make_targets(image, records, grabcut=run.grabcut)
    paths = target_paths(run.out, item.stem, volume=image.is_volume)
    spacing = image.spacing if image.is_volume else None
    # An image counts as done once all its targets exist (see _done).
    try:
        if cut is not None:
            write_mask(paths["grabcut"], cut, spacing=spacing)
            run.report.outputs.append(paths["grabcut"])
        write_mask(paths["ellipse"], ellipse, spacing=spacing)
        run.report.outputs.append(paths["ellipse"])
    except OSError as exc:  # the output folder, not the image: stop
        raise _output_error(run.out, exc, run.report.processed) from None
    return n_fb


def _write_tables(out: Path, done_records: list, report: JobReport) -> None:
    if done_records:
        write_recist_csv(out / RECIST_CSV, done_records)
        report.outputs.append(out / RECIST_CSV)
    report.write_failures(out)
