"""``recist-seg train``: build training samples from a dataset folder and train.

The dataset's RECIST come from its ``recist.csv`` (or are derived from its masks, as
for ISIC / HAM10000). Dataset masks are ground truth: they feed the validation report
(``val_gt_dice``) only, never the training target. Curated masks (``--curated DIR``,
with ``--init``) are the fine-tuning targets of their images; the other images keep
their weak (ellipse / GrabCut) targets.

Two entry points: :func:`run_train` for the CLI (takes its argparse namespace, or
keywords) and :func:`train_from_dataset` for widgets and scripts.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from napari_recist_seg.checkpoint import refuse_model_out
from napari_recist_seg.checkpoint_checks import model_config_problem
from napari_recist_seg.data.dataset import dataset_recists, scan_dataset
from napari_recist_seg.data.masks import MASK_SUFFIXES, mask_suffix
from napari_recist_seg.jobs.common import (
    CancelToken,
    InputError,
    JobReport,
    ProgressCallback,
)
from napari_recist_seg.model import CheckpointError
from napari_recist_seg.predict import DEFAULT_MODEL_DIR

__all__ = ["build_samples", "run_train", "train_from_dataset", "train_config_from_args"]


def _curated_index(folder: Path) -> dict[str, Path]:
    """``{image stem: mask path}`` for a folder of curated masks.

    ``<stem>.png``, ``<stem>_segmentation.png``, ``<stem>_mask.png`` (any mask format).
    """
    if not folder.is_dir():
        raise InputError(f"curated mask folder {folder} does not exist")
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        suffix = mask_suffix(f)
        if suffix not in MASK_SUFFIXES:
            continue
        stem = f.name[: -len(suffix)]
        for tail in ("_segmentation", "_mask", "_curated"):
            if stem.endswith(tail):
                stem = stem[: -len(tail)]
                break
        out[stem] = f
    return out


def build_samples(
    dataset: str | os.PathLike[str],
    *,
    curated: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[list[Any], list[tuple[str, str]]]:
    """Training samples (one per lesion) of a dataset folder, and per-file failures.

    Images and masks are passed as paths: they are read once, while the weak targets
    are prepared, and only the crop context is kept.
    """
    from napari_recist_seg.training import TrainSample

    ds = scan_dataset(dataset)
    if not ds.items:
        raise InputError(f"{dataset}: no images found")
    recists = dataset_recists(ds, progress=progress, cancel=cancel)
    curated_masks = _curated_index(Path(curated)) if curated is not None else {}
    masks = {item.stem: item.mask_path for item in ds.items}
    samples = []
    for stem, records in recists.items():
        for rec in records:
            samples.append(
                TrainSample(
                    image=rec.image,
                    recist=rec.recist,
                    curated_mask=curated_masks.get(stem),
                    gt_mask=masks.get(stem),
                    group=stem,
                    name=f"{stem}#{rec.lesion}",
                )
            )
    unknown = sorted(set(curated_masks) - set(recists))
    failures = list(recists.failures)
    failures += [(str(curated_masks[s]), "curated mask for an image without RECIST") for s in unknown]
    return samples, failures


def train_config_from_args(args: argparse.Namespace | dict[str, Any]) -> Any:
    """A :class:`~napari_recist_seg.training.TrainConfig` from CLI options (None = default)."""
    from napari_recist_seg.training import TrainConfig

    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in fields(TrainConfig)}
    kw: dict[str, Any] = {}
    mapping = {"aux_weight": "aux_weight", "input_size": "input_size", "batch_size": "batch_size",
               "val_fraction": "val_fraction", "encoder_weights": "encoder_weights"}
    for key, value in a.items():
        key = mapping.get(key, key)
        if key in names and value is not None:
            kw[key] = value
    clusters = a.get("clusters", "auto")
    if clusters is None or str(clusters).lower() == "auto":
        kw["n_clusters"] = None
    else:
        try:
            kw["n_clusters"] = int(clusters)
        except ValueError as exc:
            raise InputError(f"--clusters must be an integer or 'auto', got {clusters!r}") from exc
    try:
        cfg = TrainConfig(**kw)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    _check_train_config(cfg)
    return cfg


def _check_train_config(cfg: Any) -> None:
    """Refuse what would only fail later: NaN / inf options (a JSON error at the first
    save), and a model no checkpoint check would load (e.g. ``--input-size 100000``)."""
    for key, value in asdict(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            name = "--lambda" if key == "aux_weight" else "--" + key.replace("_", "-")
            raise InputError(f"{name} must be a finite number, got {value}")
    problem = model_config_problem(cfg.model_config(max(2, cfg.n_clusters or 2)).to_dict())
    if problem is not None:
        raise InputError(f"invalid model settings: {problem}")


def resolve_init(init: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """``"default"`` (when no such folder is here) names the model shipped in the package,
    so a pip user can fine-tune it without knowing where site-packages is.

    >>> resolve_init("default").name, resolve_init(None)
    ('default', None)
    """
    if init is not None and str(init) == "default" and not Path(init).exists():
        return DEFAULT_MODEL_DIR
    return init


def train_from_dataset(
    dataset: str | os.PathLike[str],
    out: str | os.PathLike[str],
    train_config: Any = None,
    *,
    init: str | os.PathLike[str] | None = None,
    curated: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_epoch: Any = None,
    finetune_config: Any = None,
) -> tuple[JobReport, Any]:
    """Train on a dataset folder; returns the job report and the ``TrainResult``.

    Parameters
    ----------
    dataset : path
        ``images/`` + ``recist.csv`` and/or ``masks/`` (see DESIGN.md).
    out : path
        Model folder: checkpoint, ``train_log.json``, ``failures.csv``.
    train_config : TrainConfig, optional
    init : path, optional
        Checkpoint to fine-tune from.
    curated : path, optional
        Folder of curated masks (fine-tuning targets; requires ``init``). With
        ``init``, training is :func:`napari_recist_seg.finetune.fine_tune` (fixed
        schedule, replay + distillation; ``train_config`` only gives seed and device).
    finetune_config : FineTuneConfig, optional
        Settings of that fine-tuning (default: its recipe).
    """
    from napari_recist_seg.training import TrainConfig, train

    cfg = train_config if train_config is not None else TrainConfig()
    if curated is not None and init is None:
        raise InputError("--curated needs --init (fine-tuning starts from a trained model)")
    init = resolve_init(init)
    if init is not None and not Path(init).exists():
        raise InputError(f"checkpoint {init} does not exist")
    refuse_model_out(out, init)
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise InputError(f"dataset folder {dataset} does not exist")
    samples, failures = build_samples(dataset, curated=curated, progress=progress, cancel=cancel)
    report = JobReport()
    for f, reason in failures:
        report.fail(f, reason)
    if not samples:
        report.write_failures(out) if Path(out).is_dir() else None
        raise InputError(f"{dataset}: no lesion with a usable RECIST")
    extra = {"dataset": str(dataset.resolve()), "curated": str(curated) if curated else None}
    try:
        if init is not None and curated is not None:
            result = _fine_tune(samples, init, out, cfg, finetune_config, progress, cancel, extra)
        else:
            result = train(cfg, samples, out, init_checkpoint=init, progress=progress,
                           cancel=cancel, on_epoch=on_epoch, extra=extra)
    except CheckpointError as exc:
        raise InputError(f"cannot fine-tune from {init}: {exc}") from exc
    for f, reason in result.failures:
        report.fail(f, reason)
    report.processed = result.n_train + result.n_val
    report.cancelled = result.cancelled
    report.notes.extend(getattr(result, "notes", []))
    out_p = Path(out)
    if result.checkpoint is not None:
        report.outputs.append(out_p / "config.json")
    if (out_p / "train_log.json").is_file():
        report.outputs.append(out_p / "train_log.json")
    if out_p.is_dir():
        report.write_failures(out_p)
    return report, result


def _fine_tune(samples: list[Any], init: Any, out: Any, cfg: Any, ft: Any,
               progress: Any, cancel: Any, extra: dict[str, Any]) -> Any:
    """The curated-set recipe of :mod:`napari_recist_seg.finetune`."""
    from napari_recist_seg.finetune import FineTuneConfig, fine_tune

    if ft is None:
        ft = FineTuneConfig(seed=cfg.seed, device=cfg.device)
    try:
        return fine_tune(samples, init, out, ft, progress=progress, cancel=cancel, extra=extra)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def run_train(
    args: argparse.Namespace | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> JobReport:
    """``recist-seg train``: from the CLI's namespace, or ``run_train(dataset, out, **options)``.

    ``options`` are the CLI's option names (``mode, epochs, encoder, encoder_weights,
    clusters, aux_weight, target, input_size, batch_size, val_fraction, init, curated,
    device, seed, lr, steps, overwrite``; a model already in ``out`` is replaced only
    with ``overwrite``). With ``init`` and ``curated``: the fine-tuning recipe of
    :mod:`napari_recist_seg.finetune` (``lr``, ``steps``; ``epochs`` is not used).
    """
    if isinstance(args, argparse.Namespace):
        opts = dict(vars(args))
        dataset, out = opts.pop("dataset"), opts.pop("out")
    else:
        dataset, opts = args, dict(options)
        if out is None:
            raise InputError("run_train needs an output folder")
    init = opts.pop("init", None)
    curated = opts.pop("curated", None)
    if (Path(out) / "config.json").exists() and not opts.pop("overwrite", False):
        raise InputError(f"--out {out} already holds a model: choose another folder, or --overwrite "
                         "to replace it")
    opts.pop("overwrite", None)
    cfg = train_config_from_args(opts)
    ft = None
    if init is not None and curated is not None:
        from napari_recist_seg.finetune import FineTuneConfig

        try:
            given = {k: opts[k] for k in ("lr", "steps") if opts.get(k) is not None}
            ft = FineTuneConfig(seed=cfg.seed, device=cfg.device, **given)
        except ValueError as exc:
            raise InputError(f"--lr / --steps: {exc}") from exc
    report, _ = train_from_dataset(dataset, out, cfg, init=init, curated=curated,
                                   progress=progress, cancel=cancel, finetune_config=ft)
    return report
