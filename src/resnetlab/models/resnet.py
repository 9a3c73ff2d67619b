"""The ImageNet-style ResNet family from one builder, with torchvision's layout and key names
(a torchvision checkpoint loads with `strict=True`): `conv1`, `bn1`, `layer1` ... `layer4`
(`layerN.i.downsample.0` for projections), `fc`.

A variant is data: a block type, blocks per stage, and optionally group/width options:
`ResNet(Bottleneck, [3, 8, 36, 3])` is ResNet-152.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from resnetlab.errors import UsageError
from resnetlab.models.blocks import BasicBlock, Bottleneck, NormLayer, PlainBlock, PreActBlock
from resnetlab.models.registry import register_model

HE2015 = "He et al. 2015, Deep Residual Learning (arXiv:1512.03385)"
HE2015_PLAIN = "He et al. 2015, sec. 4.1 plain nets (arXiv:1512.03385)"
HE2016_PREACT = "He et al. 2016, Identity Mappings (arXiv:1603.05027)"
XIE2017_RESNEXT = "Xie et al. 2017, ResNeXt (arXiv:1611.05431)"
ZAGORUYKO2016_WIDE = "Zagoruyko & Komodakis 2016, Wide ResNets (arXiv:1605.07146)"


def init_resnet_weights(model: nn.Module) -> None:
    """He (fan-out) init for convolutions, unit-scale norms; linear layers keep PyTorch's default."""
    for m in model.modules():
        if getattr(m, "weight", None) is not None and m.weight.is_meta:
            continue  # a net built on the meta device (summaries) has no values to fill
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_layers(layers: Sequence[int], widths: Sequence[int]) -> None:
    ok = len(layers) > 0 and all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in [*layers, *widths]
    )
    if not ok:
        raise UsageError(
            f"layers and widths must be non-empty lists of positive integers, "
            f"got layers={list(layers)}, widths={list(widths)}"
        )
    if len(layers) != len(widths):
        raise UsageError(
            f"need one width per stage: {len(layers)} stages in layers={list(layers)}, "
            f"{len(widths)} widths in widths={list(widths)}"
        )


class ResNet(nn.Module):
    """Stem, stages of residual blocks, global average pool, linear classifier.

    block: BasicBlock, Bottleneck, PreActBlock or PlainBlock; layers: blocks per stage;
    widths: each stage's `planes` (default 64, 128, 256, ... one per stage); the first stage keeps
    the resolution, every later one halves it. groups / width_per_group: ResNeXt and wide nets.
    zero_init_residual: start every block as identity, by zeroing the last norm of its residual
    branch (Goyal et al. 2017; +0.2-0.3% top-1 per torchvision).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        widths: Sequence[int] | None = None,
        norm_layer: NormLayer | None = None,
    ):
        super().__init__()
        widths = list(widths) if widths is not None else [64 * 2**i for i in range(len(layers))]
        _check_layers(layers, widths)
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = widths[0]
        self._make_stem(in_chans, widths[0])
        self.stage_names = []
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            name = f"layer{i + 1}"
            setattr(self, name, self._make_layer(block, planes, blocks, stride=1 if i == 0 else 2))
            self.stage_names.append(name)
        # Pre-activation blocks leave the last sum un-normalized (He et al. 2016, fig. 1b).
        self.final_norm = self._norm_layer(self.inplanes) if block.pre_activation else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

        init_resnet_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, block):
                    m.zero_init_last()

    def _make_stem(self, in_chans: int, width: int) -> None:
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _make_shortcut(
        self, block: type[nn.Module], inplanes: int, outplanes: int, stride: int
    ) -> nn.Module:
        return block.projection(inplanes, outplanes, stride, self._norm_layer)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        outplanes = planes * block.expansion
        downsample = None
        if block.has_shortcut and (stride != 1 or self.inplanes != outplanes):
            downsample = self._make_shortcut(block, self.inplanes, outplanes, stride)
        options = dict(groups=self.groups, base_width=self.base_width, norm_layer=self._norm_layer)
        stage = [block(self.inplanes, planes, stride, downsample, **options)]
        self.inplanes = outplanes
        stage += [block(self.inplanes, planes, **options) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        if self.final_norm is not None:
            x = self.relu(self.final_norm(x))
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# name: (block, blocks per stage, extra ResNet arguments, paper)
_IMAGENET_VARIANTS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}, HE2015),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}, HE2015),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}, HE2015),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}, HE2015),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}, HE2015),
    "resnext50_32x4d": (
        Bottleneck,
        [3, 4, 6, 3],
        dict(groups=32, width_per_group=4),
        XIE2017_RESNEXT,
    ),
    "resnext101_32x8d": (
        Bottleneck,
        [3, 4, 23, 3],
        dict(groups=32, width_per_group=8),
        XIE2017_RESNEXT,
    ),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], dict(width_per_group=128), ZAGORUYKO2016_WIDE),
    "wide_resnet101_2": (Bottleneck, [3, 4, 23, 3], dict(width_per_group=128), ZAGORUYKO2016_WIDE),
    "plain18": (PlainBlock, [2, 2, 2, 2], {}, HE2015_PLAIN),
    "plain34": (PlainBlock, [3, 4, 6, 3], {}, HE2015_PLAIN),
    "preact_resnet18": (PreActBlock, [2, 2, 2, 2], {}, HE2016_PREACT),
    "preact_resnet34": (PreActBlock, [3, 4, 6, 3], {}, HE2016_PREACT),
}

for _name, (_block, _layers, _extra, _paper) in _IMAGENET_VARIANTS.items():
    register_model(
        _name,
        partial(ResNet, block=_block, layers=_layers, **_extra),
        paper=_paper,
        default_input_size=(3, 224, 224),
        default_num_classes=1000,
    )
