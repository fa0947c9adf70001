"""A1 / A1+L training from RECIST alone (weak supervision), and fine-tuning.

:func:`train` takes a list of :class:`TrainSample` (an image plane or its path, one
RECIST, optionally a curated full mask for fine-tuning and a ground-truth mask for
reporting only) and writes the best checkpoint and ``train_log.json`` to ``out_dir``.

- Each lesion is cut out with the crop rule of :mod:`napari_recist_seg.preprocess`
  (the same as inference). The weak target (the RECIST ellipse, or its GrabCut
  refinement) is computed once per sample, before the first epoch.
- Augmentation, all in one affine warp of a stored context region around the lesion:
  RECIST endpoint jitter (moves the crop and the RECIST channel, never the target),
  crop scale, small rotations, 90-degree rotations and flips; then colour jitter.
- Loss: soft Dice + BCE on the target, plus ``aux_weight`` x cross-entropy on the
  RECIST shape cluster (A1+L). The cluster label of an augmented sample is the cluster
  of its rotated / flipped RECIST, so it stays consistent with what the network sees.
- Validation is split by image (never the same image in train and validation), seeded.
  Model selection and early stopping use the validation Dice against the *weak* target;
  ground-truth masks only feed the ``val_gt_dice`` column of the log.
- The best checkpoint is saved atomically and never overwritten by a worse epoch; a
  cancel (checked every batch) stops the run and leaves that checkpoint loadable.
- Runs unchanged under ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA,
  each rank trains on its shard, rank 0 validates and writes.

The rooms: :mod:`.config` (settings and results), :mod:`.samples` (preparation and
augmentation), :mod:`.losses`, :mod:`.distributed` (``torchrun``), :mod:`.checkpoint`
(the log and the writers' temporary files) and :mod:`.loop` (:func:`train`).
"""

from __future__ import annotations

# Every name other modules, tests and benchmarks import from ``training`` (private
# ones included) stays importable from here.
from napari_recist_seg.training.checkpoint import (
    _TEMP_PATTERNS,
    _finite,
    _json_default,
    _mark_cancelled,
    _remove_stale_temps,
    _write_log,
)
from napari_recist_seg.training.config import (
    TRAIN_LOG,
    EpochLog,
    TrainConfig,
    TrainResult,
    TrainSample,
)
from napari_recist_seg.training.distributed import (
    _all_any,
    _all_means,
    _all_min,
    _all_sum,
    _Dist,
    _gather,
    _setup_dist,
)
from napari_recist_seg.training.loop import (
    _resolve_clusters,
    _train,
    fit_epoch,
    keep_best,
    train,
    validate,
)
from napari_recist_seg.training.losses import _dice_np, _seg_loss
from napari_recist_seg.training.samples import (
    CONTEXT_FACTOR,
    CONTEXT_OVERSAMPLE,
    _augment,
    _load_plane,
    _mask_plane,
    _prepare_one,
    _Prepared,
    _TrainSet,
    _ValItem,
    _weak_target,
    prepare_samples,
    split_groups,
)

_validate = validate  # the name before the split

__all__ = [
    "TRAIN_LOG",
    "EpochLog",
    "TrainConfig",
    "TrainResult",
    "TrainSample",
    "split_groups",
    "train",
]
