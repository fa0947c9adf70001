"""``recist-seg evaluate``: compare a folder of predicted masks with ground truth.

Pairing
-------
Masks are paired by case stem. A file ``<stem>.<ext>`` and a file
``<stem>_segmentation.<ext>`` both belong to case ``<stem>`` (on either side), for any
extension :func:`napari_recist_seg.data.masks.read_mask` reads (png, bmp, tif/tiff,
nii/nii.gz). Label images (``*_labels.<ext>``, written next to the masks by
``recist-seg segment``), hidden files and non-mask files (``measurements.csv``,
``failures.csv``, ...) are ignored. When a folder holds no mask file but has a
``masks/`` sub-folder (a dataset folder), the masks are read from there. A folder that
holds label images only (``recist-seg segment --3d`` writes ``<stem>_labels.nii.gz`` and
no masks) is read as masks of case ``<stem>``: every lesion id is lesion.

Outcomes per case
-----------------
- evaluated: the metrics of :func:`napari_recist_seg.metrics.evaluate_case` (distances
  in px, or mm when ``spacing`` is given);
- a failure ``(file, reason)``: unreadable file, prediction and ground truth of different
  shapes, two files claiming the same case, or a ground truth without a prediction (an
  evaluation that silently skipped cases would report a flattering mean). The CLI exits
  with status 3 when there is any;
- a prediction without ground truth is listed in ``missing_gt`` only (predicting more
  images than were annotated is normal).

Means and standard deviations are over the evaluated cases only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from napari_recist_seg.data.masks import MASK_SUFFIXES, mask_suffix, read_mask
from napari_recist_seg.jobs.common import (
    CancelToken,
    InputError,
    ProgressCallback,
    ProgressTracker,
    describe_error,
)
from napari_recist_seg.metrics import METRIC_KEYS, evaluate_case, summarize

__all__ = ["EvaluationReport", "case_stem", "evaluate_folders", "find_masks"]

SEGMENTATION_SUFFIX = "_segmentation"
LABELS_SUFFIX = "_labels"

# Columns of the printed table: (metric key, header, number format).
_TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("dice", "dice", ".4f"),
    ("iou", "iou", ".4f"),
    ("vs", "vs", ".4f"),
    ("hd", "hd", ".2f"),
    ("hd95", "hd95", ".2f"),
    ("avd", "avd", ".3f"),
    ("centre_error", "centre", ".2f"),
    ("perimeter_error", "perim_err", ".3f"),
)


def case_stem(path: str | os.PathLike[str], labels: bool = False) -> str | None:
    """The case a mask file belongs to, or ``None`` if the file is not a mask.

    With ``labels``, a label image ``<stem>_labels.<ext>`` belongs to case ``<stem>`` too.

    >>> case_stem("ISIC_0000000_segmentation.png"), case_stem("ISIC_0000000.png")
    ('ISIC_0000000', 'ISIC_0000000')
    >>> case_stem("ISIC_0000000_labels.png"), case_stem("measurements.csv")
    (None, None)
    >>> case_stem("liver_3.nii.gz"), case_stem("ct_labels.nii.gz", labels=True)
    ('liver_3', 'ct')
    """
    name = Path(path).name
    if name.startswith("."):  # hidden files, and atomic writers' temporary files
        return None
    suffix = mask_suffix(name)
    if suffix not in MASK_SUFFIXES:
        return None
    stem = name[: len(name) - len(suffix)]
    if labels and stem.endswith(LABELS_SUFFIX) and len(stem) > len(LABELS_SUFFIX):
        return stem[: -len(LABELS_SUFFIX)]
    if stem.endswith(LABELS_SUFFIX) or not stem:
        return None
    if stem.endswith(SEGMENTATION_SUFFIX) and len(stem) > len(SEGMENTATION_SUFFIX):
        stem = stem[: -len(SEGMENTATION_SUFFIX)]
    return stem


def _mask_folder(folder: Path, what: str) -> tuple[Path, bool]:
    """The folder the masks are in, and whether they are label images only."""
    if not folder.exists():
        raise InputError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"{what} is not a folder: {folder}")
    if not any(case_stem(p) for p in folder.iterdir() if p.is_file()):
        sub = folder / "masks"
        if sub.is_dir() and any(case_stem(p) for p in sub.iterdir() if p.is_file()):
            return sub, False
        if any(case_stem(p, labels=True) for p in folder.iterdir() if p.is_file()):
            return folder, True  # a `segment --3d` folder: its label volumes are the masks
        raise InputError(
            f"no mask files in the {what} folder {folder} "
            f"(expected <case>.png or <case>_segmentation.png; {', '.join(MASK_SUFFIXES)})"
        )
    return folder, False


def find_masks(folder: str | os.PathLike[str],
               labels: bool = False) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Mask files of one folder by case stem, and ``(file, reason)`` for ambiguous ones
    (with ``labels``, label images ``<stem>_labels.<ext>`` count as masks).

    Two files for the same case (``a.png`` and ``a_segmentation.png``, or ``a.png`` and
    ``a.tif``) are ambiguous: neither is used, and both are reported.
    """
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        stem = case_stem(path, labels)
        if stem is not None:
            by_stem.setdefault(stem, []).append(path)
    masks: dict[str, Path] = {}
    conflicts: list[tuple[str, str]] = []
    for stem, paths in by_stem.items():
        if len(paths) == 1:
            masks[stem] = paths[0]
            continue
        names = ", ".join(p.name for p in paths)
        for p in paths:
            conflicts.append((str(p), f"several masks for case {stem!r} ({names}); keep one"))
    return masks, conflicts


