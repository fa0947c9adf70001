"""``recist-seg segment VOLUME --recist CSV --3d``: one RECIST per lesion -> 3D lesions.

For each volume: every RECIST is segmented on its slice by the model and propagated
through the neighbouring slices (:func:`napari_recist_seg.propagate.propagate_lesion`;
for CT also stopped when the mean HU drifts by more than 30 HU). Outputs in ``OUT``:

- ``<stem>_labels.nii.gz``: lesion id = the CSV's lesion id on every slice it spans
  (also for a single lesion), with the input's affine (orientation and origin kept);
- ``measurements.csv``: the 2D columns of ``recist-seg segment`` for the RECIST slice,
  plus ``volume_voxels``, ``volume_mm3``, ``volume_ml`` (empty when the spacing is not
  known), ``z_first``, ``z_last``, ``n_slices`` and ``extent_mm``.

A RECIST whose slice is outside the volume is reported (one line in failures.csv)
and the other lesions are still written. A lesion id below 1 cannot be a label (0 is
background): such a CSV is refused for that volume.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.data.images import read_image
from napari_recist_seg.data.masks import write_labels
from napari_recist_seg.intensity import detect_modality, is_ct
from napari_recist_seg.propagate import predictor_segmenter, propagate_lesion
from napari_recist_seg.recist import RecistError, snap
from napari_recist_seg.jobs.common import CancelToken, JobReport, ProgressCallback, ProgressTracker
from napari_recist_seg.jobs.segment import (
    MEASUREMENT_COLUMNS,
    MEASUREMENTS_CSV,
    measurement_row,
    plan_segment,
)

__all__ = ["MEASUREMENT_COLUMNS_3D", "run_segment3d"]

MEASUREMENT_COLUMNS_3D: tuple[str, ...] = MEASUREMENT_COLUMNS + (
    "volume_voxels", "volume_mm3", "volume_ml", "z_first", "z_last", "n_slices", "extent_mm",
)
#: HU drift that ends a CT lesion (benchmarks/lits_3d.py).
CT_INTENSITY_TOL = 30.0


def _segment_volume(item: Any, predictor: Any, out: Path, report: JobReport) -> list[dict[str, object]]:
    img = read_image(item.image_path)
    if not img.is_volume:
        raise ValueError("--3d needs a volume (NIfTI, DICOM series, multi-page TIFF)")
    vol = img.array
    modality = predictor.modality or detect_modality(vol, img.modality)
    seg = predictor_segmenter(predictor, vol, modality=modality)
    labels = np.zeros(vol.shape, np.uint16)
    rows = []
    for lesion, r in item.lesions:
        if int(lesion) < 1:
            raise ValueError(f"lesion id {lesion} cannot be a label (ids must be >= 1)")
        try:
            if r.slice_index is None:
                raise RecistError("no slice index for a RECIST on a volume")
            if not 0 <= int(r.slice_index) < vol.shape[0]:
                raise RecistError(f"slice {r.slice_index} is outside the volume (0..{vol.shape[0] - 1})")
            if r.spacing is None and img.plane_spacing is not None:
                r = r.with_spacing(img.plane_spacing)
            r.validate(vol.shape)
            r = snap(r)
        except RecistError as exc:
            report.fail(item.image_path, f"lesion {lesion}: {exc}")
            continue
        res = predictor.segment(vol, [r], modality=modality)[0]
        seed = res.full_mask(vol.shape[1:])
        les = propagate_lesion(
            vol.shape, int(r.slice_index), seed, seg, spacing=img.spacing, image=vol,
            intensity_tol=CT_INTENSITY_TOL if is_ct(modality) else None,
        )
        labels[les.mask & (labels == 0)] = int(lesion)
        row = measurement_row(
            item.image_path.name, lesion, res.recist, res.measured, cluster=res.cluster,
            confidence=res.confidence, area_px=res.area_px, spacing=img.plane_spacing)
        row.update(volume_voxels=les.voxels, volume_mm3=les.volume_mm3, volume_ml=les.volume_ml,
                   z_first=les.z_range[0], z_last=les.z_range[1], n_slices=les.n_slices,
                   extent_mm=les.extent_mm)
        rows.append(row)
    if rows:
        path = out / f"{item.stem}_labels.nii.gz"
        write_labels(path, labels, spacing=img.spacing, affine=img.metadata.get("affine"))
        report.outputs.append(path)
    return rows


def _write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MEASUREMENT_COLUMNS_3D), extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else
                        f"{row[k]:.4g}" if isinstance(row.get(k), float) else row[k])
                    for k in MEASUREMENT_COLUMNS_3D})
    atomic_write_text(path, buf.getvalue())


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
) -> JobReport:
    """Segment every RECIST of the volumes in 3D (see the module notes).

    Existing ``<stem>_labels.nii.gz`` outputs are kept (counted as skipped) unless
    ``overwrite``.
    """
    out = Path(out)
    items, plan_failures, _ = plan_segment(inputs, recist_csv=recist_csv)
    report = JobReport()
    for file, reason in plan_failures:
        report.fail(file, reason)
    out.mkdir(parents=True, exist_ok=True)
    todo = [it for it in items if overwrite or not (out / f"{it.stem}_labels.nii.gz").exists()]
    report.skipped += len(items) - len(todo)
    if todo and predictor is None:
        from napari_recist_seg.predict import Predictor

        predictor = Predictor.load(model, device=device)
    if predictor is not None and (window is not None or modality is not None):
        predictor.window, predictor.modality = window, modality
    tracker = ProgressTracker(len(todo), progress)
    rows: list[dict[str, object]] = []
    try:
        for item in todo:
            if cancel is not None and cancel.cancelled:
                report.cancelled = True
                break
            try:
                rows.extend(_segment_volume(item, predictor, out, report))
                report.processed += 1
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:  # one bad volume never stops the run
                report.fail(item.image_path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            tracker.step(item.image_path.name)
    finally:
        if rows:
            _write_csv(out / MEASUREMENTS_CSV, rows)
        report.write_failures(out)
    return report
