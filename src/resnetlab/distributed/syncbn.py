"""Batch norm over all processes (--sync-bn) on any device: torch's SyncBatchNorm runs on GPUs only."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every process's loss reaches
    every process's inputs through the shared statistics."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all processes), on any
    device: torch's SyncBatchNorm runs on GPUs only, this one serves the CPU (Gloo). Same
    parameters, buffers and state-dict keys as BatchNorm2d, so saved weights load into the plain model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        xf = (
            x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        )  # statistics in fp32 under autocast
        local_count = xf.new_tensor([x.numel() / x.shape[1]])
        sums = _SumOverProcesses.apply(torch.cat([xf.sum(dims), local_count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centered = xf - mean.view(shape)
        var = (
            _SumOverProcesses.apply(centered.square().sum(dims)) / n
        )  # two passes: no E[x^2]-E[x]^2 cancellation
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(
                    (var * n / (n - 1).clamp(min=1)).to(self.running_var.dtype), factor
                )
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """--sync-bn: batch norms normalize with the global batch's statistics. torch's SyncBatchNorm
    on CUDA; GlobalBatchNorm2d elsewhere. The new layers share the old ones' parameters and buffers."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if type(model) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(
            model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats
        )
        if model.affine:
            new.weight, new.bias = model.weight, model.bias
        new.running_mean, new.running_var = model.running_mean, model.running_var
        new.num_batches_tracked = model.num_batches_tracked
        new.train(model.training)
        return new
    for name, child in model.named_children():
        model.add_module(name, convert_sync_batchnorm(child, device))
    return model
