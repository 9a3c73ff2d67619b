"""`create_model`: a registered model (registry.py), with pretrained weights when asked
(pretrained.py). The registry itself is a leaf that knows nothing of weights files."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from resnetlab.models.pretrained import load_pretrained
from resnetlab.models.registry import build


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; `None` means the model's default classes / input channels.

    Extra keyword arguments go to the builder (`width=32` for the CIFAR nets, `layers=[5, 5, 5]`,
    `zero_init_residual=True` for the ImageNet nets, ...). `weights`: a checkpoint file to load,
    e.g. torchvision's or timm's resnet50 (.pth, .pt or .safetensors); a classifier of another
    size is re-initialised and the first convolution adapted to `in_chans`, each with a
    `PretrainedNote` warning (models/pretrained.py).
    """
    model = build(name, num_classes, in_chans, **kwargs)
    if weights is not None:
        load_pretrained(model, weights, model_name=name)
    return model
