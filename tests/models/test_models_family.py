"""The ResNet family and the registry: exact parameter counts, torchvision key names, the CIFAR
option-A nets, plain and pre-activation variants, and a training step through every model."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import UsageError
from resnetlab.models import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    PlainBlock,
    PreActBlock,
    ResNet,
    create_model,
    get_model_info,
    list_models,
    register_model,
)
from resnetlab.models.cifar import ZeroPadShortcut

pytestmark = pytest.mark.usefixtures("one_thread")

# The numbers (torchvision's for the ImageNet nets; He et al. 2015 table 6 for CIFAR).
PARAM_COUNTS = {
    "resnet18_d2l": 11_178_378,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def meta_model(name, **kwargs):
    """Shapes without memory: even the 126M-parameter nets build in milliseconds."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, count", PARAM_COUNTS.items())
def test_parameter_counts(name, count):
    assert n_params(meta_model(name)) == count


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_plain_cifar_twins_have_the_same_parameters(depth):
    # option A shortcuts are parameter-free, so removing them removes nothing
    assert n_params(meta_model(f"plain{depth}")) == PARAM_COUNTS[f"resnet{depth}"]


@pytest.mark.parametrize("depth", [18, 34])
def test_plain_imagenet_nets_are_resnets_without_shortcuts(depth):
    resnet, plain = meta_model(f"resnet{depth}"), meta_model(f"plain{depth}")
    projection = sum(p.numel() for n, p in resnet.named_parameters() if ".downsample." in n)
    assert projection > 0
    assert n_params(plain) == n_params(resnet) - projection
    assert not any(".downsample." in k for k in plain.state_dict())
    assert all(type(b) is PlainBlock for s in plain.stage_names for b in getattr(plain, s))


def test_required_models_are_registered():
    required = (
        set(PARAM_COUNTS)
        | {f"plain{d}" for d in CIFAR_DEPTHS}
        | {"plain18", "plain34", "preact_resnet18", "preact_resnet34"}
    )
    assert required <= set(list_models())


def test_list_models_filters_and_sorts_naturally():
    assert list_models("wide_*") == ["wide_resnet50_2", "wide_resnet101_2"]
    assert list_models("resnet1*") == [
        "resnet14",
        "resnet18",
        "resnet18_d2l",
        "resnet101",
        "resnet110",
        "resnet152",
    ]
    assert list_models("no_such_net*") == []


def test_model_info_records():
    info = get_model_info("resnet20")
    assert (info.name, info.default_input_size, info.default_num_classes) == (
        "resnet20",
        (3, 32, 32),
        10,
    )
    assert "1512.03385" in info.paper
    d2l = get_model_info("resnet18_d2l")
    assert (d2l.default_in_chans, d2l.default_num_classes) == (1, 10)
    assert all(
        get_model_info(n).paper and callable(get_model_info(n).builder) for n in list_models()
    )


