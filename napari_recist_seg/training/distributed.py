"""Distributed training under ``torchrun``: the process group and the all-reduce helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch


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
