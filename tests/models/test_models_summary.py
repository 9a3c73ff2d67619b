"""summarize() and describe_models(): the numbers against independent counts, and the errors."""

import json

import pytest
import torch
from torch import nn

from resnetlab.errors import UsageError
from resnetlab.models import Residual, create_model, describe_models, render_model_table, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def macs_by_hand(model, x):
    """Multiply-accumulates of every Conv2d and Linear, from the output shapes of a real forward."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_resnet18_d2l_summary_rows_and_totals():
    s = summarize("resnet18_d2l", depth=1)
    assert s.input_size == (1, 224, 224) and s.output_shape == [1, 10]
    assert [r.name for r in s.rows] == [str(i) for i in range(8)]
    assert [r.output_shape for r in s.rows] == [
        [1, 64, 56, 56],
        [1, 64, 56, 56],
        [1, 128, 28, 28],
        [1, 256, 14, 14],
        [1, 512, 7, 7],
        [1, 512, 1, 1],
        [1, 512],
        [1, 10],
    ]
    assert s.total_params == s.trainable_params == 11_178_378 == sum(r.params for r in s.rows)
    assert s.param_bytes == 4 * s.total_params
    assert s.flops == 2 * s.macs and s.macs == sum(r.macs for r in s.rows)


@pytest.mark.parametrize(
    "name, input_size",
    [("resnet18_d2l", (1, 64, 64)), ("resnext50_32x4d", (3, 40, 40)), ("resnet20", (3, 32, 32))],
)
def test_macs_match_an_independent_count(name, input_size):
    model = create_model(name)
    s = summarize(model, input_size=input_size, batch_size=2)
    assert s.macs == macs_by_hand(model, torch.randn(2, *input_size))


def test_macs_agree_with_torchvision_published_figures():
    # torchvision's model tables list these GFLOPS (which are multiply-accumulates) at 224x224
    assert round(summarize("resnet18").macs / 1e9, 2) == 1.81
    assert round(summarize("resnet50").macs / 1e9, 2) == 4.09


def test_activation_memory_counts_what_autograd_keeps():
    # conv (keeps its input: not an activation), relu (keeps its output: 4x8x8 floats)
    assert (
        summarize(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), input_size=(3, 8, 8)
        ).activation_bytes
        == 4 * 8 * 8 * 4
    )
    one, two = (summarize("resnet20", batch_size=b).activation_bytes for b in (1, 2))
    norms = sum(
        m.num_features for m in create_model("resnet20").modules() if isinstance(m, nn.BatchNorm2d)
    )
    # everything scales with the batch except batch norm's per-channel mean and inverse std
    assert 2 * one - two == norms * 2 * 4


def test_summarizing_an_instance_leaves_it_untouched():
    model = create_model("resnet20").train()
    model.layer1[0].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = summarize(model, input_size=(3, 32, 32), batch_size=4)
    assert s.model == "CifarResNet" and s.total_params == 269_722
    after = model.state_dict()
    assert all(
        after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items()
    )
    assert model.training and not model.layer1[0].training and model.layer1[1].training


def test_depth_selects_rows_and_render_shows_them():
    s = summarize("resnet50", depth=2)
    names = [r.name for r in s.rows]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and "layer2.3" in names
    assert "layer2.3.conv1" not in names
    assert summarize("resnet50", depth=0).rows == []
    text = s.render()
    assert str(s) == text
    assert "layer4.2" in text and "Total params:          25,557,032" in text
    assert "FLOPs:                 8.18 G" in text and "2 x MACs" in text
    json.dumps(s.to_dict())  # plain types only


def test_input_size_sets_channels_of_a_named_model():
    s = summarize("resnet18", input_size=(1, 28, 28), depth=1)
    assert s.rows[0].params == 64 * 1 * 7 * 7


def test_huge_nets_are_summarized_on_the_meta_device():
    s = summarize("wide_resnet101_2", depth=0)
    assert s.total_params == 126_886_696 and s.activation_bytes > 0


@pytest.mark.parametrize(
    "call, complaint",
    [
        (
            lambda: summarize("resnet18", input_size=(3, 0, 32)),
            "three positive integers C H W, got 3 0 32",
        ),
        (lambda: summarize("resnet18", input_size=(3, -4, 32)), "three positive integers"),
        (lambda: summarize("resnet18", input_size=(3, 32)), "three positive integers"),
        (lambda: summarize("resnet18", batch_size=0), "batch size must be a positive integer"),
        (lambda: summarize("resnet18", depth=-1), "depth must be 0 or more"),
        (lambda: summarize("resnet19"), "unknown model 'resnet19'; did you mean: resnet18"),
        (
            lambda: summarize(create_model("resnet20"), input_size=(1, 32, 32)),
            "CifarResNet takes 3 input channels, got 1",
        ),
        (lambda: summarize(create_model("resnet20")), "give input_size"),
        (lambda: summarize(Residual(None, 4), input_size=(3, 8, 8)), "lazy layers"),
        (
            lambda: summarize("resnet18", input_size=(3, 16, 16)),
            "input 3x16x16 is too small for resnet18: layer4.0.conv1 (Conv2d, stride 2) gets a 1x1 map "
            "and cannot downsample it; H and W must each be at least 17",
        ),
        (
            lambda: summarize("resnet20", input_size=(3, 32, 2)),
            "gets a 16x1 map and cannot downsample it; H and W must each be at least 3",
        ),
        (
            lambda: summarize(nn.Conv2d(3, 4, kernel_size=5), input_size=(3, 3, 3)),
            "Conv2d cannot run on input 3x3x3: ",
        ),
    ],
)
def test_bad_input_gives_one_line_usage_errors(call, complaint):
    with pytest.raises(UsageError) as err:
        call()
    assert complaint in str(err.value) and "\n" not in str(err.value)


def test_smallest_accepted_input_is_the_one_named():
    assert summarize("resnet18", input_size=(3, 17, 17)).output_shape == [1, 1000]
    assert summarize("resnet20", input_size=(3, 3, 3)).output_shape == [1, 10]


def test_describe_models_lists_sizes_and_costs():
    listings = describe_models("resnet5*")
    assert [m.name for m in listings] == ["resnet50", "resnet56"]
    r50 = listings[0]
    assert r50.params == 25_557_032 and round(r50.gflops, 2) == 8.18
    assert r50.default_input_size == (3, 224, 224) and "1512.03385" in r50.paper
    text = render_model_table(listings)
    assert "resnet56" in text and "853,018" in text and "GFLOPs" in text
    assert describe_models("nothing*") == []
