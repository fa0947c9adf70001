"""Curated annotations: images + RECIST + hand-corrected masks -> training samples.

No Qt, no napari: the Train / Evaluate docks gather what the viewer holds into
:class:`AnnotatedImage` s (arrays, not layers) and call the functions here.
The images in memory live in :mod:`napari_recist_seg.curation_images`, the saving in
:mod:`napari_recist_seg.curation_save`; this module fine-tunes and re-exports both.

Workflow of "fine-tune on curated annotations"
----------------------------------------------
1. The user corrects some masks by hand (paint / erase in the Labels layer) and marks
   those images *curated*.
2. :func:`save_curated` writes everything to a dataset folder (``images/``,
   ``masks/<name>_segmentation.png`` for curated images, ``labels/`` with the lesion
   ids, ``recist.csv``, ``curation.json``) atomically, *before* training starts, so a
   failed or cancelled run loses nothing. Existing files are never replaced silently:
   identical content is accepted as is, different content raises
   :class:`CurationConflict` unless ``overwrite=True``.
3. :func:`split_holdout` keeps some curated images out of fine-tuning;
   :func:`fine_tune` adapts the active model to the curated masks with the recipe of
   ``recist-seg train --init --curated`` (:func:`napari_recist_seg.finetune.fine_tune`),
   and scores the model before and after on the held-out curated images
   (:class:`FineTuneResult`).

Examples
--------
>>> import numpy as np
>>> from napari_recist_seg.recist import Recist
>>> lab = np.zeros((40, 40), np.int32); lab[10:20, 8:30] = 1
>>> r = Recist([[15, 8], [15, 29]], [[10, 18], [19, 18]])
>>> img = AnnotatedImage("case", np.zeros((40, 40), np.uint8), [(1, r)], labels=lab, curated=True)
>>> int(img.lesion_mask(1, r).sum())
220
>>> [s.name for s in training_samples([img])], training_samples([img])[0].curated_mask is not None
(['case#1'], True)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

# The in-memory annotations and the saving have their own modules; re-exported here,
# where the docks, the jobs and the tests import them.
from napari_recist_seg.curation_images import (
    CURATED_KEY,
    AnnotatedImage,
    safe_name,
    split_holdout,
    training_samples,
)
from napari_recist_seg.curation_save import (  # noqa: F401 - re-exported
    MANIFEST,
    CurationConflict,
    SavedCuration,
    curation_conflicts,
    save_curated,
)
from napari_recist_seg.data.atomic import atomic_write_text

# Helpers the docks and jobs/compare used to import from here (re-exported).
from napari_recist_seg.data.dataset import write_derived_recist
from napari_recist_seg.measurements import add_recist_errors, recist_errors
from napari_recist_seg.metrics import evaluate_case
from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor
from napari_recist_seg.progress import CancelToken, InputError, ProgressCallback, ProgressTracker

if TYPE_CHECKING:  # pragma: no cover
    from napari_recist_seg.training import TrainConfig, TrainResult

__all__ = [
    "CURATED_KEY",
    "AnnotatedImage",
    "add_recist_errors",
    "CurationConflict",
    "FineTuneResult",
    "SavedCuration",
    "curation_conflicts",
    "epoch_dict",
    "fine_tune",
    "holdout_scores",
    "recist_errors",
    "safe_name",
    "save_curated",
    "split_holdout",
    "training_samples",
    "write_derived_recist",
]


# -- scoring ----------------------------------------------------------------------------


def _predicted_mask(predictor: Any, img: AnnotatedImage) -> np.ndarray:
    out = np.zeros(img.shape, np.uint8)
    recists = [r for _, r in img.recists]
    if not recists:
        return out.astype(bool)
    results = predictor.segment(np.asarray(img.image), recists)
    for r, res in zip(recists, results):
        target = out[int(r.slice_index)] if img.is_volume else out
        res.paste_into(target, 1)
    return out > 0


def holdout_scores(
    checkpoint: str | os.PathLike[str] | None,
    images: Sequence[AnnotatedImage],
    *,
    device: str = "auto",
    predictor: Any = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    label: str = "",
) -> list[dict[str, Any]]:
    """Metrics of a model on curated images: one dict per image (``case`` + metrics).

    The model segments every RECIST of the image; the union of its masks is compared
    with the curated mask by :func:`napari_recist_seg.metrics.evaluate_case`.
    ``checkpoint=None`` is the shipped default model.
    """
    if predictor is None and images:
        predictor = Predictor.load(checkpoint, device=device)
    tracker = ProgressTracker(len(images), progress)
    rows = []
    for img in images:
        if cancel is not None:
            cancel.raise_if_cancelled()
        pred = _predicted_mask(predictor, img)
        sp = img.spacing if img.spacing is None or len(img.spacing) == pred.ndim else None
        rows.append({"case": img.name, **evaluate_case(pred, img.mask(), sp)})
        tracker.step(f"{label} {img.name}".strip())
    return rows


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
    return float(np.mean(vals)) if vals else math.nan


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` did: the saved curation, the training run, before / after."""

    saved: SavedCuration
    train: "TrainResult | None"
    holdout: list[str]
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    init_checkpoint: Path | None = None

    @property
    def cancelled(self) -> bool:
        return bool(self.train is not None and self.train.cancelled)

    @property
    def checkpoint(self) -> Path | None:
        return self.train.checkpoint if self.train is not None else None

    def dice_before_after(self) -> tuple[float, float]:
        """Mean Dice on the held-out curated images before and after (NaN if none)."""
        return _mean(self.before, "dice"), _mean(self.after, "dice")

    def summary(self) -> str:
        notes = "\n".join(self.train.notes) + "\n" if self.train is not None and self.train.notes else ""
        if not self.holdout:
            return notes + ("no curated image held out (mark at least two images curated to "
                            "measure the model before and after)")
        b, a = self.dice_before_after()
        after = f"{a:.3f}" if math.isfinite(a) else "n/a (no checkpoint)"
        return notes + (f"Dice on {len(self.holdout)} held-out curated image(s): "
                        f"before {b:.3f}, after {after}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "curated_folder": str(self.saved.folder),
            "init_checkpoint": str(self.init_checkpoint) if self.init_checkpoint else None,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "holdout": list(self.holdout),
            "before": self.before,
            "after": self.after,
            "dice_before": _json_float(self.dice_before_after()[0]),
            "dice_after": _json_float(self.dice_before_after()[1]),
        }


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def fine_tune(
    images: Sequence[AnnotatedImage],
    out_dir: str | os.PathLike[str],
    config: "TrainConfig",
    *,
    init_checkpoint: str | os.PathLike[str] | None = None,
    curated_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    holdout_fraction: float = 0.3,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_epoch: Callable[[Any], None] | None = None,
    finetune_config: Any = None,
) -> FineTuneResult:
    """Fine-tune a model on curated masks plus RECIST, scored before and after.

    Steps: save the curation (:func:`save_curated`, *first*, into ``curated_dir`` or
    ``out_dir/curated``); hold out curated images (:func:`split_holdout`); score the
    starting model on them; fine-tune ``init_checkpoint`` (``None``: the shipped
    default model) on the curated masks of the others with
    :func:`napari_recist_seg.finetune.fine_tune`, the recipe of ``recist-seg train
    --init --curated`` (calibration to the curated masks, cross-validated; the
    uncurated images are its replay images); score the result on the held-out images.
    ``config`` gives the seed and device; ``finetune_config`` the recipe (default:
    ``FineTuneConfig()``); ``on_epoch`` is accepted for the dock and not called (the
    recipe has no epochs).

    Raises
    ------
    InputError
        No curated image, or no RECIST at all.
    CurationConflict
        From :func:`save_curated` (nothing is trained then).
    """
    from napari_recist_seg.finetune import FineTuneConfig
    from napari_recist_seg.finetune import fine_tune as tune_on_curated

    if not any(im.curated for im in images):
        raise InputError("no curated image: correct some masks and mark them curated first")
    if not any(im.recists for im in images):
        raise InputError("no RECIST on any image: fine-tuning needs the RECIST of each lesion")
    out_dir = Path(out_dir)
    saved = save_curated(images, Path(curated_dir) if curated_dir else out_dir / "curated",
                         overwrite=overwrite)
    if init_checkpoint is None:
        init_checkpoint = DEFAULT_MODEL_DIR
    init_checkpoint = Path(init_checkpoint)
    tune, held = split_holdout(images, holdout_fraction, config.seed)
    tune = [im for im in tune if im.recists]
    if not any(im.curated for im in tune):
        raise InputError("nothing left to fine-tune on after holding out curated images")
    result = FineTuneResult(saved, None, [im.name for im in held], init_checkpoint=init_checkpoint)
    if held:
        result.before = holdout_scores(init_checkpoint, held, device=config.device,
                                       progress=progress, cancel=cancel, label="before:")
    # The recipe of ``recist-seg train --init --curated`` (napari_recist_seg.finetune):
    # the curated masks of ``tune``; the other images are its replay images.
    ft = finetune_config or FineTuneConfig(seed=config.seed, device=config.device)
    try:
        result.train = tune_on_curated(
            training_samples(tune), init_checkpoint, out_dir, ft, progress=progress, cancel=cancel,
            extra={"fine_tune": {"curated_folder": str(saved.folder), "holdout": result.holdout}})
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if held and result.train.checkpoint is not None and not result.train.cancelled:
        result.after = holdout_scores(result.train.checkpoint, held, device=config.device,
                                      progress=progress, cancel=cancel, label="after:")
    _write_report(out_dir, result)
    return result


def _write_report(out_dir: Path, result: FineTuneResult) -> None:
    def clean(o: Any) -> Any:
        if isinstance(o, float):
            return o if math.isfinite(o) else None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    atomic_write_text(out_dir / "fine_tune_report.json", json.dumps(clean(result.to_dict()), indent=2))

def epoch_dict(log: Any) -> dict[str, Any]:
    """An epoch log (dataclass or mapping) as a plain dict (for plots and JSON)."""
    if is_dataclass(log):
        return asdict(log)
    return dict(log)
