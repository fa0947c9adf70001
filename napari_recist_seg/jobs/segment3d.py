"""``recist-seg segment VOLUME --recist CSV --3d``: one RECIST per lesion -> 3D lesions.

For each volume: every RECIST is segmented on its slice by the model and propagated
through the neighbouring slices (:func:`napari_recist_seg.propagate.propagate_lesion`
with its default :class:`~napari_recist_seg.propagate.StopRules` and
:class:`~napari_recist_seg.propagate.IntensityBlend`, the same for every modality: the
intensity band is measured on the RECIST slice in the volume's own units, the overlap
rule follows the slice spacing). A lesion brighter than its surroundings is shown to
the model inverted, decided once on its RECIST slice and kept for the walk
(:mod:`napari_recist_seg.polarity`). Outputs in ``OUT``:

- ``<stem>_labels.nii.gz``: lesion id = the CSV's lesion id on every slice it spans
  (also for a single lesion), with the input's affine (orientation and origin kept);
- ``measurements.csv``: the 2D columns of ``recist-seg segment`` for the RECIST slice,
  plus ``volume_voxels``, ``volume_mm3``, ``volume_ml`` (empty when the spacing is not
  known), ``z_first``, ``z_last``, ``n_slices`` and ``extent_mm``; rebuilt from the
  records of every committed volume, so a re-run keeps the rows of the volumes it skips.

Resume: the output folder is owned as in ``recist-seg segment``
(:mod:`napari_recist_seg.jobs.outdir`: lock, manifest, one record per volume, files
the tool did not write are never replaced without ``overwrite``), and inside a volume
each finished lesion is checkpointed (:mod:`napari_recist_seg.jobs.segment3d_store`),
so a re-run after a crash segments only the lesions that were not finished and then
writes exactly the outputs of a clean run.

A volume committed in ``OUT`` from other RECIST than the CSV now gives (lesions added,
removed or moved) is not skipped as done, nor redone over its labels (which may have
been edited by hand since): it is one line in failures.csv saying so, and
``overwrite`` redoes it.

A RECIST whose slice is outside the volume is reported (one line in failures.csv)
and the other lesions are still written. A lesion id below 1 cannot be a label (0 is
background): such a CSV is refused for that volume.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.data.images import read_image
from napari_recist_seg.data.masks import write_labels
from napari_recist_seg.intensity import detect_modality, is_ct
from napari_recist_seg.jobs import outdir
from napari_recist_seg.jobs.common import (
    FAILURES_CSV,
    CancelToken,
    InputError,
    JobReport,
    ProgressCallback,
    ProgressTracker,
)
from napari_recist_seg.jobs.outdir import OutputWriteError, describe_os_error
from napari_recist_seg.jobs.segment import (
    MEASUREMENT_COLUMNS,
    MEASUREMENTS_CSV,
    VOLUME_COLUMNS,
    measurement_row,
    set_reading,
    volume_values,
)
from napari_recist_seg.jobs.segment3d_store import clear_lesions, lesion_key, load_lesion, save_lesion
from napari_recist_seg.jobs.segment_commit import _fmt
from napari_recist_seg.jobs.segment_plan import (
    SegmentItem,
    _check_collisions,
    _check_out,
    _plan,
    prompts_digest,
    stale_record,
)
from napari_recist_seg.polarity import lesion_polarity
from napari_recist_seg.postprocess import measure_mask
from napari_recist_seg.predict import Predictor
from napari_recist_seg.propagate import IntensityBlend, StopRules, predictor_segmenter, propagate_lesion
from napari_recist_seg.recist import Recist, RecistError, snap

__all__ = ["MEASUREMENT_COLUMNS_3D", "run_segment3d"]

MEASUREMENT_COLUMNS_3D: tuple[str, ...] = MEASUREMENT_COLUMNS + VOLUME_COLUMNS


def _labels_name(item: SegmentItem) -> str:
    return f"{item.stem}_labels.nii.gz"


def _checked(r: Recist, lesion: int, vol: np.ndarray, plane_spacing: Any) -> Recist:
    """The RECIST snapped and checked against the volume (RecistError: one line)."""
    if r.slice_index is None:
        raise RecistError("no slice index for a RECIST on a volume")
    if not 0 <= int(r.slice_index) < vol.shape[0]:
        raise RecistError(f"slice {r.slice_index} is outside the volume (0..{vol.shape[0] - 1})")
    if r.spacing is None and plane_spacing is not None:
        r = r.with_spacing(plane_spacing)
    r.validate(vol.shape)
    return snap(r)


def _one_lesion(predictor: Any, seg_for: Any, img: Any, r: Recist, lesion: int,
                modality: str | None, name: str) -> tuple[np.ndarray, tuple[int, int], dict[str, str]]:
    """Segment and propagate one lesion: its 3D mask, slice range and formatted row.

    ``seg_for(polarity)`` is the walk's slice segmenter; the lesion's polarity is
    decided once on the RECIST slice and kept for the walk.
    """
    vol = img.array
    z0 = int(r.slice_index)
    pol = lesion_polarity(vol[z0], r, predictor.preprocess, modality=modality,
                          window=predictor.window, mode=predictor.polarity) or "dark"
    res = predictor.segment(vol, [r], modality=modality, polarity=pol)[0]
    seed = res.full_mask(vol.shape[1:])
    seg = seg_for(pol)
    les = propagate_lesion(vol.shape, z0, seed, seg, spacing=img.spacing, image=vol,
                           rules=StopRules(), blend=IntensityBlend(), recist=res.recist)
    measured, area = res.measured, res.area_px
    if not np.array_equal(les.mask[z0], seed):  # the intensity blend matched the RECIST better
        measured, area = measure_mask(les.mask[z0], (0, 0), res.recist), int(les.mask[z0].sum())
    row = measurement_row(
        name, lesion, res.recist, measured, cluster=res.cluster,
        confidence=res.confidence, area_px=area, spacing=img.plane_spacing)
    row.update(volume_values(les.mask, img.spacing))  # rounded there, as everywhere
    return les.mask, les.z_range, {k: _fmt(row.get(k)) for k in MEASUREMENT_COLUMNS_3D}


def _segmenter(predictor: Any, vol: np.ndarray, modality: str | None, polarity: str) -> Any:
    """The walk's slice segmenter for a lesion of ``polarity``."""
    return predictor_segmenter(predictor, vol, modality=modality, polarity=polarity)


