"""Test-time augmentation: a model wrapper that averages the logits of a few views of each image.

One implementation for the trainer's final test figure (`--tta` of `resnetlab train`) and for
`resnetlab eval --tta`. The views follow airbench (Keller Jordan's CIFAR-10 speedruns):

- "flip": the image and its mirror image, averaged (2 forward passes);
- "flip-shift": that average (weight 1/2), and the same for the image moved one pixel up-left and
  one pixel down-right (weight 1/4 each), with the border reflected (6 forward passes).

A view only helps when training showed the net such images: flips need `--flip`, shifts a
random crop (`--crop-padding`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.inference import TTA_MODES


def _mirror_averaged(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x) + model(torch.flip(x, dims=[3]))) / 2


class TTAModel(nn.Module):
    """`model` evaluated on the views of `mode` (see the module docstring); logits out, like `model`."""

    def __init__(self, model: nn.Module, mode: str = "flip") -> None:
        super().__init__()
        if mode not in TTA_MODES[1:]:
            raise ValueError(
                f"unknown test-time augmentation {mode!r}; use {', '.join(TTA_MODES[1:])}"
            )
        self.model, self.mode = model, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = _mirror_averaged(self.model, x)
        if self.mode == "flip":
            return logits
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [
            padded[:, :, :h, :w],
            padded[:, :, 2:, 2:],
        ]  # the image moved down-right, then up-left
        if x.is_contiguous(
            memory_format=torch.channels_last
        ):  # keep the layout the model is fastest in
            shifted = [v.contiguous(memory_format=torch.channels_last) for v in shifted]
        return logits / 2 + sum(_mirror_averaged(self.model, v) for v in shifted) / 4


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """`model` itself for "none", else wrapped in TTAModel."""
    return model if mode == "none" else TTAModel(model, mode)
