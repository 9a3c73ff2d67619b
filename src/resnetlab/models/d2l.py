"""The textbook's ResNet-18 (d2l.ai, section 8.6) exactly: an `nn.Sequential` of the notebook's
eight children b1..b5, AdaptiveAvgPool2d, Flatten, Linear, so its state_dict keys, its shapes and
its parameter count (11,178,378 at 1 channel, 10 classes) are the notebook's.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from resnetlab.errors import UsageError
from resnetlab.models.blocks import Residual
from resnetlab.models.registry import register_model

D2L = "Zhang et al., Dive into Deep Learning, sec. 8.6 (d2l.ai)"


def resnet_block(
    input_channels: int, num_channels: int, num_residuals: int, first_block: bool = False
) -> list[Residual]:
    """One stage as the notebook writes it: the first block halves the resolution and projects
    the shortcut with a 1x1 convolution, except in the first stage (the max-pool halved it)."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


@register_model(paper=D2L, default_input_size=(1, 224, 224), default_num_classes=10)
def resnet18_d2l(
    num_classes: int = 10,
    in_chans: int = 1,
    layers: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
) -> nn.Sequential:
    """The notebook's net; `layers` and `widths` make its other depths ("ResNet-34": [3, 4, 6, 3])."""
    if len(layers) != len(widths) or not all(
        isinstance(n, int) and n > 0 for n in [*layers, *widths]
    ):
        raise UsageError(
            f"layers and widths must be equally long lists of positive integers, "
            f"got layers={list(layers)}, widths={list(widths)}"
        )
    b1 = nn.Sequential(
        nn.Conv2d(in_chans, widths[0], kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    inputs = [widths[0], *widths[:-1]]
    stages = [
        nn.Sequential(*resnet_block(c_in, c_out, n, first_block=(i == 0)))
        for i, (c_in, c_out, n) in enumerate(zip(inputs, widths, layers))
    ]
    return nn.Sequential(
        b1, *stages, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(widths[-1], num_classes)
    )
