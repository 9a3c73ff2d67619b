"""Collectives the training loop and evaluation use; each is a no-op for one process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from resnetlab.distributed.group import DistInfo


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_concat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every process's `t` (1-d, lengths may differ by process), concatenated in rank order: the
    per-example results of an evaluation split into contiguous blocks, in dataset order."""
    if not info.enabled:
        return t
    n = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    if max(sizes) == 0:  # every process has none (no unreadable image, the usual case)
        return t
    padded = t.new_zeros(max(sizes))
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def sum_and_any(sums: torch.Tensor, flag: bool, info: DistInfo) -> tuple[list[float], bool]:
    """The running sums of all processes and whether any process raised `flag`, in one all-reduce."""
    if not info.enabled:
        return sums.tolist(), flag
    packed = torch.cat([sums, sums.new_tensor([1.0 if flag else 0.0])])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    *totals, raised = packed.tolist()
    return totals, raised > 0


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() > 0


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Make the buffers (batch-norm running statistics) equal on every process: floats are averaged
    over the processes, counters taken from rank 0. Training never reads running statistics, so
    this changes only what evaluation and the saved weights see; with --sync-bn they are already equal."""
    if not info.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world_size)
        else:
            dist.broadcast(buf, src=0)
