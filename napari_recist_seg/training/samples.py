"""Sample preparation (weak targets, context regions, validation inputs) and augmentation."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from napari_recist_seg import targets
from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.data import masks
from napari_recist_seg.data.images import image_plane, read_image
from napari_recist_seg.preprocess import (
    CropBox,
    PreprocessConfig,
    crop_box,
    extract_crop,
    make_input,
    normalize_intensity,
    render_recist,
)
from napari_recist_seg.progress import CancelToken, ProgressCallback, ProgressTracker
from napari_recist_seg.recist import Recist, RecistError, shape_features
from napari_recist_seg.training.config import TrainConfig, TrainSample
from napari_recist_seg.training.distributed import _Dist, _gather

# The stored context around a lesion, relative to its crop side: room for scale,
# rotation and jitter augmentation.
CONTEXT_FACTOR = 1.75
# The context is kept at about this many pixels per network input pixel (memory).
CONTEXT_OVERSAMPLE = 1.25


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
        mask = masks.read_mask(mask)
    m = np.asarray(mask)
    if m.ndim == 3 and recist.slice_index is not None and m.shape[1:] == shape:
        m = m[recist.slice_index]
    if m.shape != shape:
        raise ValueError(f"{what} has shape {m.shape} but the image plane is {shape}")
    return m.astype(bool)


def _weak_target(plane: np.ndarray, recist: Recist, target: str) -> np.ndarray:
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
    weak = _mask_plane(sample.weak_mask, recist, shape, "weak target mask") if curated is None else None
    if curated is not None:
        target_full = curated
    else:
        target_full = weak if weak is not None else _weak_target(plane, recist, target_kind)
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
def shift_augment(img: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """Acquisition-shift augmentation of a raw crop (same shape and dtype).

    Each of three changes is applied with probability ``prob``: down-scaling to 40-100 %
    and back (the blur of a full-resolution image from another camera reduced to the
    network input), JPEG re-encoding at quality 50-95 (uint8 only: other compression),
    and a per-channel gain of +-10 % (RGB only: other colour balance).

    >>> img = np.full((32, 32, 3), 100, np.uint8)
    >>> shift_augment(img, np.random.default_rng(0), 1.0).shape
    (32, 32, 3)
    """
    # cv2.resize has no int32/bool kernels: such crops are resampled as float32.
    out = img if img.dtype in (np.uint8, np.uint16, np.int16, np.float32) else img.astype(np.float32)
    h, w = img.shape[:2]
    if rng.random() < prob:
        f = rng.uniform(0.4, 1.0)
        small = cv2.resize(out, (max(4, int(round(w * f))), max(4, int(round(h * f)))),
                           interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if out.dtype == np.uint8 and rng.random() < prob:
        q = int(rng.integers(50, 96))
        # cv2 codes BGR; the channel order does not matter for a round trip.
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).reshape(out.shape)
    if out.ndim == 3 and out.shape[-1] == 3 and rng.random() < prob:
        gain = 1.0 + rng.uniform(-0.1, 0.1, size=3)
        hi = 255.0 if out.dtype == np.uint8 else np.inf
        out = np.clip(out.astype(np.float32) * gain, 0, hi)
    return out.astype(img.dtype, copy=False)


def _colour_jitter(
    x: np.ndarray, rng: np.random.Generator, amount: float, pcfg: PreprocessConfig, *, grey: bool
) -> np.ndarray:
    """Contrast, brightness and (colour images only) per-channel gain jitter of a normalised input."""
    mean = np.asarray(pcfg.mean, np.float32)[:, None, None]
    std = np.asarray(pcfg.std, np.float32)[:, None, None]
    x01 = x * std + mean
    a = 1.0 + rng.uniform(-amount, amount)
    b = rng.uniform(-amount, amount)
    gain = 1.0 + rng.uniform(-amount, amount, size=(3, 1, 1)) / 2
    if x.ndim == 3 and grey:
        gain[:] = 1.0  # grey stays grey
    m = x01.mean()
    x01 = np.clip((x01 - m) * a + m + b, 0, 1) * gain
    return ((np.clip(x01, 0, 1) - mean) / std).astype(np.float32)


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
    if cfg.shift_aug > 0:  # (draws no random numbers when off: old runs reproduce)
        img = shift_augment(img, rng, cfg.shift_aug)
    x = normalize_intensity(img.astype(np.float32), p.dtype, pcfg)
    if cfg.colour_jitter > 0:
        x = _colour_jitter(x, rng, cfg.colour_jitter, pcfg, grey=p.context.ndim == 2)
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


def prepare_samples(
    samples: list[TrainSample],
    groups: list[str],
    is_val: list[bool],
    train_idx: list[int],
    val_idx: list[int],
    cfg: TrainConfig,
    pcfg: PreprocessConfig,
    clusters: ClusterModel | None,
    aux_clusters: ClusterModel | None,
    d: _Dist,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> tuple[list[_Prepared], list[_ValItem], list[tuple[str, str]], int, int]:
    """``(prepared, val_items, failures, n_train, n_val)``: this rank's shard of the
    samples, each cut out once with its target; the failures and counts of all ranks.

    A sample that cannot be used (bad RECIST, unreadable file, mask of the wrong
    shape) is a failure ``(name, reason)``, not an error; none usable is a ValueError.
    """
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
    return prepared, val_items, failures, n_train, n_val
