"""DistributedDataParallel, as the trainer wraps a model for several processes."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from resnetlab.distributed.group import DistInfo, shared
from resnetlab.errors import UsageError


def wrap_ddp(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """DistributedDataParallel without its per-forward buffer broadcast: `average_buffers` syncs
    them once per epoch, and evaluation (where ranks may run different numbers of batches)
    then has no collective inside the forward pass."""
    if device.type not in ("cpu", "cuda"):
        raise shared(
            UsageError(
                f"multi-process training runs on CPUs (Gloo) or CUDA GPUs (NCCL), not on "
                f"{device.type}; pass --device cpu"
            )
        )
    if device.type == "cuda" and device.index != info.local_rank:
        raise shared(
            UsageError(
                f"--device {device} would put every process on one GPU; pass --device cuda "
                f"(each process takes the GPU numbered by its LOCAL_RANK)"
            )
        )
    kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    # torch 2.13 renamed broadcast_buffers; the new flag still syncs at construction, which we want
    kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = (
        False
    )
    return nn.parallel.DistributedDataParallel(model, **kwargs)