def _setup(predictor: Any, modality: str | None) -> str:
    """What a lesion's checkpoint depends on besides its RECIST."""
    attrs = ("path", "window", "refine", "threshold", "postprocess", "tta", "polarity")
    return repr((type(predictor).__name__, [str(getattr(predictor, a, None)) for a in attrs],
                 modality, sorted(asdict(StopRules()).items()),
                 sorted(asdict(IntensityBlend()).items())))


def _segment_volume(item: SegmentItem, predictor: Any, out: Path, report: JobReport,
                    cancel: CancelToken | None) -> dict | None:
    """All lesions of one volume (checkpointed one by one), then its labels and record;
    ``None`` when cancelled before the end (the finished lesions are kept)."""
    img = read_image(item.image_path)
    if not img.is_volume:
        raise ValueError("--3d needs a volume (NIfTI, DICOM series, multi-page TIFF)")
    vol = img.array
    bad = [les for les, _ in item.lesions if int(les) < 1]
    if bad:
        raise ValueError(f"lesion id {bad[0]} cannot be a label (ids must be >= 1)")
    modality = predictor.modality or detect_modality(vol, img.modality)
    if getattr(predictor, "window", None) is not None and not is_ct(modality):
        report.notes.append(f"note: {item.image_path.name} is not CT ({modality}): --window does not "
                            "apply to it; it is read by the percentile rule (see --modality)")
    seg = partial(_segmenter, predictor, vol, modality)
    setup = _setup(predictor, modality)
    done_lesions: list[tuple[int, int, np.ndarray, dict[str, str]]] = []
    for lesion, r in item.lesions:
        try:
            r = _checked(r, lesion, vol, img.plane_spacing)
        except RecistError as exc:
            report.fail(item.image_path, f"lesion {lesion}: {exc}")
            continue
        key = lesion_key(lesion, r, setup)
        done = load_lesion(out, item.stem, key, vol.shape)
        if done is None:
            if cancel is not None and cancel.cancelled:
                return None
            mask, z_range, row = _one_lesion(predictor, seg, img, r, lesion, modality,
                                             item.image_path.name)
            _write(out, report, partial(save_lesion, out, item.stem, key, mask, z_range, row))
            done = (mask, row)
        done_lesions.append((int(lesion), int(r.slice_index), done[0], done[1]))
    if not done_lesions:
        return None
    labels = _paste_lesions(vol.shape, done_lesions)
    rows = [_counted(row, labels == lesion, img.spacing) for lesion, _, _, row in done_lesions]
    return _commit(item, img, labels, rows, out, report)


def _paste_lesions(shape: Sequence[int], lesions: Sequence[tuple[int, int, np.ndarray, Any]]) -> np.ndarray:
    """One label image. Where two lesions' masks meet, a voxel goes to the lesion whose
    RECIST slice is nearer in z (so each RECIST slice stays its own lesion's: the reader
    measured it there); first come first served on ties."""
    shape = tuple(int(v) for v in shape)
    labels = np.zeros(shape, np.uint16)
    dist = np.full(shape, np.iinfo(np.int32).max, np.int32)
    for lesion, z0, mask, _ in lesions:
        d = np.abs(np.arange(shape[0], dtype=np.int32) - z0)[:, None, None]
        take = mask & (d < dist)
        labels[take] = lesion
        dist[take] = np.broadcast_to(d, shape)[take]
    return labels


def _counted(row: dict[str, str], mask: np.ndarray, spacing: Any) -> dict[str, str]:
    """``row`` with the volume columns of the voxels the lesion holds in the labels."""
    return {**row, **{k: _fmt(v) for k, v in volume_values(mask, spacing).items()}}


