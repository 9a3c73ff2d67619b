"""Grad-CAM (Selvaraju et al. 2017) through Captum's LayerGradCam: for each image, the chosen
layer's activations weighted by the mean gradient of the class score over each channel, summed
over channels, upsampled to the image, ReLU'd (only evidence *for* the class) and scaled to [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from resnetlab.errors import UsageError
from resnetlab.explain.stages import _batch, resolve_layer

CAPTUM_HINT = "pip install 'resnetlab[explain]'"


def require_captum():
    """captum.attr, or a UsageError naming the extra to install."""
    try:
        import captum.attr as attr
    except ImportError:
        raise UsageError(
            f"Grad-CAM needs Captum (PyTorch's interpretability library): {CAPTUM_HINT}"
        ) from None
    return attr


def _targets(target, logits: Tensor) -> Tensor:
    n, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target if not isinstance(target, Sequence) else list(target)).flatten()
    if t.is_floating_point() or t.numel() not in (1, n):
        raise UsageError(f"target must be a class index or one per image ({n}), got {target!r}")
    if int(t.min()) < 0 or int(t.max()) >= classes:
        raise UsageError(f"target {target!r} is out of range: the net has {classes} classes")
    return t.expand(n).to(logits.device) if t.numel() == 1 else t.to(logits.device)


def grad_cam(
    model: nn.Module,
    images: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    layer: str | nn.Module | None = None,
) -> Tensor:
    """Grad-CAM maps [N, H, W] (float, on the CPU, each in [0, 1]; all zeros where nothing in the
    layer speaks for the class) for `images` [N, C, H, W] (or one [C, H, W]: a map [H, W]).

    target: None for each image's predicted class, a class index, or one index per image.
    layer: a module name (`"layer4"`, `"layer3.1.conv2"`), a module, or None for the last
    residual stage. The net runs in eval mode; its mode is restored after."""
    attr = require_captum()
    name, module = resolve_layer(model, layer)
    batch = _batch(model, images)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            targets = _targets(target, model(batch))
        cam = attr.LayerGradCam(model, module).attribute(batch, target=targets)
        if cam.dim() != 4:
            raise UsageError(
                f"layer {name!r} gives no spatial map ({tuple(cam.shape)}); "
                "pick a convolutional layer or a residual stage"
            )
        cam = attr.LayerAttribution.interpolate(cam, tuple(batch.shape[-2:]), "bilinear")
    finally:
        model.train(was_training)
    cam = cam.detach()[:, 0].relu().float().cpu()
    peak = cam.flatten(1).amax(1).clamp_min(torch.finfo(cam.dtype).tiny)
    cam = cam / peak[:, None, None]
    return cam[0] if images.dim() == 3 else cam