def _json_number(v: Any) -> Any:
    # JSON has no NaN / inf: write null instead.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class EvaluationReport:
    """Per-case metrics, their mean and sd, and what could not be evaluated.

    ``cases`` holds one dict per evaluated case: ``case`` (the stem), ``pred`` and
    ``gt`` (file paths) and the metrics of
    :func:`napari_recist_seg.metrics.evaluate_case`. ``unit`` is the unit of the
    distances (``"px"``, or ``"mm"`` with a spacing). ``missing_pred`` / ``missing_gt``
    list case stems that have only a ground truth / only a prediction.
    """

    cases: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    sd: dict[str, float] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing_pred: list[str] = field(default_factory=list)
    missing_gt: list[str] = field(default_factory=list)
    unit: str = "px"
    spacing: tuple[float, ...] | None = None
    pred_dir: str = ""
    gt_dir: str = ""
    cancelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe contents (NaN and inf become ``null``)."""
        return {
            "pred_dir": self.pred_dir,
            "gt_dir": self.gt_dir,
            "unit": self.unit,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "n_cases": len(self.cases),
            "metrics": list(METRIC_KEYS),
            "cases": [{k: _json_number(v) for k, v in c.items()} for c in self.cases],
            "mean": {k: _json_number(v) for k, v in self.mean.items()},
            "sd": {k: _json_number(v) for k, v in self.sd.items()},
            "failures": [{"file": f, "reason": r} for f, r in self.failures],
            "missing_pred": list(self.missing_pred),
            "missing_gt": list(self.missing_gt),
            "cancelled": self.cancelled,
        }

    def format_table(self) -> str:
        """A plain-text table: one row per case, then mean and sd rows, then problems."""
        headers = ["case"] + [h for _, h, _ in _TABLE_COLUMNS]
        rows = [
            [str(c["case"])] + [_fmt(c.get(k), f) for k, _, f in _TABLE_COLUMNS] for c in self.cases
        ]
        if self.cases:
            rows.append(["mean"] + [_fmt(self.mean.get(k), f) for k, _, f in _TABLE_COLUMNS])
            rows.append(["sd"] + [_fmt(self.sd.get(k), f) for k, _, f in _TABLE_COLUMNS])
        widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
            return "  ".join([first, *rest]).rstrip()

        out = [
            f"{len(self.cases)} case(s) evaluated; distances (hd, hd95, avd, centre) in "
            f"{self.unit}; avd = average Hausdorff distance; perim_err = relative perimeter error",
            line(headers),
            line(["-" * w for w in widths]),
        ]
        n_case_rows = len(self.cases)
        for i, r in enumerate(rows):
            if i == n_case_rows and n_case_rows:
                out.append(line(["-" * w for w in widths]))
            out.append(line(r))
        if self.cases:
            out.append(
                "mean ± sd: "
                + ", ".join(
                    f"{h} {_fmt(self.mean.get(k), f)} ± {_fmt(self.sd.get(k), f)}"
                    for k, h, f in _TABLE_COLUMNS[:6]
                )
            )
        if self.cancelled:
            out.append("cancelled: the figures cover the cases evaluated so far")
        if self.missing_pred:
            out.append(f"no prediction for {len(self.missing_pred)} case(s): "
                       + ", ".join(self.missing_pred))
        if self.missing_gt:
            out.append(f"no ground truth for {len(self.missing_gt)} prediction(s) (not evaluated): "
                       + ", ".join(self.missing_gt))
        if self.failures:
            out.append(f"{len(self.failures)} failure(s):")
            out.extend(f"  {f}: {r}" for f, r in self.failures)
        return "\n".join(out)


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    spacing: Sequence[float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> EvaluationReport:
    """Evaluate every predicted mask against the ground-truth mask of the same case.

    Parameters
    ----------
    pred_dir, gt_dir : path-like
        Folders of masks (or dataset folders with a ``masks/`` sub-folder); see the
        module notes for how files are paired and what is ignored.
    spacing : sequence of float, optional
        Pixel size in mm, ``(row_mm, col_mm)`` (or ``(z_mm, row_mm, col_mm)`` for
        volumes); distances are reported in mm instead of pixels.
    progress : callable, optional
        Receives a :class:`~napari_recist_seg.jobs.common.ProgressEvent` per case.
    cancel : CancelToken, optional
        Checked between cases; when set, the report covers the cases done so far and
        has ``cancelled = True``.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    InputError
        A folder that does not exist or holds no mask file at all.
    """
    pred_root, pred_labels = _mask_folder(Path(pred_dir), "prediction")
    gt_root, gt_labels = _mask_folder(Path(gt_dir), "ground-truth")
    sp = tuple(float(s) for s in spacing) if spacing is not None else None
    report = EvaluationReport(
        unit="mm" if sp is not None else "px", spacing=sp,
        pred_dir=str(pred_root), gt_dir=str(gt_root),
    )
    preds, pred_conflicts = find_masks(pred_root, pred_labels)
    gts, gt_conflicts = find_masks(gt_root, gt_labels)
    report.failures.extend(gt_conflicts + pred_conflicts)
    conflicted = {case_stem(f, labels=True) for f, _ in gt_conflicts + pred_conflicts}

    for stem in sorted(gts):
        if stem not in preds and stem not in conflicted:
            report.missing_pred.append(stem)
            report.failures.append((str(gts[stem]), "no predicted mask for this ground truth"))
    report.missing_gt = sorted(s for s in preds if s not in gts and s not in conflicted)

    pairs = [(s, preds[s], gts[s]) for s in sorted(gts) if s in preds]
    tracker = ProgressTracker(len(pairs), progress)
    for stem, pred_path, gt_path in pairs:
        if cancel is not None and cancel.cancelled:
            report.cancelled = True
            break
        case = _evaluate_pair(stem, pred_path, gt_path, sp, report)
        if case is not None:
            report.cases.append(case)
        tracker.step(stem)
    report.mean, report.sd = summarize(report.cases)
    return report


def _reason(exc: BaseException, path: Path) -> str:
    """The failure reason, without the file name the failure entry already holds."""
    text = describe_error(exc)
    for prefix in (f"{type(exc).__name__}: {path}: ", f"{path}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _evaluate_pair(
    stem: str,
    pred_path: Path,
    gt_path: Path,
    spacing: tuple[float, ...] | None,
    report: EvaluationReport,
) -> dict[str, Any] | None:
    masks = []
    for path in (pred_path, gt_path):
        try:
            masks.append(read_mask(path))
        except Exception as exc:  # any unreadable file is that case's failure, not a crash
            report.failures.append((str(path), _reason(exc, path)))
            return None
    pred, gt = masks
    if pred.shape != gt.shape:
        report.failures.append((
            str(pred_path),
            f"size differs from the ground truth {gt_path.name}: prediction {pred.shape}, "
            f"ground truth {gt.shape}",
        ))
        return None
    try:
        metrics = evaluate_case(pred, gt, spacing)
    except ValueError as exc:  # e.g. a 2-value spacing for a volume
        report.failures.append((str(pred_path), describe_error(exc)))
        return None
    return {"case": stem, "pred": str(pred_path), "gt": str(gt_path), **metrics}
