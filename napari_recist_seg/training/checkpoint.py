"""The training log on disk, the best checkpoint (:func:`keep_best`), and the
checkpoint writers' temporary files."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.model import ModelConfig, RecistSegNet, save_checkpoint
from napari_recist_seg.training.config import (
    TRAIN_LOG,
    EpochLog,
    TrainConfig,
    TrainResult,
)
from napari_recist_seg.training.distributed import _all_means, _Dist
from napari_recist_seg.training.losses import _dice_np
from napari_recist_seg.training.samples import _Prepared, _ValItem


def _write_log(out_dir: Path, doc: dict[str, Any]) -> None:
    atomic_write_text(out_dir / TRAIN_LOG, json.dumps(doc, indent=2, allow_nan=False, default=_json_default))


def _mark_cancelled(out_dir: Path, wall_s: float) -> None:
    """An interrupted run's log says ``"cancelled"``, not ``"running"`` for ever."""
    try:
        doc = json.loads((out_dir / TRAIN_LOG).read_text(encoding="utf-8"))
        if isinstance(doc, dict) and doc.get("status") == "running":
            doc["status"] = "cancelled"
            doc["wall_time_s"] = wall_s
            _write_log(out_dir, doc)
    except (OSError, ValueError):
        pass  # no log yet (interrupted while preparing) or unreadable: nothing to fix


# Temporary files of the checkpoint and log writers (model.save_checkpoint, atomic_path).
_TEMP_PATTERNS = (".weights.*.safetensors", ".config.*.json", ".train_log.*.json")


def _remove_stale_temps(out_dir: Path) -> None:
    """Remove temp files a killed save left behind (a 46 MB ``.weights.*`` each).

    Saves run one at a time in this process, so any such file present before a save is
    a leftover; two runs training into one folder at once are not supported anyway."""
    for pattern in _TEMP_PATTERNS:
        for stale in out_dir.glob(pattern):
            with contextlib.suppress(OSError):
                stale.unlink()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _finite(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(v)


@dataclass
class _Best:
    """The best epoch so far (rank 0 decides) and where its checkpoint goes."""

    out: Path
    cfg: TrainConfig
    mcfg: ModelConfig
    clusters: ClusterModel | None
    extra: dict[str, Any]
    log_doc: dict[str, Any]
    best: tuple[float, int] | None = None
    bad_epochs: int = 0
    checkpoint: Path | None = None

    def update(self, score: float, epoch: int) -> bool:
        """Record this epoch's score; True when it is the best so far."""
        if self.best is None or score > self.best[0] + 1e-6:
            self.best = (score, epoch)
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False


def _log_doc(
    cfg: TrainConfig,
    mcfg: ModelConfig,
    init_checkpoint: str | os.PathLike[str] | None,
    prepared: list[_Prepared],
    val_items: list[_ValItem],
    clusters: ClusterModel | None,
    failures: list[tuple[str, str]],
    d: _Dist,
    device: str,
    extra: dict[str, Any],
    n_train: int,
    n_val: int,
) -> dict[str, Any]:
    """The ``train_log.json`` document at the start of the run (counts over all ranks)."""
    ell_gt = [(_dice_np(v.target, v.gt)) for v in val_items if v.gt is not None]
    n_gt = len(ell_gt)
    (target_gt,) = _all_means([(float(np.mean(ell_gt)) if ell_gt else None, n_gt)], d, device)
    return {
        "status": "running",
        "train_config": asdict(cfg),
        "model_config": mcfg.to_dict(),
        "init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
        "n_train": n_train,
        "n_val": n_val,
        "n_curated": int(sum(p.curated for p in prepared)),
        "n_clusters": clusters.k if clusters is not None else 0,
        "val_target_gt_dice": target_gt,
        "failures": failures,
        "world_size": d.world,
        "device": device,
        "epochs": [],
        "best_epoch": None,
        **({"extra": extra} if extra else {}),
    }


def keep_best(best: _Best, model: RecistSegNet, entry: EpochLog, improved: bool) -> None:
    """Rank 0 after an epoch: save the checkpoint when the epoch is the best so far
    (atomically; a worse epoch never overwrites it), and log the epoch."""
    log_doc, cfg, extra = best.log_doc, best.cfg, best.extra
    if improved:
        summary = {
            "epoch": entry.epoch,
            "val_dice": entry.val_dice,
            "val_gt_dice": entry.val_gt_dice,
            "val_target_gt_dice": log_doc["val_target_gt_dice"],
            "train_config": asdict(cfg),
            "n_train": log_doc["n_train"],
            "n_val": log_doc["n_val"],
            "init_checkpoint": log_doc["init_checkpoint"],
            **({"extra": extra} if extra else {}),
        }
        _remove_stale_temps(best.out)
        best.checkpoint = save_checkpoint(best.out, model, best.mcfg, best.clusters, summary,
                                          half=cfg.half_weights)
    log_doc["epochs"].append(asdict(entry))
    log_doc["best_epoch"] = best.best[1] if best.best else None
    _write_log(best.out, log_doc)


def _finish(
    out: Path,
    d: _Dist,
    t_start: float,
    log_doc: dict[str, Any],
    best: _Best,
    history: list[EpochLog],
    cancelled: bool,
    stopped_early: bool,
    n_train: int,
    n_val: int,
    clusters: ClusterModel | None,
    failures: list[tuple[str, str]],
) -> TrainResult:
    """The final status in the log (rank 0), and the :class:`TrainResult`."""
    wall = time.perf_counter() - t_start
    if d.main:
        log_doc["status"] = "cancelled" if cancelled else ("early_stopped" if stopped_early else "finished")
        log_doc["wall_time_s"] = wall
        _write_log(out, log_doc)
    best_epoch = best.best[1] if best.best else None
    best_dice = None
    if best_epoch is not None:
        best_dice = history[best_epoch - 1].val_dice
    return TrainResult(
        out_dir=out,
        checkpoint=best.checkpoint if d.main else None,
        best_epoch=best_epoch,
        best_val_dice=best_dice,
        epochs_run=len(history),
        cancelled=cancelled,
        stopped_early=stopped_early,
        wall_time_s=wall,
        history=history,
        n_train=n_train,
        n_val=n_val,
        n_clusters=clusters.k if clusters is not None else 0,
        failures=failures,
    )
