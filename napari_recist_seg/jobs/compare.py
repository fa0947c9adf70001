"""``recist-seg compare``: one or two models on one validation set, case by case.

For each model the job runs :func:`~napari_recist_seg.jobs.segment.run_segment` into
its own prediction folder and then
:func:`~napari_recist_seg.jobs.evaluate.evaluate_folders` against the ground-truth
masks (the functions behind ``recist-seg segment`` and ``recist-seg evaluate``), adds
the long / short axis errors of the masks per case
(:func:`napari_recist_seg.measurements.add_recist_errors`) and, with two models, the
per-case ``B - A`` differences. The Evaluate dock shows the same
:class:`EvaluationRun`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from napari_recist_seg.curation import save_curated
from napari_recist_seg.data.dataset import write_derived_recist
from napari_recist_seg.jobs.evaluate import evaluate_folders
from napari_recist_seg.jobs.segment import run_segment
from napari_recist_seg.measurements import add_recist_errors
from napari_recist_seg.metrics import summarize
from napari_recist_seg.progress import CancelToken, ProgressCallback, phase_progress

__all__ = ["ALL_KEYS", "EvaluationRun", "ModelRun", "finite", "run_compare", "score_predictions"]

#: Per-case numbers of a comparison, in display order: the Evaluate dock's table
#: columns, then the ones only in the exports and the ``B - A`` rows.
ALL_KEYS: tuple[str, ...] = (
    "dice", "iou", "hd", "hd95", "avd", "long_error", "short_error",
    "vs", "centre_error", "perimeter_error", "perimeter_pred", "perimeter_gt",
)


@dataclass
class ModelRun:
    """One model's predictions and their evaluation."""

    label: str
    checkpoint: Path | None
    pred_dir: Path
    segment_report: Any = None  # JobReport
    evaluation: Any = None  # EvaluationReport

    def by_case(self) -> dict[str, dict[str, Any]]:
        return {c["case"]: c for c in (self.evaluation.cases if self.evaluation else [])}


