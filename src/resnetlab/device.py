"""Device policy: which device a run uses, and what pays on it (bf16 autocast, channels_last).

`bf16_pays` and `channels_last_pays` are the instruction-set policy: where bf16 is native (so worth
measuring) and what a run keeps when its timed probe measured nothing (resnetlab/probe.py and
train/probing.py choose by measurement: at 28 px on a Xeon with AMX fp32 NCHW was fastest).

One small module so the trainer, presets, bench and inference decide alike.
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


def bf16_pays(device: torch.device) -> bool:
    """bf16 autocast pays on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX): measured ~2x here."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    return False


def channels_last_pays(device: torch.device) -> bool:
    """channels_last memory: measured faster on the CPU (oneDNN) and on CUDA (cuDNN)."""
    return device.type in ("cpu", "cuda")


def capture_problem(
    device: torch.device, world_size: int, optimizer: str, compile: bool, one_shape: bool = True
) -> str | None:
    """Why training steps cannot be replayed from CUDA graphs here, or None when they can (and then
    they pay: on an H200 a captured resnet18_d2l step at batch 256 ran 45k ex/s in bf16 against
    22k eager). They need one process on CUDA (DDP's communication hooks are not captured here),
    SGD (no captured update for AdamW yet), no torch.compile (which has its own) and batches of one
    shape (`one_shape=False`: progressive resizing changes it each epoch)."""
    if not one_shape:
        return (
            "--capture replays one batch shape and --progressive-resize changes it each epoch; "
            "add --progressive-resize 0 or drop --capture"
        )
    if not (device.type == "cuda" and world_size == 1 and optimizer == "sgd" and not compile):
        return "--capture needs one process on a CUDA device, SGD and no --compile; drop --capture"
    return None


def resolve_capture(
    asked: bool | None,
    device: torch.device,
    world_size: int,
    optimizer: str,
    compile: bool,
    one_shape: bool = True,
) -> bool:
    """--capture as given, or where it applies when not given (`asked` None); given where it
    cannot apply, a UsageError says why."""
    problem = capture_problem(device, world_size, optimizer, compile, one_shape)
    if asked and problem:
        raise UsageError(problem)
    return problem is None if asked is None else asked


def prepare_device(device: torch.device) -> None:
    """Process-wide settings for training on `device`."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # Batches keep one shape (the last aside), so cuDNN may time its algorithms once and keep
        # the fastest, as torchvision's reference scripts and airbench do.
        torch.backends.cudnn.benchmark = True
