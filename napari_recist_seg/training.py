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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from napari_recist_seg.clusters import ClusterModel, recist_features
from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.jobs.common import (
    CancelToken,
    ProgressCallback,
    ProgressTracker,
)
from napari_recist_seg.model import (
    ModelConfig,
    RecistSegNet,
    build_model,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from napari_recist_seg.preprocess import (
    CropBox,
    PreprocessConfig,
    crop_box,
    extract_crop,
    make_input,
    normalize_intensity,
    render_recist,
)
from napari_recist_seg.recist import Recist, RecistError, shape_features

__all__ = [
    "TRAIN_LOG",
    "EpochLog",
    "TrainConfig",
    "TrainResult",
    "TrainSample",
    "split_groups",
    "train",
]

TRAIN_LOG = "train_log.json"
# The stored context around a lesion, relative to its crop side: room for scale,
# rotation and jitter augmentation.
CONTEXT_FACTOR = 1.75
# The context is kept at about this many pixels per network input pixel (memory).
CONTEXT_OVERSAMPLE = 1.25


@dataclass
class TrainConfig:
    """Settings of one training run (stored in the checkpoint and the log).

    Parameters
    ----------
    mode : {"a1", "a1l"}
        A1: segmentation only. A1+L: plus the RECIST-cluster head (multi-task).
    epochs, batch_size, lr, weight_decay
        Optimisation (AdamW, cosine learning-rate decay over ``epochs``).
    aux_weight : float
        lambda, the weight of the cluster cross-entropy (A1+L only).
    n_clusters : int, optional
        K; ``None`` picks it by silhouette (2..8). A1 fits them too (stored in the
        checkpoint for display; no cluster head, no cluster loss).
    target : {"ellipse", "grabcut"}
        The weak target built from each RECIST.
    val_fraction : float
        Fraction of *images* held out for validation (ignored when samples carry an
        explicit ``split``).
    seed : int
        Seeds the split, the initialisation, the order and the augmentation.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``. CUDA trains with AMP.
    num_workers : int
        DataLoader worker processes (0: augment in the main process).
    patience : int
        Stop after this many epochs without a better validation Dice (0: never).
    jitter : float
        Std of the RECIST endpoint jitter, as a fraction of the long axis.
    scale_jitter, rotate_deg, flips, colour_jitter
        Crop-scale range (log-uniform within ``1 +- scale_jitter``), maximum small
        rotation in degrees, 90-degree rotations + flips, brightness/contrast range.
    encoder, encoder_weights, input_size, crop_factor, min_crop, recist_channel, decoder_channels
        The architecture and crop rule of a new model (a fine-tuned model keeps its
        checkpoint's).
    half_weights : bool
        Save the checkpoint weights as float16.
    max_batches_per_epoch : int, optional
        Cap on training batches per epoch (quick experiments and tests).
    """

    mode: str = "a1l"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    aux_weight: float = 0.5
    n_clusters: int | None = None
    target: str = "ellipse"
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    patience: int = 8
    jitter: float = 0.05
    scale_jitter: float = 0.15
    rotate_deg: float = 15.0
    flips: bool = True
    colour_jitter: float = 0.1
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    input_size: int = 128
    crop_factor: float = 2.0
    min_crop: int = 32
    recist_channel: bool = True
    decoder_channels: int = 128
    half_weights: bool = False
    max_batches_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("a1", "a1l"):
            raise ValueError(f"mode must be 'a1' or 'a1l', got {self.mode!r}")
        if self.target not in ("ellipse", "grabcut"):
            raise ValueError(f"target must be 'ellipse' or 'grabcut', got {self.target!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight (lambda) must be >= 0, got {self.aux_weight}")
        if self.n_clusters is not None and self.n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2 (or None for automatic), got {self.n_clusters}")

    def model_config(self, n_clusters: int) -> ModelConfig:
        """The :class:`ModelConfig` of a new model trained with these settings."""
        return ModelConfig(
            encoder=self.encoder,
            encoder_weights=self.encoder_weights,
            mode=self.mode,
            n_clusters=n_clusters if self.mode == "a1l" else 0,
            decoder_channels=self.decoder_channels,
            input_size=self.input_size,
            crop_factor=self.crop_factor,
            min_crop=self.min_crop,
            recist_channel=self.recist_channel,
        )


@dataclass(eq=False)
class TrainSample:
    """One lesion to train on.

    Parameters
    ----------
    image : ndarray or path
        The image plane ``(H, W)`` / ``(H, W, 3)``, a ``(Z, H, W)`` volume (the plane
        is ``recist.slice_index``), or a file read with ``data.images.read_image``.
    recist : Recist
        The measurement in pixel coordinates of the plane.
    curated_mask : ndarray of bool or path, optional
        A mask corrected by hand (plane shape, or the volume's): the target instead
        of the weak one (fine-tuning).
    gt_mask : ndarray of bool or path, optional
        Ground truth for the validation report only; never a training target. A path
        is read only if the sample lands in the validation split.
    group : str, optional
        Image id used for the train/validation split (default: the path, else the
        sample's position); all lesions of an image share it.
    split : {"train", "val"}, optional
        Explicit assignment; when any sample has one, ``val_fraction`` is ignored.
    name : str
        For messages.
    """

    image: Any
    recist: Recist
    curated_mask: Any = None
    gt_mask: Any = None
    group: str | None = None
    split: str | None = None
    name: str = ""


@dataclass
class EpochLog:
    """One line of ``train_log.json``."""

    epoch: int
    train_loss: float
    train_seg_loss: float
    train_aux_loss: float | None
    train_aux_acc: float | None
    val_loss: float | None
    val_dice: float | None
    val_gt_dice: float | None
    lr: float
    epoch_time_s: float
    elapsed_s: float
    best: bool = False


@dataclass
class TrainResult:
    """What :func:`train` did."""

    out_dir: Path
    checkpoint: Path | None
    best_epoch: int | None
    best_val_dice: float | None
    epochs_run: int
    cancelled: bool
    stopped_early: bool
    wall_time_s: float
    history: list[EpochLog] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    n_clusters: int = 0  # RECIST shape clusters (A1 keeps them too, without a head)
    failures: list[tuple[str, str]] = field(default_factory=list)


# -- split --------------------------------------------------------------------------
def split_groups(groups: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The validation groups: a seeded random ``val_fraction`` of the distinct groups.

    At least one group is held out when ``val_fraction > 0`` and there are two or
    more groups.

    >>> sorted(split_groups(["a", "b", "c", "d"], 0.5, 0)) == sorted(split_groups(["d", "c", "b", "a"], 0.5, 0))
    True
    """
    uniq = sorted(set(groups))
    if val_fraction <= 0 or len(uniq) < 2:
        return set()
    n_val = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
    rng = np.random.default_rng(seed)
    return {uniq[i] for i in rng.permutation(len(uniq))[:n_val]}


# -- preparation ----------------------------------------------------------------------
@dataclass
class _Prepared:
    """A lesion reduced to what training needs: a context region around it."""

    context: np.ndarray  # raw intensities (uint8 kept as uint8), context grid
    dtype: np.dtype  # dtype of the source image (drives intensity normalisation)
    recist: Recist  # in context coordinates
    target: np.ndarray  # uint8 0/1 in the context grid
    ctx_scale: float  # context pixels per image pixel
    curated: bool
    name: str


@dataclass
class _ValItem:
    x: np.ndarray  # network input, exactly as at inference
    target: np.ndarray  # bool (S, S)
    gt: np.ndarray | None  # bool (S, S)
    label: int


def _load_plane(sample: TrainSample, cache: dict[str, Any] | None = None) -> np.ndarray:
    img = sample.image
    if isinstance(img, (str, os.PathLike)):
        from napari_recist_seg.data.images import image_plane, read_image

        key = str(img)
        if cache is not None and key in cache:
            data = cache[key]
        else:
            data = read_image(img)
            if cache is not None:
                # One image at a time: lesions of one image are usually consecutive.
                cache.clear()
                cache[key] = data
        return image_plane(data, sample.recist.slice_index if data.is_volume else None)
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        if sample.recist.slice_index is None:
            raise RecistError("a volume needs a RECIST with a slice index")
        return arr[sample.recist.slice_index]
    return arr


def _mask_plane(mask: Any, recist: Recist, shape: tuple[int, int], what: str) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike)):
        from napari_recist_seg.data.masks import read_mask

        mask = read_mask(mask)
    m = np.asarray(mask)
    if m.ndim == 3 and recist.slice_index is not None and m.shape[1:] == shape:
        m = m[recist.slice_index]
    if m.shape != shape:
        raise ValueError(f"{what} has shape {m.shape} but the image plane is {shape}")
    return m.astype(bool)


def _weak_target(plane: np.ndarray, recist: Recist, target: str) -> np.ndarray:
    from napari_recist_seg import targets

    shape = plane.shape[:2]
    if target == "grabcut":
        return targets.grabcut_mask(plane, recist)
    return targets.ellipse_mask(recist, shape)


def _prepare_one(
    sample: TrainSample,
    pcfg: PreprocessConfig,
    target_kind: str,
    want_val: bool,
    label: int,
    cache: dict[str, Any] | None = None,
) -> tuple[_Prepared | None, _ValItem | None]:
    plane = _load_plane(sample, cache)
    shape = plane.shape[:2]
    recist = sample.recist.validate(shape)
    curated = _mask_plane(sample.curated_mask, recist, shape, "curated mask")
    gt = _mask_plane(sample.gt_mask, recist, shape, "ground-truth mask") if want_val else None
    target_full = curated if curated is not None else _weak_target(plane, recist, target_kind)
    box = crop_box(recist, pcfg)
    if want_val:
        x, _ = make_input(plane, recist, pcfg, box=box)
        size = pcfg.input_size
        t = extract_crop(target_full.astype(np.uint8), box, size, pad_mode="constant") > 0.5
        g = None
        if gt is not None:
            g = extract_crop(gt.astype(np.uint8), box, size, pad_mode="constant") > 0.5
        return None, _ValItem(x, t, g, label)
    # Context: a bigger square on the same centre, stored at about the network's
    # resolution (memory is bounded by the crop, not the image).
    ctx_side = int(math.ceil(box.side * CONTEXT_FACTOR))
    grow = (ctx_side - box.side) // 2
    ctx_box = CropBox(box.row0 - grow, box.col0 - grow, ctx_side)
    ctx_size = int(min(ctx_side, math.ceil(pcfg.input_size * CONTEXT_OVERSAMPLE * CONTEXT_FACTOR)))
    ctx = extract_crop(plane, ctx_box, ctx_size, pad_mode=pcfg.pad_mode)
    if plane.dtype == np.uint8:
        ctx = np.clip(np.rint(ctx), 0, 255).astype(np.uint8)
    tgt = extract_crop(target_full.astype(np.uint8), ctx_box, ctx_size, pad_mode="constant") > 0.5
    prep = _Prepared(
        context=ctx,
        dtype=np.dtype(plane.dtype),
        recist=ctx_box.to_crop(recist, ctx_size),
        target=tgt.astype(np.uint8),
        ctx_scale=ctx_size / ctx_side,
        curated=curated is not None,
        name=sample.name,
    )
    return prep, None


# -- augmentation --------------------------------------------------------------------
def _augment(
    p: _Prepared,
    rng: np.random.Generator,
    cfg: TrainConfig,
    pcfg: PreprocessConfig,
    clusters: ClusterModel | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One augmented (input, target, cluster label) from a prepared lesion."""
    S = pcfg.input_size
    r = p.recist
    L = r.long_length
    if cfg.jitter > 0:
        noise = rng.normal(0.0, cfg.jitter * L, size=(4, 2))
        r = dataclasses.replace(r, long_axis=r.long_axis + noise[:2], short_axis=r.short_axis + noise[2:])
    Lj = max(r.long_length, 1.0)
    side = max(pcfg.min_crop * p.ctx_scale, pcfg.crop_factor * Lj)
    if cfg.scale_jitter > 0:
        side *= math.exp(rng.uniform(-1, 1) * math.log1p(cfg.scale_jitter))
    theta = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg > 0 else 0.0
    flip = 1.0
    if cfg.flips:
        theta += rng.integers(0, 4) * math.pi / 2
        flip = -1.0 if rng.random() < 0.5 else 1.0
    c, s = math.cos(theta), math.sin(theta)
    # Output (row, col) offsets from the crop centre -> context (row, col) offsets.
    B = (side / S) * np.array([[c, -s], [s, c]]) @ np.diag([1.0, flip])
    centre = r.centre
    h = (S - 1) / 2.0
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    Bxy = swap @ B @ swap
    cxy = centre[::-1]
    M = np.hstack([Bxy, (cxy - Bxy @ np.array([h, h]))[:, None]])
    border = cv2.BORDER_REPLICATE if pcfg.pad_mode == "edge" else cv2.BORDER_CONSTANT
    img = cv2.warpAffine(
        p.context, M, (S, S), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border
    )
    tgt = cv2.warpAffine(
        p.target.astype(np.float32), M, (S, S),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
    ) > 0.5
    x = normalize_intensity(img.astype(np.float32), p.dtype, pcfg)
    if cfg.colour_jitter > 0:
        mean = np.asarray(pcfg.mean, np.float32)[:, None, None]
        std = np.asarray(pcfg.std, np.float32)[:, None, None]
        x01 = x * std + mean
        a = 1.0 + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter)
        b = rng.uniform(-cfg.colour_jitter, cfg.colour_jitter)
        gain = 1.0 + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, size=(3, 1, 1)) / 2
        if x.ndim == 3 and p.context.ndim == 2:
            gain[:] = 1.0  # grey stays grey
        m = x01.mean()
        x01 = np.clip((x01 - m) * a + m + b, 0, 1) * gain
        x = ((np.clip(x01, 0, 1) - mean) / std).astype(np.float32)
    Binv = np.linalg.inv(B)
    r_out = dataclasses.replace(
        r,
        long_axis=(r.long_axis - centre) @ Binv.T + h,
        short_axis=(r.short_axis - centre) @ Binv.T + h,
    )
    if pcfg.recist_channel:
        x = np.concatenate([x, render_recist(r_out, S)[None]], axis=0)
    label = -1
    if clusters is not None:
        # The cluster of the RECIST as the network sees it (rotated / flipped), with
        # lengths in the original image's pixels.
        img_px_per_out = side / S / p.ctx_scale
        r_img = r_out.transformed((0.0, 0.0), img_px_per_out)
        label = int(clusters.predict(shape_features(r_img))[0])
    return np.ascontiguousarray(x), tgt, label


