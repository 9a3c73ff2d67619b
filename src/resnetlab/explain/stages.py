"""A net's residual stages, found generically, and their activations (`feature_maps`).

A stage is where the resolution and the width change together: `layer1`..`layerN` in the
torchvision-style and CIFAR-style nets (their `stage_names`), and in an `nn.Sequential` such as the
textbook's ResNet-18 (b2..b5, children "1".."4") any `nn.Sequential` whose children are all
blocks, i.e. modules defined outside torch.nn (the notebook's own `Residual` class counts).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from resnetlab.errors import UsageError


def _is_block(module: nn.Module) -> bool:
    """A module of the net's own making (a residual block), not a torch.nn layer."""
    return not type(module).__module__.startswith("torch.nn")


def residual_stages(model: nn.Module) -> list[str]:
    """The names (as `model.get_submodule` takes them) of the net's residual stages, in order."""
    names = getattr(model, "stage_names", None)
    if names:
        return list(names)
    stages: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(s + ".") for s in stages):
            continue  # the net itself, or inside a stage already found
        children = list(module.children())
        if isinstance(module, nn.Sequential) and children and all(map(_is_block, children)):
            stages.append(name)
    return stages


def resolve_layer(model: nn.Module, layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
    """(name, module) of `layer`: a module name such as "layer4" or "layer3.1.conv2" (any name of
    `model.named_modules()`), a module of the net, or None for the last residual stage."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise UsageError("the layer given is not a module of this net; pass one of its modules")
    stages = residual_stages(model)
    if layer is None:
        if not stages:
            raise UsageError(
                f"{type(model).__name__} has no residual stages to default to; "
                "pass layer= the name of a convolutional layer"
            )
        layer = stages[-1]
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or not layer or layer not in modules:
        raise UsageError(
            f"no layer {layer!r} in {type(model).__name__}; its residual stages are "
            f"{', '.join(stages) or 'none'} (any module name works, e.g. {stages[-1] + '.0' if stages else '...'})"
        )
    return layer, modules[layer]


def _batch(model: nn.Module, image: Tensor) -> Tensor:
    if not torch.is_tensor(image) or image.dim() not in (3, 4):
        raise UsageError(
            "image must be a float tensor [C, H, W] or a batch [N, C, H, W], preprocessed as the "
            "net was trained (resnetlab.inference.images.preprocess does it for image files)"
        )
    if not image.is_floating_point():
        raise UsageError(
            f"image is {image.dtype}; convert it as in training first (e.g. image.float() / 255)"
        )
    param = next(model.parameters(), None)
    batch = image.unsqueeze(0) if image.dim() == 3 else image
    return batch.to(param.device) if param is not None else batch


def feature_maps(
    model: nn.Module, image: Tensor, stages: list[str] | None = None
) -> OrderedDict[str, Tensor]:
    """Each residual stage's output for `image` ([C, H, W], or a batch [N, C, H, W]), in eval mode
    and without gradients: stage name -> activation (without the batch dimension for one image),
    exactly what a forward hook on that stage sees (a copy, on the CPU)."""
    names = residual_stages(model) if stages is None else list(stages)
    modules = [resolve_layer(model, name)[1] for name in names]
    batch = _batch(model, image)
    seen: OrderedDict[str, Tensor] = OrderedDict()

    def hook_for(name):
        def hook(module, inputs, output):
            seen[name] = output.detach().clone().cpu()

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in zip(names, modules)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = OrderedDict((n, seen[n]) for n in names)
    if image.dim() == 3:
        out = OrderedDict((n, t[0]) for n, t in out.items())
    return out