def test_torchvision_key_names_and_shapes():
    sd = meta_model("resnet50").state_dict()
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer2.0.downsample.1.num_batches_tracked": (),
        "layer3.5.bn3.weight": (1024,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # nothing but torchvision's module names
    pattern = re.compile(
        r"(conv1|bn1|fc)\.\w+|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01])\.\w+"
    )
    assert all(pattern.fullmatch(k) for k in sd)
    # ResNet V1.5: the stride sits on the 3x3 convolution
    layer2 = meta_model("resnet50").layer2[0]
    assert layer2.conv1.stride == (1, 1) and layer2.conv2.stride == (2, 2)
    basic = meta_model("resnet18").state_dict()
    assert basic["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert "layer1.0.downsample.0.weight" not in basic


def test_resnext_and_wide_widths():
    assert meta_model("resnext50_32x4d").layer1[0].conv2.weight.shape == (128, 4, 3, 3)
    assert meta_model("resnext101_32x8d").layer1[0].conv2.weight.shape == (256, 8, 3, 3)
    assert meta_model("wide_resnet50_2").layer1[0].conv1.weight.shape == (128, 64, 1, 1)


def test_custom_depth_is_a_call():
    with torch.device("meta"):
        assert n_params(ResNet(Bottleneck, [3, 8, 36, 3])) == PARAM_COUNTS["resnet152"]
        five_stages = ResNet(BasicBlock, [1, 1, 1, 1, 1], num_classes=7)
    assert five_stages.fc.in_features == 1024 and hasattr(five_stages, "layer5")


def test_preact_nets_normalize_after_the_last_stage():
    net = meta_model("preact_resnet18")
    assert all(type(b) is PreActBlock for s in net.stage_names for b in getattr(net, s))
    assert isinstance(net.final_norm, nn.BatchNorm2d) and net.final_norm.num_features == 512
    assert meta_model("resnet18").final_norm is None
    # projection shortcuts without a norm: the next block normalizes the sum
    assert [type(m) for m in net.layer2[0].downsample] == [nn.Conv2d]


def test_cifar_layout_and_option_a_shortcuts():
    net = meta_model("resnet20")
    assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
    assert [getattr(net, s)[-1].conv2.out_channels for s in net.stage_names] == [16, 32, 64]
    assert isinstance(net.layer2[0].downsample, ZeroPadShortcut)
    assert not any("downsample" in k for k in net.state_dict())


def test_zero_pad_shortcut_subsamples_and_appends_zero_channels():
    x = torch.randn(2, 16, 7, 7)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert not y[:, 16:].any()
    with pytest.raises(UsageError):
        ZeroPadShortcut(32, 16, stride=2)


def test_cifar_width_and_depth_options():
    wide = meta_model("resnet20", in_chans=1, width=32)
    assert wide.conv1.weight.shape == (32, 1, 3, 3) and wide.fc.in_features == 128
    deeper = meta_model("resnet20", layers=[5, 5, 5])
    assert n_params(deeper) == PARAM_COUNTS["resnet32"]
    with torch.device("meta"):
        assert n_params(CifarResNet(BasicBlock, [3, 3, 3])) == PARAM_COUNTS["resnet20"]


def test_patch_stem_cuts_the_image_into_patches_that_become_channels():
    torch.manual_seed(0)
    net = create_model("resnet20", in_chans=1, width=32, patch_stem=2).eval()
    assert net.conv1.weight.shape == (32, 1, 2, 2) and net.conv1.stride == (2, 2)
    x = torch.randn(2, 1, 28, 28)
    # The stem sees each 2x2 patch once: it is a linear map of the patch's four pixels (space to depth).
    patches = F.pixel_unshuffle(x, 2)  # [2, 4, 14, 14]
    expected = torch.einsum("bphw,op->bohw", patches, net.conv1.weight.reshape(32, 4))
    torch.testing.assert_close(net.conv1(x), expected, rtol=1e-5, atol=1e-5)
    assert net.layer1(net.relu(net.bn1(net.conv1(x)))).shape == (2, 32, 14, 14) and net(
        x
    ).shape == (2, 10)
    assert set(net.state_dict()) == set(create_model("resnet20", in_chans=1, width=32).state_dict())
    for bad in (0, True, 1.5):
        with pytest.raises(UsageError, match="patch_stem must be a positive integer"):
            meta_model("resnet20", patch_stem=bad)


def test_plain_block_has_no_shortcut():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5).abs()
    residual, plain = BasicBlock(4, 4).eval(), PlainBlock(4, 4).eval()
    for block in (residual, plain):
        nn.init.zeros_(block.bn2.weight)  # residual branch outputs 0 (bn2 bias is 0)
    torch.testing.assert_close(residual(x), x)  # relu(0 + x) with x >= 0
    assert not plain(x).any()


def test_zero_init_residual_starts_blocks_as_identity():
    net = create_model("resnet18", zero_init_residual=True)
    assert all(not b.bn2.weight.any() for s in net.stage_names for b in getattr(net, s))
    assert not create_model("resnet50", zero_init_residual=False).layer1[0].bn3.weight.eq(0).any()
    with pytest.raises(UsageError, match="shortcut"):
        create_model("plain20", zero_init_residual=True)


def test_num_classes_and_in_chans_override_defaults():
    net = meta_model("resnet50", num_classes=7, in_chans=1)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 7
    d2l = meta_model("resnet18_d2l")
    assert d2l[0][0].in_channels == 1 and d2l[-1].out_features == 10


def test_unknown_model_names_close_matches():
    with pytest.raises(UsageError) as err:
        create_model("resnet19")
    message = str(err.value)
    assert message.startswith("unknown model 'resnet19'; did you mean: resnet18")
    assert message.endswith("?") and "\n" not in message and err.value.exit_code == 2
    with pytest.raises(UsageError, match="see `resnetlab models`"):
        get_model_info("qwertyuiop")


@pytest.mark.parametrize(
    "kwargs, complaint",
    [
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(in_chans=-1), "in_chans must be a positive integer"),
        (dict(width=32), "has no option 'width'"),
        (dict(layers=[2, 0, 2, 2]), "positive integers"),
        (dict(layers=[2, 2], widths=[64]), "one width per stage"),
        (dict(groups=32), "groups=1"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, complaint):
    with pytest.raises(UsageError, match=complaint):
        meta_model("resnet18", **kwargs)


def test_register_model_decorator_and_duplicates():
    from resnetlab.models import registry

    @register_model(paper="test", default_input_size=(2, 8, 8), default_num_classes=3)
    def tiny_test_net(num_classes, in_chans):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, num_classes))

    try:
        assert create_model("tiny_test_net")(torch.zeros(1, 2, 8, 8)).shape == (1, 3)
        with pytest.raises(ValueError, match="twice"):
            register_model("tiny_test_net", tiny_test_net, paper="again")
    finally:
        registry._REGISTRY.pop("tiny_test_net")


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward_on_a_tiny_batch(name):
    torch.manual_seed(0)
    info = get_model_info(name)
    model = create_model(name)
    x = torch.randn(2, info.default_in_chans, 32, 32)
    out = model(x)
    assert out.shape == (2, info.default_num_classes)
    out.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "a parameter took no part in the forward pass"
    assert all(torch.isfinite(g).all() for g in grads)