class _TrainSet(torch.utils.data.Dataset):
    def __init__(self, items: list[_Prepared], cfg: TrainConfig, pcfg: PreprocessConfig,
                 clusters: ClusterModel | None) -> None:
        self.items, self.cfg, self.pcfg, self.clusters = items, cfg, pcfg, clusters
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        # Per (seed, epoch, index) randomness: identical with any number of workers.
        rng = np.random.default_rng((self.cfg.seed, self.epoch, int(i)))
        x, t, label = _augment(self.items[i], rng, self.cfg, self.pcfg, self.clusters)
        return torch.from_numpy(x), torch.from_numpy(t[None].astype(np.float32)), label, self.items[i].curated


# -- loss / metrics ---------------------------------------------------------------------
def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return bce + dice.mean()


def _dice_np(pred: np.ndarray, ref: np.ndarray) -> float:
    s = int(pred.sum()) + int(ref.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / s


# -- distributed ----------------------------------------------------------------------
@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
    return _Dist(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _all_any(flag: bool, d: _Dist, device: str) -> bool:
    """True on every rank when ``flag`` is true on any (cancel / stop decisions)."""
    if d.world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _all_sum(sums: dict[str, float], d: _Dist, device: str) -> None:
    """Sum the epoch's loss sums over all ranks, in place (a no-op without DDP)."""
    if d.world <= 1:
        return
    import torch.distributed as dist

    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    for k, v in zip(keys, t.tolist()):
        sums[k] = v


def _all_min(n: int, d: _Dist, device: str) -> int:
    """The smallest ``n`` over all ranks (a no-op without DDP)."""
    if d.world <= 1:
        return n
    import torch.distributed as dist

    t = torch.tensor([float(n)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _all_means(
    pairs: Sequence[tuple[float | None, int]], d: _Dist, device: str
) -> list[float | None]:
    """Means over all ranks of per-rank ``(mean or None, count)`` pairs, weighted by
    the counts; ``None`` where no rank counted anything (a no-op without DDP)."""
    if d.world <= 1:
        return [m for m, _ in pairs]
    import torch.distributed as dist

    flat = []
    for m, n in pairs:
        ok = m is not None and n > 0
        flat += [float(m) * n if ok else 0.0, float(n) if ok else 0.0]  # type: ignore[arg-type]
    t = torch.tensor(flat, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    v = t.tolist()
    return [s / n if n > 0 else None for s, n in zip(v[0::2], v[1::2])]


def _gather(obj: Any, d: _Dist) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without DDP)."""
    if d.world <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


# -- the loop -------------------------------------------------------------------------
def _resolve_clusters(
    cfg: TrainConfig, train_recists: list[Recist], init: ClusterModel | None
) -> ClusterModel | None:
    # A1 fits them too: it has no cluster head, but the checkpoint keeps the clusters
    # so that inference can still name the RECIST shape cluster (from the RECIST alone).
    if init is not None:
        return init
    feats = recist_features(train_recists)
    if cfg.mode == "a1l":
        return ClusterModel.fit(feats, cfg.n_clusters, seed=cfg.seed)
    try:
        return ClusterModel.fit(feats, cfg.n_clusters, seed=cfg.seed)
    except ValueError:  # too few shapes to cluster: A1 trains without them
        return None


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


def train(
    config: TrainConfig,
    samples: Sequence[TrainSample],
    out_dir: str | os.PathLike[str],
    *,
    init_checkpoint: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a model; write the best checkpoint and the log to ``out_dir``.

    Parameters
    ----------
    config : TrainConfig
    samples : sequence of TrainSample
        All lesions; split into train / validation by image (``group``).
    out_dir : path
        Checkpoint folder (``config.json``, weights, ``train_log.json``).
    init_checkpoint : path, optional
        Fine-tune: start from this checkpoint (its architecture, crop rule and
        clusters are kept). Samples with ``curated_mask`` are trained on it.
    progress : callable, optional
        Receives a :class:`~napari_recist_seg.jobs.common.ProgressEvent` per batch.
    cancel : CancelToken, optional
        Checked every batch; on cancel the run stops, the best checkpoint so far stays.
    on_epoch : callable, optional
        Called with each epoch's :class:`EpochLog`.
    extra : dict, optional
        Extra JSON-serialisable information stored in the checkpoint and log (e.g. the
        command line).

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        No usable samples, or settings that do not fit the data.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    device = resolve_device(config.device)
    dist_info = _setup_dist(device)
    if dist_info.world > 1 and device.startswith("cuda"):
        device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(dist_info.local_rank)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    try:
        return _train(config, list(samples), out, device, dist_info, t_start,
                      init_checkpoint, progress, cancel, on_epoch, extra or {})
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the CLI
        if dist_info.main:
            _mark_cancelled(out, time.perf_counter() - t_start)
        raise
    finally:
        if dist_info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    samples: list[TrainSample],
    out: Path,
    device: str,
    d: _Dist,
    t_start: float,
    init_checkpoint: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    on_epoch: Callable[[EpochLog], None] | None,
    extra: dict[str, Any],
) -> TrainResult:
    if not samples:
        raise ValueError("no training samples")
    init_clusters = None
    model: RecistSegNet
    if init_checkpoint is not None:
        model, mcfg, init_clusters = load_checkpoint(init_checkpoint, device="cpu")
        if mcfg.mode != cfg.mode:
            warnings.warn(
                f"fine-tuning keeps the checkpoint's mode {mcfg.mode!r} (asked {cfg.mode!r})",
                stacklevel=3,
            )
            cfg = dataclasses.replace(cfg, mode=mcfg.mode)
    # -- split by image
    groups = [s.group or (str(s.image) if isinstance(s.image, (str, os.PathLike)) else f"#{i}")
              for i, s in enumerate(samples)]
    if any(s.split is not None for s in samples):
        bad = {s.split for s in samples} - {None, "train", "val"}
        if bad:
            raise ValueError(f"sample split must be 'train' or 'val', got {sorted(map(str, bad))}")
        is_val = [s.split == "val" for s in samples]
    else:
        val_groups = split_groups(groups, cfg.val_fraction, cfg.seed)
        is_val = [g in val_groups for g in groups]
    train_idx = [i for i, v in enumerate(is_val) if not v]
    val_idx = [i for i, v in enumerate(is_val) if v]
    if not train_idx:
        raise ValueError("no training samples left after the validation split")
    clusters = _resolve_clusters(cfg, [samples[i].recist for i in train_idx], init_clusters)
    if init_checkpoint is None:
        mcfg = cfg.model_config(clusters.k if clusters is not None else 0)
        with warnings.catch_warnings():
            if not d.main:
                warnings.simplefilter("ignore")
            torch.manual_seed(cfg.seed)
            model = build_model(mcfg)
    pcfg = mcfg.preprocess
    # Cluster labels are training targets only for the cluster head (A1+L).
    aux_clusters = clusters if mcfg.has_aux else None

    # -- prepare (weak targets once per sample): each rank only its shard of the train
    # and validation items, which it then trains and validates on (fixed shards).
    prepared: list[_Prepared] = []
    val_items: list[_ValItem] = []
    failures: list[tuple[str, str]] = []
    my_idx = train_idx[d.rank :: d.world] + val_idx[d.rank :: d.world]
    tracker = ProgressTracker(len(my_idx), progress if d.main else None)
    image_cache: dict[str, Any] = {}
    for i in my_idx:
        if cancel is not None and cancel.cancelled:
            break
        s = samples[i]
        label = -1
        if aux_clusters is not None:
            label = int(clusters.predict(shape_features(s.recist))[0])
        try:
            prep, val = _prepare_one(s, pcfg, cfg.target, is_val[i], label, image_cache)
        except (RecistError, ValueError, OSError) as exc:
            failures.append((s.name or groups[i], str(exc)))
            tracker.step(f"preparing (skipped {s.name or groups[i]})")
            continue
        if prep is not None:
            prepared.append(prep)
        if val is not None:
            val_items.append(val)
        tracker.step(f"preparing {cfg.target} targets")
    shards = _gather((len(prepared), len(val_items), failures), d)
    failures = [f for _, _, fs in shards for f in fs]
    n_train, n_val = sum(s[0] for s in shards), sum(s[1] for s in shards)
    if min(s[0] for s in shards) == 0 and not (cancel is not None and cancel.cancelled):
        why = "; ".join(f"{n}: {r}" for n, r in failures[:3]) or f"fewer than {d.world} samples"
        raise ValueError(f"no usable training samples{' on some rank' if n_train else ''}: {why}")

    model.to(device)
    net: torch.nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[d.local_rank] if device.startswith("cuda") else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    dataset = _TrainSet(prepared, cfg, pcfg, aux_clusters)
    sampler: Any = None  # each rank shuffles its own shard
    gen = torch.Generator()
    gen.manual_seed(cfg.seed + d.rank)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=len(dataset) >= cfg.batch_size,
        generator=gen,
        persistent_workers=False,
    )
    n_batches = _all_min(len(loader), d, device)  # DDP ranks step in lockstep
    if cfg.max_batches_per_epoch:
        n_batches = min(n_batches, cfg.max_batches_per_epoch)
    total_steps = max(1, n_batches * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    use_amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[EpochLog] = []
    best: tuple[float, int] | None = None
    checkpoint: Path | None = None
    cancelled = bool(cancel is not None and cancel.cancelled)
    stopped_early = False
    bad_epochs = 0
    ell_gt = [(_dice_np(v.target, v.gt)) for v in val_items if v.gt is not None]
    n_gt = len(ell_gt)
    (target_gt,) = _all_means([(float(np.mean(ell_gt)) if ell_gt else None, n_gt)], d, device)
    log_doc: dict[str, Any] = {
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
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_log(out, log_doc)
    tracker = ProgressTracker(total_steps, progress if d.main else None)

    for epoch in range(1, cfg.epochs + 1):
        if cancelled:
            break
        t_epoch = time.perf_counter()
        net.train()
        dataset.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums = {"loss": 0.0, "seg": 0.0, "aux": 0.0, "acc": 0.0, "n": 0}
        for b, (x, t, label, _cur) in enumerate(loader):
            if b >= n_batches:
                break
            if x.shape[0] < 2:
                continue  # batch norm cannot train on a single crop
            if _all_any(bool(cancel is not None and cancel.cancelled), d, device):
                cancelled = True
                break
            x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
            label = label.to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                seg, aux = net(x)
            seg_loss = _seg_loss(seg, t)
            loss = seg_loss
            aux_loss = None
            if aux is not None and cfg.aux_weight > 0:
                aux_loss = F.cross_entropy(aux.float(), label)
                loss = loss + cfg.aux_weight * aux_loss
            elif aux is not None:
                # Keep the head in the graph (DDP needs every parameter used).
                loss = loss + 0.0 * aux.float().sum()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            n = x.shape[0]
            sums["n"] += n
            sums["loss"] += float(loss.detach()) * n
            sums["seg"] += float(seg_loss.detach()) * n
            if aux is not None:
                if aux_loss is not None:
                    sums["aux"] += float(aux_loss.detach()) * n
                sums["acc"] += float((aux.argmax(1) == label).float().sum())
            tracker.step(f"epoch {epoch}/{cfg.epochs} loss {float(loss.detach()):.3f}")
        if cancelled:
            break
        _all_sum(sums, d, device)  # the logged train losses cover every rank's shard
        # -- validation (each rank its shard; the means all-reduced), rank 0 decides
        val_loss = val_dice = val_gt = None
        if val_items:
            val_loss, val_dice, val_gt = _validate(model, val_items, device, cfg, use_amp)
        nv = len(val_items)
        val_loss, val_dice, val_gt = _all_means(
            [(val_loss, nv), (val_dice, nv), (val_gt, n_gt)], d, device)
        nb = max(sums["n"], 1)
        has_aux = mcfg.has_aux
        improved = False
        if d.main:
            score = val_dice if val_dice is not None else -sums["loss"] / nb
            if best is None or score > best[0] + 1e-6:
                best = (score, epoch)
                improved = True
                bad_epochs = 0
            else:
                bad_epochs += 1
        elapsed = time.perf_counter() - t_start
        entry = EpochLog(
            epoch=epoch,
            train_loss=sums["loss"] / nb,
            train_seg_loss=sums["seg"] / nb,
            train_aux_loss=(sums["aux"] / nb) if has_aux and cfg.aux_weight > 0 else None,
            train_aux_acc=(sums["acc"] / nb) if has_aux else None,
            val_loss=_finite(val_loss),
            val_dice=_finite(val_dice),
            val_gt_dice=_finite(val_gt),
            lr=float(opt.param_groups[0]["lr"]),
            epoch_time_s=time.perf_counter() - t_epoch,
            elapsed_s=elapsed,
            best=improved,
        )
        history.append(entry)
        if d.main:
            if improved:
                summary = {
                    "epoch": epoch,
                    "val_dice": entry.val_dice,
                    "val_gt_dice": entry.val_gt_dice,
                    "val_target_gt_dice": log_doc["val_target_gt_dice"],
                    "train_config": asdict(cfg),
                    "n_train": n_train,
                    "n_val": n_val,
                    "init_checkpoint": log_doc["init_checkpoint"],
                    **({"extra": extra} if extra else {}),
                }
                _remove_stale_temps(out)
                checkpoint = save_checkpoint(out, model, mcfg, clusters, summary, half=cfg.half_weights)
            log_doc["epochs"].append(asdict(entry))
            log_doc["best_epoch"] = best[1] if best else None
            _write_log(out, log_doc)
        if on_epoch is not None and d.main:
            on_epoch(entry)
        stop = d.main and cfg.patience > 0 and bad_epochs >= cfg.patience and n_val > 0
        if _all_any(stop, d, device):
            stopped_early = True
            break

    wall = time.perf_counter() - t_start
    if d.main:
        log_doc["status"] = "cancelled" if cancelled else ("early_stopped" if stopped_early else "finished")
        log_doc["wall_time_s"] = wall
        _write_log(out, log_doc)
    best_epoch = best[1] if best else None
    best_dice = None
    if best_epoch is not None:
        best_dice = history[best_epoch - 1].val_dice
    return TrainResult(
        out_dir=out,
        checkpoint=checkpoint if d.main else None,
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


@torch.no_grad()
def _validate(
    model: RecistSegNet, items: list[_ValItem], device: str, cfg: TrainConfig, use_amp: bool
) -> tuple[float, float, float | None]:
    """Mean loss, Dice vs the weak target and Dice vs ground truth (where present)."""
    model.eval()
    losses, dices, gts = [], [], []
    bs = max(cfg.batch_size, 16)
    for i in range(0, len(items), bs):
        chunk = items[i : i + bs]
        x = torch.from_numpy(np.stack([v.x for v in chunk])).to(device)
        t = torch.from_numpy(np.stack([v.target for v in chunk])[:, None].astype(np.float32)).to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            seg, _ = model(x)
        for j in range(len(chunk)):
            losses.append(float(_seg_loss(seg[j : j + 1], t[j : j + 1])))
        pred = (torch.sigmoid(seg.float())[:, 0] > model.config.threshold).cpu().numpy()
        for j, v in enumerate(chunk):
            dices.append(_dice_np(pred[j], v.target))
            if v.gt is not None:
                gts.append(_dice_np(pred[j], v.gt))
    model.train()
    return float(np.mean(losses)), float(np.mean(dices)), (float(np.mean(gts)) if gts else None)