@dataclass
class EvaluationRun:
    """What the Evaluate job returns: one :class:`ModelRun` per model."""

    dataset: Path
    runs: list[ModelRun] = field(default_factory=list)
    cancelled: bool = False

    @property
    def failures(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for run in self.runs:
            if run.segment_report is not None:
                out += [(f, f"[{run.label} segment] {r}") for f, r in run.segment_report.failures]
            if run.evaluation is not None:
                out += [(f, f"[{run.label} evaluate] {r}") for f, r in run.evaluation.failures]
        return out

    def summary(self) -> str:
        parts = []
        for run in self.runs:
            ev = run.evaluation
            if ev is None:
                parts.append(f"{run.label}: not evaluated")
                continue
            d, s = ev.mean.get("dice", math.nan), ev.sd.get("dice", math.nan)
            missing = (f", {len(ev.missing_pred)} image(s) without a prediction"
                       if ev.missing_pred else "")
            parts.append(f"{run.label}: {len(ev.cases)} cases, Dice {d:.3f} ± {s:.3f}{missing}")
        return "; ".join(parts)

    def differences(self) -> list[dict[str, Any]]:
        """Per case in both runs: ``B - A`` of every numeric metric."""
        if len(self.runs) < 2:
            return []
        a, b = self.runs[0].by_case(), self.runs[1].by_case()
        rows = []
        for case in sorted(set(a) & set(b)):
            row: dict[str, Any] = {"case": case}
            for key in ALL_KEYS:
                va, vb = a[case].get(key), b[case].get(key)
                row[key] = (float(vb) - float(va)) if finite(va) and finite(vb) else math.nan
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: one model -> exactly ``recist-seg evaluate --json``; two -> both + diff."""
        if len(self.runs) == 1 and self.runs[0].evaluation is not None:
            return _clean(self.runs[0].evaluation.to_dict())
        return _clean({
            "dataset": str(self.dataset),
            "models": {
                r.label: {
                    "checkpoint": str(r.checkpoint) if r.checkpoint else None,
                    "predictions": str(r.pred_dir),
                    "evaluation": r.evaluation.to_dict() if r.evaluation is not None else None,
                }
                for r in self.runs
            },
            "difference": {
                "of": f"{self.runs[1].label} - {self.runs[0].label}" if len(self.runs) > 1 else None,
                "cases": self.differences(),
            },
        })

    def to_csv(self) -> str:
        """One row per (model, case) with every metric; then ``B - A`` rows."""
        keys = list(ALL_KEYS)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["model", "case", *keys, "pred", "gt"])
        for run in self.runs:
            for c in (run.evaluation.cases if run.evaluation else []):
                writer.writerow([run.label, c["case"], *(_csv_num(c.get(k)) for k in keys),
                                 c.get("pred", ""), c.get("gt", "")])
        if len(self.runs) > 1:
            label = f"{self.runs[1].label} - {self.runs[0].label}"
            for d in self.differences():
                writer.writerow([label, d["case"], *(_csv_num(d.get(k)) for k in keys), "", ""])
        return buf.getvalue()


def finite(v: Any) -> bool:
    """Whether ``v`` is a finite number (``None``, NaN, inf and text are not)."""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _csv_num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def _clean(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def run_compare(
    dataset: str | os.PathLike[str],
    out: str | os.PathLike[str],
    models: Sequence[tuple[str, str | os.PathLike[str] | None, str | os.PathLike[str]]],
    *,
    derive: bool = False,
    device: str = "auto",
    spacing: tuple[float, ...] | None = None,
    curated: Any = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> EvaluationRun:
    """Segment a validation set with each model, then score each against the masks.

    Parameters
    ----------
    dataset : path-like
        Dataset folder with ``images/`` and ground-truth ``masks/`` (and ``recist.csv``
        unless ``derive``).
    out : path-like
        Output folder (``recist_from_masks.csv`` when ``derive``).
    models : sequence of (label, checkpoint or None, prediction folder)
        One or two models; ``None`` is the shipped model. Predictions are rewritten.
    derive : bool
        Prompt with RECIST derived from the ground-truth masks instead of ``recist.csv``.
    device, spacing :
        As for ``recist-seg segment`` / ``recist-seg evaluate``.
    curated : list of AnnotatedImage, optional
        Curated annotations saved first as the dataset (never over changed files).
    progress, cancel : optional
        One overall bar over all phases; checked between files.

    Returns
    -------
    EvaluationRun
        One :class:`ModelRun` per model evaluated (fewer when cancelled).
    """
    if curated is not None:
        # The viewer's curated layers, saved as a dataset folder (never over changed files).
        save_curated(curated, dataset)
    recist_csv = write_derived_recist(dataset, Path(out) / "recist_from_masks.csv") if derive else None
    result = EvaluationRun(Path(dataset))
    n = 2 * len(models)
    for i, (label, checkpoint, pred_dir) in enumerate(models):
        run = ModelRun(label, checkpoint, Path(pred_dir))
        result.runs.append(run)
        run.segment_report = run_segment(
            dataset, pred_dir, recist_csv=recist_csv, model=checkpoint, device=device,
            overwrite=True, progress=phase_progress(progress, f"segment {label}", 2 * i, n),
            cancel=cancel,
        )
        if run.segment_report.cancelled:
            result.cancelled = True
            break
        run.evaluation = _score(pred_dir, dataset, spacing,
                                phase_progress(progress, f"evaluate {label}", 2 * i + 1, n), cancel)
        if run.evaluation.cancelled:
            result.cancelled = True
            break
    return result


def _score(pred_dir: Any, dataset: Any, spacing: tuple[float, ...] | None,
           progress: ProgressCallback | None, cancel: CancelToken | None) -> Any:
    """``evaluate_folders`` plus the masks' RECIST errors, means recomputed."""
    ev = evaluate_folders(pred_dir, dataset, spacing=spacing, progress=progress, cancel=cancel)
    add_recist_errors(ev.cases, tuple(spacing[-2:]) if spacing is not None else None, cancel)
    ev.mean, ev.sd = summarize(ev.cases)
    return ev


def score_predictions(
    dataset: str | os.PathLike[str],
    predictions: Sequence[tuple[str, str | os.PathLike[str]]],
    *,
    spacing: tuple[float, ...] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> EvaluationRun:
    """Score existing prediction folders against a dataset's masks, without segmenting.

    Parameters
    ----------
    dataset : path-like
        Dataset folder with ground-truth ``masks/`` (or a folder of masks).
    predictions : sequence of (label, folder)
        One or two folders written by ``recist-seg segment`` (``<stem>.png`` /
        ``<stem>.nii.gz``; ``<stem>_labels.*`` are ignored).
    spacing, progress, cancel :
        As for :func:`run_compare`.

    Returns
    -------
    EvaluationRun
        One :class:`ModelRun` per folder; an image without a prediction is a failure
        of its run (counted in ``evaluation.missing_pred``), the others are scored.

    Raises
    ------
    InputError
        A folder that does not exist or holds no mask at all.
    """
    result = EvaluationRun(Path(dataset))
    for i, (label, pred_dir) in enumerate(predictions):
        run = ModelRun(label, None, Path(pred_dir))
        result.runs.append(run)
        run.evaluation = _score(pred_dir, dataset, spacing,
                                phase_progress(progress, f"evaluate {label}", i, len(predictions)), cancel)
        if run.evaluation.cancelled:
            result.cancelled = True
            break
    return result
