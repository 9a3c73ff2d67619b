"""Residual blocks: the textbook `Residual`, torchvision's `BasicBlock` and `Bottleneck`, the
pre-activation block and the plain (shortcut-free) block for degradation studies.

Every block except `Residual` shares one interface, so one builder (`ResNet._make_layer`,
`CifarResNet`) makes a stage of any of them:

- `__init__(inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, norm_layer=None)`;
  the block outputs `planes * expansion` channels;
- `has_shortcut`: False for the plain block, whose stages get no `downsample` module;
- `pre_activation`: True when the block ends un-normalized, so the net needs a final BN-ReLU;
- `projection(inplanes, outplanes, stride, norm_layer)`: the 1x1 projection shortcut ("option B");
- `zero_init_last()`: zero the last layer of the residual branch, so the block starts as identity.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.nn import functional as F

from resnetlab.errors import UsageError

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a norm follows it)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class Residual(nn.Module):
    """The textbook residual block (d2l.ai, section 8.6), parameter for parameter.

    Two 3x3 convolutions (with bias) each followed by batch norm, a ReLU between them, an optional
    1x1 convolution on the shortcut when the channels or the resolution change, then add and ReLU.
    `input_channels=None` infers the input channels on the first call, like the Gluon version.
    """

    def __init__(
        self,
        input_channels: int | None,
        num_channels: int,
        use_1x1conv: bool = False,
        strides: int = 1,
    ):
        super().__init__()

        def conv(out_channels, **kw):
            if input_channels is None:
                return nn.LazyConv2d(out_channels, **kw)
            return nn.Conv2d(input_channels, out_channels, **kw)

        self.conv1 = conv(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = conv(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X: Tensor) -> Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al. 2015, fig. 2); torchvision's layout."""

    expansion = 1
    has_shortcut = True
    pre_activation = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise UsageError("BasicBlock only supports groups=1 and base_width=64")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def residual_branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual_branch(x)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    @staticmethod
    def projection(inplanes: int, outplanes: int, stride: int, norm_layer: NormLayer) -> nn.Module:
        return nn.Sequential(conv1x1(inplanes, outplanes, stride), norm_layer(outplanes))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class PlainBlock(BasicBlock):
    """BasicBlock's convolutions without the shortcut: the "plain" nets of He et al. 2015, sec. 4.1."""

    has_shortcut = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ):
        if downsample is not None:
            raise UsageError("PlainBlock has no shortcut, so it takes no downsample module")
        super().__init__(inplanes, planes, stride, None, groups, base_width, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual_branch(x))

    def zero_init_last(self) -> None:
        raise UsageError("zero_init_residual needs a shortcut: a plain block would output zeros")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4, with a shortcut.

    The stride sits on the 3x3 convolution ("ResNet V1.5", as torchvision: about +0.5% top-1 over
    the paper's stride on the first 1x1). `groups` and `base_width` make ResNeXt (32x4d) and wide
    ResNets (base_width=128).
    """

    expansion = 4
    has_shortcut = True
    pre_activation = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    projection = BasicBlock.projection

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings", fig. 4e): BN-ReLU-conv
    twice, and nothing after the addition, so the shortcut path stays a pure identity.

    A net of these blocks needs a final BN-ReLU after the last stage (`ResNet` adds it).
    """

    expansion = 1
    has_shortcut = True
    pre_activation = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm_layer: NormLayer | None = None,
    ):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise UsageError("PreActBlock only supports groups=1 and base_width=64")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        # A projection shortcut sees the pre-activated input, an identity the raw one (fig. 1b).
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut

    @staticmethod
    def projection(inplanes: int, outplanes: int, stride: int, norm_layer: NormLayer) -> nn.Module:
        # No norm: the next block normalizes the sum before using it.
        return nn.Sequential(conv1x1(inplanes, outplanes, stride))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)
