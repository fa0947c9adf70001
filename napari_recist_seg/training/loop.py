"""The training loop: :func:`train` over named steps (split, prepare, :func:`fit_epoch`,
:func:`validate`, :func:`keep_best`), in the manner of micro-sam's ``SamTrainer``
(``_train_epoch_impl`` / ``_validate_impl``)."""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_recist_seg.clusters import ClusterModel, recist_features
from napari_recist_seg.model import (
    ModelConfig,
    RecistSegNet,
    build_model,
    load_checkpoint,
    resolve_device,
)
from napari_recist_seg.preprocess import PreprocessConfig
from napari_recist_seg.progress import CancelToken, ProgressCallback, ProgressTracker
from napari_recist_seg.recist import Recist
from napari_recist_seg.training.checkpoint import (
    _Best,
    _finish,
    _finite,
    _log_doc,
    _mark_cancelled,
    _write_log,
    keep_best,
)
from napari_recist_seg.training.config import EpochLog, TrainConfig, TrainResult, TrainSample
from napari_recist_seg.training.distributed import (
    _all_any,
    _all_means,
    _all_min,
    _all_sum,
    _Dist,
    _setup_dist,
)
from napari_recist_seg.training.losses import _dice_np, _seg_loss
from napari_recist_seg.training.samples import (
    _Prepared,
    _TrainSet,
    _ValItem,
    prepare_samples,
    split_groups,
)


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



@dataclass
class _Run:
    """What the epochs of one run share: the network, its optimiser and the data."""

    model: RecistSegNet
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    dataset: _TrainSet
    sampler: Any
    loader: Any
    n_batches: int
    total_steps: int
    use_amp: bool
    device: str


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
    """One rank's run behind :func:`train`: split by image, prepare the targets once,
    then per epoch :func:`fit_epoch`, :func:`validate` (rank 0) and :func:`keep_best`."""
    if not samples:
        raise ValueError("no training samples")
    model, mcfg, init_clusters, cfg = _load_init(cfg, init_checkpoint)
    groups, is_val, train_idx, val_idx = _split(cfg, samples)
    clusters = _resolve_clusters(cfg, [samples[i].recist for i in train_idx], init_clusters)
    if init_checkpoint is None:
        model, mcfg = _new_model(cfg, clusters, d)
    pcfg = mcfg.preprocess
    # Cluster labels are training targets only for the cluster head (A1+L).
    aux_clusters = clusters if mcfg.has_aux else None
    prepared, val_items, failures, n_train, n_val = prepare_samples(
        samples, groups, is_val, train_idx, val_idx, cfg, pcfg, clusters, aux_clusters,
        d, progress, cancel)
    run = _setup_run(model, prepared, cfg, pcfg, aux_clusters, device, d)
    n_gt = sum(v.gt is not None for v in val_items)
    log_doc = _log_doc(cfg, mcfg, init_checkpoint, prepared, val_items, clusters, failures,
                       d, device, extra, n_train, n_val)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_log(out, log_doc)
    tracker = ProgressTracker(run.total_steps, progress if d.main else None)
    history: list[EpochLog] = []
    best = _Best(out, cfg, mcfg, clusters, extra, log_doc)
    cancelled = bool(cancel is not None and cancel.cancelled)
    stopped_early = False
    for epoch in range(1, cfg.epochs + 1):
        if cancelled:
            break
        t_epoch = time.perf_counter()
        sums, cancelled = fit_epoch(run, epoch, cfg, d, cancel, tracker)
        if cancelled:
            break
        _all_sum(sums, d, device)  # the logged train losses cover every rank's shard
        # -- validation (each rank its shard; the means all-reduced), rank 0 decides
        val_loss = val_dice = val_gt = None
        if val_items:
            val_loss, val_dice, val_gt = validate(model, val_items, device, cfg, run.use_amp)
        nv = len(val_items)
        val_loss, val_dice, val_gt = _all_means(
            [(val_loss, nv), (val_dice, nv), (val_gt, n_gt)], d, device)
        nb = max(sums["n"], 1)
        improved = False
        if d.main:
            improved = best.update(val_dice if val_dice is not None else -sums["loss"] / nb, epoch)
        entry = _epoch_log(epoch, sums, (val_loss, val_dice, val_gt), mcfg.has_aux, cfg, run,
                           t_epoch, t_start, improved)
        history.append(entry)
        if d.main:
            keep_best(best, model, entry, improved)
        if on_epoch is not None and d.main:
            on_epoch(entry)
        stop = d.main and cfg.patience > 0 and best.bad_epochs >= cfg.patience and n_val > 0
        if _all_any(stop, d, device):
            stopped_early = True
            break
    return _finish(out, d, t_start, log_doc, best, history, cancelled, stopped_early,
                   n_train, n_val, clusters, failures)


