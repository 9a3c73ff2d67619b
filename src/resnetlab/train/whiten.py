"""The whitened first layer (airbench's `init_whiten_conv`): the first convolution's filters set
from the training images' patches, and frozen.

The filters are the eigenvectors of the patches' second-moment matrix, each divided by the square
root of its eigenvalue (plus a small epsilon), largest first, each one followed by its negation
(so that a ReLU after it keeps both signs): the layer maps a patch onto its principal components,
scaled to equal variance. With C input channels and a k x k kernel a patch has D = C*k*k values,
which give 2*D filters: a layer of fewer filters takes the leading ones, one of more keeps its own
initialization for the rest (random features). The whole weight is frozen (requires_grad False):
no optimizer, weight decay or DDP touches it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import UsageError

WHITEN_IMAGES = 5000  # airbench uses 5,000 training images
WHITEN_EPS = 5e-4  # airbench's epsilon on the eigenvalues


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first 2-d convolution (its stem)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise UsageError(
            f"--init whiten sets a model's first convolution; {type(model).__name__} has none"
        )
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise UsageError(
            "--init whiten needs an ordinary first convolution (no groups, no dilation)"
        )
    return conv


def whitening_filters(
    images, kernel_size: tuple[int, int], eps: float = WHITEN_EPS
) -> torch.Tensor:
    """[2*D, C, kh, kw]: the whitening filters of `images` (float [N, C, H, W] batches, as the model
    sees them), each eigenvector then its negation, the largest eigenvalue first. The second moments
    are summed batch by batch in float64: all patches at once would take hundreds of MB."""
    moments, count, c = None, 0, None
    for batch in images:
        c = batch.shape[1]
        patches = F.unfold(batch.double(), kernel_size)  # [N, D, positions]
        x = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        moments = x.T @ x if moments is None else moments + x.T @ x
        count += len(x)
    eigenvalues, eigenvectors = torch.linalg.eigh(moments / count)  # ascending
    scaled = (eigenvectors / (eigenvalues.clamp(min=0) + eps).sqrt()).T.flip(
        0
    )  # rows, largest first
    return torch.stack([scaled, -scaled], dim=1).reshape(-1, c, *kernel_size).float()


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images) -> None:
    """Set the first convolution's filters to the whitening filters of `images` (an iterable of
    float [N, C, H, W] batches), as many as there are, and freeze the layer's weight."""
    conv = first_conv(model)
    filters = whitening_filters(images, conv.kernel_size)[: conv.out_channels]
    conv.weight[: len(filters)] = filters.to(conv.weight)
    if conv.bias is not None:
        conv.bias[: len(filters)] = 0
    conv.weight.requires_grad_(False)
