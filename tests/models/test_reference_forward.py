"""A reference forward pass for torchvision's ResNet layout, written with torch.nn.functional
alone from the paper (He et al. 2016, Table 1) and torchvision's documented architecture: a 7x7
stride-2 stem and a 3x3 stride-2 max pool; stages of 64, 128, 256, 512 channels (x4 out of a
Bottleneck), the first block of stages 2-4 with stride 2, on the 3x3 convolution of a Bottleneck
("ResNet v1.5"); a 1x1 convolution and batch norm on the shortcut where the shape changes; batch
norm in eval mode (running statistics, eps 1e-5); global average pooling and a linear classifier.

The state_dict is drawn at random from the key and shape file made by torchvision's own code
(tests/fixtures/torchvision_resnet_keys.json), not by resnetlab, and `create_model(...,
weights=FILE)` must give the same logits. Placing the stride on the 1x1 convolution (ResNet v1),
dropping a shortcut, or training-mode batch norm each moves the logits far beyond the bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnetlab.models import create_model

LAYOUTS = Path(__file__).resolve().parents[1] / "fixtures" / "torchvision_resnet_keys.json"
BLOCKS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}


def random_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every key of torchvision's `name`, scaled so that activations stay of
    order one through the net (He initialisation, batch norm near identity but not at it)."""
    g = torch.Generator().manual_seed(seed)
    shapes = json.loads(LAYOUTS.read_text())["models"][name]
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # batch norm's weight
            sd[key] = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:  # convolutions and the classifier: He initialisation
            fan_in = torch.Size(shape[1:]).numel()
            sd[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
    return sd


def reference_logits(sd: dict[str, torch.Tensor], kind: str, blocks: list[int], x):
    """ResNet-18/34 (basic blocks) or -50/101/152 (bottlenecks), torchvision's layout, by
    functional calls only. Returns the logits and the keys it read (every key must be read)."""
    used = set()

    def p(key):
        used.add(key)
        return sd[key]

    def bn(x, prefix):
        for stat in ("running_mean", "running_var"):
            used.add(f"{prefix}.{stat}")
        used.add(f"{prefix}.num_batches_tracked")
        return F.batch_norm(
            x,
            sd[f"{prefix}.running_mean"],
            sd[f"{prefix}.running_var"],
            p(f"{prefix}.weight"),
            p(f"{prefix}.bias"),
            training=False,
            eps=1e-5,
        )

    def conv(x, key, stride=1):
        w = p(f"{key}.weight")
        return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)

    x = F.relu(bn(conv(x, "conv1", 2), "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, count in enumerate(blocks, start=1):
        for i in range(count):
            b = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            if kind == "basic":
                out = F.relu(bn(conv(x, f"{b}.conv1", stride), f"{b}.bn1"))
                out = bn(conv(out, f"{b}.conv2"), f"{b}.bn2")
            else:  # v1.5: the stride on the 3x3 convolution, the 1x1 ones at stride 1
                out = F.relu(bn(conv(x, f"{b}.conv1"), f"{b}.bn1"))
                out = F.relu(bn(conv(out, f"{b}.conv2", stride), f"{b}.bn2"))
                out = bn(conv(out, f"{b}.conv3"), f"{b}.bn3")
            if f"{b}.downsample.0.weight" in sd:
                shortcut = bn(conv(x, f"{b}.downsample.0", stride), f"{b}.downsample.1")
            else:
                assert stride == 1 and x.shape == out.shape, b
                shortcut = x
            x = F.relu(out + shortcut)
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return F.linear(x, p("fc.weight"), p("fc.bias")), used


@pytest.mark.parametrize("name", list(BLOCKS))
def test_create_model_computes_the_reference_forward_of_torchvisions_layout(
    name, tmp_path, one_thread
):
    sd = random_state_dict(name)
    kind, blocks = BLOCKS[name]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, used = reference_logits(sd, kind, blocks, x)
        assert used == set(sd)  # the reference reads the whole file: no layer left out
        # an input where the 1x1 stride and the 3x3 stride see different pixels, and logits
        # of order one, so that the bound below is tight
        assert 0.1 < want.abs().max() < 100 and want.std() > 0.01
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
        model = create_model(name, weights=path)
        got = model.eval()(x)
    assert got.shape == want.shape == (1, 1000)
    assert (got - want).abs().max() < 1e-5