def _load_init(
    cfg: TrainConfig, init_checkpoint: str | os.PathLike[str] | None
) -> tuple[Any, Any, ClusterModel | None, TrainConfig]:
    """Fine-tuning: the checkpoint's model, config and clusters (its mode wins)."""
    if init_checkpoint is None:
        return None, None, None, cfg
    model, mcfg, init_clusters = load_checkpoint(init_checkpoint, device="cpu")
    if mcfg.mode != cfg.mode:
        warnings.warn(
            f"fine-tuning keeps the checkpoint's mode {mcfg.mode!r} (asked {cfg.mode!r})",
            stacklevel=4,
        )
        cfg = dataclasses.replace(cfg, mode=mcfg.mode)
    return model, mcfg, init_clusters, cfg


def _split(
    cfg: TrainConfig, samples: list[TrainSample]
) -> tuple[list[str], list[bool], list[int], list[int]]:
    """``(groups, is_val, train_idx, val_idx)``: split by image, or by explicit ``split``."""
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
    return groups, is_val, train_idx, val_idx


def _new_model(
    cfg: TrainConfig, clusters: ClusterModel | None, d: _Dist
) -> tuple[RecistSegNet, ModelConfig]:
    """A new network for ``cfg`` (seeded; only rank 0 shows the builder's warnings)."""
    mcfg = cfg.model_config(clusters.k if clusters is not None else 0)
    with warnings.catch_warnings():
        if not d.main:
            warnings.simplefilter("ignore")
        torch.manual_seed(cfg.seed)
        model = build_model(mcfg)
    return model, mcfg


def _setup_run(
    model: RecistSegNet,
    prepared: list[_Prepared],
    cfg: TrainConfig,
    pcfg: PreprocessConfig,
    aux_clusters: ClusterModel | None,
    device: str,
    d: _Dist,
) -> _Run:
    """The network on its device (DDP-wrapped under torchrun), optimiser, schedule, loader."""
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
    return _Run(model, net, opt, sched, scaler, dataset, sampler, loader, n_batches,
                total_steps, use_amp, device)


def fit_epoch(
    run: _Run,
    epoch: int,
    cfg: TrainConfig,
    d: _Dist,
    cancel: CancelToken | None,
    tracker: ProgressTracker,
) -> tuple[dict[str, float], bool]:
    """One pass over this rank's shard: ``(loss sums, cancelled)``.

    The sums (``loss``, ``seg``, ``aux``, ``acc`` weighted by batch size, and ``n``)
    are this rank's; the cancel check is all-reduced, so every rank stops together.
    """
    net, opt, sched, scaler, use_amp = run.net, run.opt, run.sched, run.scaler, run.use_amp
    device = run.device
    net.train()
    run.dataset.epoch = epoch
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    sums = {"loss": 0.0, "seg": 0.0, "aux": 0.0, "acc": 0.0, "n": 0}
    for b, (x, t, label, _cur) in enumerate(run.loader):
        if b >= run.n_batches:
            break
        if x.shape[0] < 2:
            continue  # batch norm cannot train on a single crop
        if _all_any(bool(cancel is not None and cancel.cancelled), d, device):
            return sums, True
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
    return sums, False


def _epoch_log(
    epoch: int,
    sums: dict[str, float],
    val: tuple[float | None, float | None, float | None],
    has_aux: bool,
    cfg: TrainConfig,
    run: _Run,
    t_epoch: float,
    t_start: float,
    improved: bool,
) -> EpochLog:
    """The epoch's line of the log (train means over every rank's shard)."""
    val_loss, val_dice, val_gt = val
    nb = max(sums["n"], 1)
    elapsed = time.perf_counter() - t_start
    return EpochLog(
        epoch=epoch,
        train_loss=sums["loss"] / nb,
        train_seg_loss=sums["seg"] / nb,
        train_aux_loss=(sums["aux"] / nb) if has_aux and cfg.aux_weight > 0 else None,
        train_aux_acc=(sums["acc"] / nb) if has_aux else None,
        val_loss=_finite(val_loss),
        val_dice=_finite(val_dice),
        val_gt_dice=_finite(val_gt),
        lr=float(run.opt.param_groups[0]["lr"]),
        epoch_time_s=time.perf_counter() - t_epoch,
        elapsed_s=elapsed,
        best=improved,
    )


@torch.no_grad()
def validate(
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
