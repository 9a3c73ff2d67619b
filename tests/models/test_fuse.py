"""fuse_bn: the folded copy computes what the original computes in eval mode, and is eval-only."""

import pytest
import torch
from torch import nn

from resnetlab.errors import UsageError
from resnetlab.models import Residual, create_model
from resnetlab.models.fuse import find_conv_bn_pairs, fuse_bn


def _with_running_stats(model: nn.Module) -> nn.Module:
    """Give every norm non-trivial running statistics and affine parameters, then switch to eval."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(type(m) is kind for m in model.modules())


@pytest.mark.parametrize(
    "name, in_chans, pairs",
    [
        ("resnet18_d2l", 1, 17),  # stem + two per Residual; the 1x1 shortcut convs have no norm
        ("resnet18", 3, 20),  # stem + two per BasicBlock + three projection shortcuts
        ("resnet50", 3, 53),  # Bottlenecks: three per block + four projections
        ("resnet20", 3, 19),  # CIFAR stem + two per block (option-A shortcuts have no conv)
        (
            "preact_resnet18",
            3,
            9,
        ),  # stem, and conv1 -> bn2 inside each block; the others normalize sums
    ],
)
def test_fused_model_matches_in_eval_mode(name, in_chans, pairs):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=in_chans)
    x = torch.randn(2, in_chans, 16, 16)
    _with_running_stats(model)
    fused = fuse_bn(model)
    assert len(find_conv_bn_pairs(model)) == pairs
    assert _count(fused, nn.BatchNorm2d) == _count(model, nn.BatchNorm2d) - pairs
    with torch.inference_mode():
        expected, got = model(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.training is False and _count(model, nn.BatchNorm2d) > 0, (
        "the original is left as it was"
    )


def test_textbook_residual_and_channels_last():
    torch.manual_seed(0)
    block = nn.Sequential(Residual(3, 6, use_1x1conv=True, strides=2), Residual(6, 6))
    x = torch.randn(2, 3, 12, 12)
    _with_running_stats(block)
    fused = fuse_bn(block.to(memory_format=torch.channels_last))
    assert fused[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = block(x)
        got = fused(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_conv_output_used_elsewhere_is_not_folded():
    class Tap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the raw output is needed: folding would change it

    model = _with_running_stats(Tap())
    assert find_conv_bn_pairs(model) == []
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(fuse_bn(model)(x), model(x))


def test_untraceable_parent_still_fuses_traceable_children():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # control flow on values: torch.fx cannot trace this module
                x = -x
            return self.body(x)

    model = _with_running_stats(DataDependent())
    assert find_conv_bn_pairs(model) == [("body.0", "body.1")]
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fuse_bn(model)(x), model(x), rtol=1e-5, atol=1e-6)


def test_fused_copy_is_eval_only():
    model = _with_running_stats(create_model("resnet20", num_classes=10, in_chans=1))
    fused = fuse_bn(model)
    assert not any(p.requires_grad for p in fused.parameters())
    fused.train()
    with pytest.raises(UsageError, match="inference only"):
        fused(torch.randn(1, 1, 16, 16))


def test_lazy_layers_must_run_first():
    with pytest.raises(UsageError, match="lazy"):
        fuse_bn(Residual(None, 4))
