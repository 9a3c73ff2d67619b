"""Device policy: which device a run uses, what training sets up on it, and `autocast` (bf16), the
one precision piece both train/ and inference/ compute under.

When bf16 and channels_last pay, and the timed probe that decides where they are `auto`, live in
train/precision.py; when CUDA graphs apply, in train/graphs.py.
"""

from __future__ import annotations

import torch

from resnetlab.errors import UsageError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(
            "--device mps was asked for but MPS is not available; use --device cpu or auto"
        )
    return device


def device_type(name: str | None) -> str:
    """ "cuda", "cpu" or "mps" for a --device value; "auto" (or None) as `resolve_device` resolves it."""
    if name in (None, "auto"):
        return resolve_device("auto").type
    try:
        return torch.device(name).type
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None


def autocast(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast. `cache=False` inside a CUDA graph: cached casts of the weights would be
    captured stale (PyTorch's advice for graphs)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=cache
    )


def prepare_device(device: torch.device) -> None:
    """Process-wide settings for training on `device`."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # Batches keep one shape (the last aside), so cuDNN may time its algorithms once and keep
        # the fastest, as torchvision's reference scripts and airbench do.
        torch.backends.cudnn.benchmark = True
