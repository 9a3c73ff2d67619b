"""CIFAR-style ResNets of He et al. 2015, section 4.2: a 3x3 stem without pooling, three stages
of `width`, 2*width, 4*width channels (16/32/64 in the paper) on 32x32, 16x16 and 8x8 maps, and
parameter-free "option A" shortcuts. Depth 6n+2 means n blocks per stage: resnet20 is n=3.

`CifarResNet` is `ResNet` with another stem and another shortcut; the stages, head and key names
are the same builder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torch.nn import functional as F

from resnetlab.errors import UsageError
from resnetlab.models.blocks import BasicBlock, PlainBlock, conv3x3
from resnetlab.models.registry import register_model
from resnetlab.models.resnet import ResNet

HE2015_CIFAR = "He et al. 2015, sec. 4.2 CIFAR-10 (arXiv:1512.03385)"
CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)  # 8 and 14: the shallow end of the 6n+2 family


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by the stride and append zero channels; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise UsageError(
                f"a zero-padding shortcut cannot reduce {in_channels} channels to {out_channels}"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        # x[..., ::2, ::2] keeps ceil(H/2) rows, the same as the stride-2 3x3 conv beside it.
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class CifarResNet(ResNet):
    """`CifarResNet(BasicBlock, [3, 3, 3])` is ResNet-20; `PlainBlock` gives its plain twin.

    `patch_stem=k` (k > 1) replaces the 3x3 stem by a k x k convolution of stride k (a "patchify"
    stem, as ConvNeXt's): the stages then work at 1/k of the input's side. Nothing of the image is
    thrown away (each k x k patch becomes one position's channels), and at width 2w with k = 2 the
    convolutions cost what width w costs on the whole image, on fewer, wider maps, which the CPU's
    kernels run faster; on Fashion-MNIST it trained 10 % faster than width 16 with the 3x3 stem
    but 0.3-0.8 points less accurate (BENCHMARKS.md, "Training presets")."""

    def __init__(
        self,
        block: type[nn.Module],
        layers: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        zero_init_residual: bool = False,
        patch_stem: int = 1,
    ):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise UsageError(f"width must be a positive integer, got {width!r}")
        if isinstance(patch_stem, bool) or not isinstance(patch_stem, int) or patch_stem < 1:
            raise UsageError(
                f"patch_stem must be a positive integer (1: the 3x3 stem), got {patch_stem!r}"
            )
        self.patch_stem = patch_stem  # read by _make_stem, which ResNet.__init__ calls
        widths = [width * 2**i for i in range(len(layers))]
        super().__init__(
            block,
            layers,
            num_classes=num_classes,
            in_chans=in_chans,
            zero_init_residual=zero_init_residual,
            widths=widths,
        )

    def _make_stem(self, in_chans: int, width: int) -> None:
        k = self.patch_stem
        self.conv1 = (
            conv3x3(in_chans, width)
            if k == 1
            else nn.Conv2d(in_chans, width, k, stride=k, bias=False)
        )
        self.bn1 = self._norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()  # no pooling: 32x32 inputs stay 32x32 in the first stage

    def _make_shortcut(
        self, block: type[nn.Module], inplanes: int, outplanes: int, stride: int
    ) -> nn.Module:
        return ZeroPadShortcut(inplanes, outplanes, stride)


for _depth in CIFAR_DEPTHS:
    _n = (_depth - 2) // 6
    for _prefix, _block in (("resnet", BasicBlock), ("plain", PlainBlock)):
        register_model(
            f"{_prefix}{_depth}",
            partial(CifarResNet, block=_block, layers=[_n] * 3),
            paper=HE2015_CIFAR,
            default_input_size=(3, 32, 32),
            default_num_classes=10,
        )