def _write(out: Path, report: JobReport, fn: Any) -> None:
    try:
        fn()
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write into {out}: {describe_os_error(exc)}; {report.processed} volume(s) "
            "and the finished lesions are kept, run again (with space / write access) to resume"
        ) from None


def _commit(item: SegmentItem, img: Any, labels: np.ndarray, rows: list[dict[str, str]],
            out: Path, report: JobReport) -> dict:
    """The volume's labels (atomically), then its record; then drop its checkpoints."""
    name = _labels_name(item)
    path = out / name
    prompts = prompts_digest(item)

    def write() -> None:
        outdir.remove_record(out, item.stem)  # an old record must not vouch for new labels
        write_labels(path, labels, spacing=img.spacing, affine=img.metadata.get("affine"))
        outdir.write_record(out, item.stem, [name], rows, prompts=prompts)

    _write(out, report, write)
    clear_lesions(out, item.stem)
    report.outputs.append(path)
    return {"outputs": [name], "rows": rows, "prompts": prompts}


def _write_tables(out: Path, records: dict[str, dict]) -> None:
    """measurements.csv from every committed volume's record."""
    rows = [row for rec in records.values() if outdir.committed(out, rec) for row in rec["rows"]]
    path = out / MEASUREMENTS_CSV
    if not rows and not path.exists():
        return
    rows.sort(key=lambda r: (str(r.get("image")), _as_int(r.get("lesion"))))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MEASUREMENT_COLUMNS_3D), extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, "") for k in MEASUREMENT_COLUMNS_3D})
    atomic_write_text(path, buf.getvalue())


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _claim(out: Path, todo: Sequence[SegmentItem], overwrite: bool) -> None:
    """Refuse files in ``out`` the tool did not write (unless ``overwrite``); then
    record the names this run may write in the manifest."""
    ours = outdir.load_manifest(out)
    names = [MEASUREMENTS_CSV, FAILURES_CSV] + [_labels_name(it) for it in todo]
    foreign = [n for n in names if n not in ours and os.path.lexists(out / n)]
    if foreign and not overwrite:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InputError(
            f"{out} already holds {foreign[0]}{more}, which recist-seg did not write; move "
            "it away, choose another --out, or pass --overwrite to replace it")
    outdir.claim(out, ours, names)


def run_segment3d(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    recist_csv: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    predictor: Any = None,
    window: object = None,
    modality: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    precision: str = "auto",
    polarity: str | None = None,
    tta: str | None = None,
) -> JobReport:
    """Segment every RECIST of the volumes in 3D (see the module notes).

    Volumes already committed in ``out`` are skipped (their rows kept) unless
    ``overwrite``; a volume a crash left unfinished resumes from its checkpointed
    lesions. ``polarity`` (``"auto"``, ``"dark"``, ``"bright"``) overrides the
    predictor's lesion-polarity mode (:mod:`napari_recist_seg.polarity`), ``tta``
    its test-time augmentation (:mod:`napari_recist_seg.tta`).
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
        done = [it for it in items if not overwrite and outdir.committed(out, records.get(it.stem))]
        stale = [it for it in done if stale_record(records.get(it.stem), it)]
        for it in stale:
            report.fail(it.image_path, f"{_labels_name(it)} in {out} was made from other RECIST than "
                                       "this CSV gives; pass --overwrite to redo it, or choose another --out")
        todo = [it for it in items if all(it is not d for d in done)]
        report.skipped += len(done) - len(stale)
        _claim(out, todo, overwrite)
        if todo and predictor is None:
            predictor = Predictor.load(model, device=device, precision=precision)
        set_reading(predictor, window=window, modality=modality, polarity=polarity, tta=tta)
        try:
            _run_all(todo, predictor, out, report, records, ProgressTracker(len(todo), progress), cancel)
        finally:
            try:  # the tables follow the committed records, whatever stopped the run
                _write_tables(out, records)
                report.write_failures(out)
            except OSError as exc:
                raise OutputWriteError(f"cannot write into {out}: {describe_os_error(exc)}; "
                                       "run again to write the tables") from None
    return report


def _run_all(todo: Sequence[SegmentItem], predictor: Any, out: Path, report: JobReport,
             records: dict[str, dict], tracker: ProgressTracker, cancel: CancelToken | None) -> None:
    for item in todo:
        if cancel is not None and cancel.cancelled:
            report.cancelled = True
            return
        try:
            rec = _segment_volume(item, predictor, out, report, cancel)
            if rec is not None:
                records[item.stem] = rec
                report.processed += 1
            elif cancel is not None and cancel.cancelled:
                report.cancelled = True
                return
        except (MemoryError, KeyboardInterrupt, OutputWriteError):
            raise
        except Exception as exc:  # one bad volume never stops the run
            report.fail(item.image_path, _reason(exc, item.image_path))
        tracker.step(item.image_path.name)


def _reason(exc: BaseException, path: Path) -> str:
    """One line, without the file name the failure line already starts with.

    >>> _reason(ValueError("a.nii.gz: a 4D NIfTI is not a single volume"), Path("in/a.nii.gz"))
    'a 4D NIfTI is not a single volume'
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for prefix in (f"{path}: ", f"{path.name}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text
