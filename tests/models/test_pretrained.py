"""Weights in: checkpoints laid out as torchvision and timm save them load strictly with identical
logits; another class count or input channel count is adapted and said; the rest is one line."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from resnetlab.errors import CheckpointError, UsageError
from resnetlab.models import create_model
from resnetlab.models.pretrained import (
    PretrainedNote,
    adapt_input_conv,
    load_pretrained,
    read_state_dict,
)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def torchvision_file(model: nn.Module, path):
    """A state_dict as torchvision's published ResNet weights hold it: no num_batches_tracked."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, path)
    return path


def logits(model, x=X):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_checkpoints_load_strictly_with_identical_logits(name, tmp_path, one_thread):
    torch.manual_seed(1)
    source = create_model(name)  # 1000 classes, 3 channels: torchvision's keys and shapes
    path = torchvision_file(source, tmp_path / f"{name}.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing adapted, nothing to say
        loaded = create_model(name, weights=path)
    assert torch.equal(logits(loaded), logits(source))


def test_timm_files_safetensors_and_training_checkpoint(tmp_path, one_thread):
    torch.manual_seed(2)
    source = create_model("resnet18")
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    # timm's hub file: model.safetensors without resnetlab metadata
    safetensors.torch.save_file(sd, str(tmp_path / "model.safetensors"))
    assert torch.equal(
        logits(create_model("resnet18", weights=tmp_path / "model.safetensors")), logits(source)
    )
    # timm's train.py checkpoint: nested under "state_dict", beside plain entries; DDP's "module." prefix
    ckpt = {
        "epoch": 3,
        "arch": "resnet18",
        "version": 2,
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
        "optimizer": {"state": {}, "param_groups": []},
    }
    torch.save(ckpt, tmp_path / "checkpoint-3.pth.tar")
    assert torch.equal(
        logits(create_model("resnet18", weights=tmp_path / "checkpoint-3.pth.tar")), logits(source)
    )
    torch.save({"model": sd}, tmp_path / "nested.pt")
    assert read_state_dict(tmp_path / "nested.pt").keys() == sd.keys()


def test_other_classes_and_grey_input_are_adapted_and_said(tmp_path, one_thread):
    torch.manual_seed(3)
    source = create_model("resnet18")
    path = torchvision_file(source, tmp_path / "rgb.pth")
    with pytest.warns(PretrainedNote) as caught:
        grey = create_model("resnet18", num_classes=10, in_chans=1, weights=path)
    said = " | ".join(str(w.message) for w in caught)
    assert "classifier fc re-initialised for 10 classes (the checkpoint has 1000)" in said
    assert "conv1 adapted from 3 to 1 input channel(s): summed" in said
    assert grey.fc.weight.shape == (10, 512)
    assert torch.equal(grey.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(grey.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    # the summed stem on a grey image = the RGB stem on that image copied into three channels
    g = X[:, :1]
    with torch.no_grad():
        a = grey.eval().forward_features(g)
        b = source.eval().forward_features(g.repeat(1, 3, 1, 1))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_grey_checkpoint_into_rgb_model_repeats_and_scales(tmp_path, one_thread):
    torch.manual_seed(4)
    source = create_model("resnet18", num_classes=10, in_chans=1)
    path = torchvision_file(source, tmp_path / "grey.pth")
    notes = []
    rgb = create_model("resnet18", num_classes=10, in_chans=3)
    assert load_pretrained(rgb, path, say=notes.append) == notes and len(notes) == 1
    assert "from 1 to 3 input channel(s): repeated and scaled by 1/3" in notes[0]
    torch.testing.assert_close(rgb.conv1.weight, source.conv1.weight.repeat(1, 3, 1, 1) / 3)
    g = X[:, :1]
    torch.testing.assert_close(
        logits(rgb, g.repeat(1, 3, 1, 1)), logits(source, g), atol=1e-4, rtol=1e-4
    )


def test_adapt_input_conv_follows_timm():
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_input_conv(w, 3), w)
    torch.testing.assert_close(adapt_input_conv(w, 4), torch.cat([w, w[:, :1]], 1) * 0.75)
    with pytest.raises(CheckpointError, match="only 3 \\(RGB\\) or 1 \\(grey\\)"):
        adapt_input_conv(torch.randn(8, 2, 3, 3), 3)


def test_the_textbook_net_loads_a_run_of_itself_with_other_classes(tmp_path):
    torch.manual_seed(5)
    source = create_model("resnet18_d2l", widths=(8, 8, 16, 16))
    save = tmp_path / "model.safetensors"
    from resnetlab.weights import save_weights

    save_weights(save, source.state_dict(), {"model": "resnet18_d2l"})
    notes = []
    target = create_model("resnet18_d2l", num_classes=4, widths=(8, 8, 16, 16))
    load_pretrained(target, save, say=notes.append)
    assert notes == ["classifier 7 re-initialised for 4 classes (the checkpoint has 10)"]
    assert torch.equal(target[0][0].weight, source[0][0].weight)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_wrong_architecture_is_named(tmp_path, one_thread):
    path = torchvision_file(create_model("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as e:
        create_model("resnet34", weights=path)
    message = one_line(e)
    assert "does not fit resnet34" in message and "missing key(s): layer1.2.conv1.weight" in message
    assert "(and " in message and "it looks like resnet18's weights" in message
    path = torchvision_file(create_model("resnext50_32x4d"), tmp_path / "x50.pth")
    with pytest.raises(CheckpointError) as e:
        create_model("resnet50", weights=path)
    message = one_line(e)
    assert (
        "shape clash(es): layer1.0.conv1.weight is 128x64x1x1 in the checkpoint, 64x64x1x1 in the model"
        in message
    )
    assert "it looks like resnext50_32x4d's weights" in message


def test_unexpected_prefix_and_bad_files_are_one_line(tmp_path):
    sd = create_model("resnet20").state_dict()
    torch.save({f"backbone.{k}": v for k, v in sd.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(CheckpointError) as e:
        create_model("resnet20", weights=tmp_path / "prefixed.pth")
    assert "unexpected key(s): backbone.conv1.weight" in one_line(e)

    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError) as e:
        create_model("resnet20", weights=tmp_path / "pickled.pth")
    assert "Python objects besides tensors" in one_line(e)

    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError) as e:
        create_model("resnet20", weights=tmp_path / "junk.pth")
    assert "not a readable checkpoint" in one_line(e)

    torch.save({"epoch": 1, "optimizer": {}}, tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError) as e:
        create_model("resnet20", weights=tmp_path / "nothing.pth")
    assert "not a state_dict of tensors" in one_line(e)

    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("resnet20", weights=tmp_path / "absent.pth")


def test_lazy_layers_must_run_first(tmp_path):
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UsageError, match="lazy layers"):
        load_pretrained(lazy, tmp_path / "any.pth")


class _TorchvisionBasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock's layout, written out (torchvision is not a dependency)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _torchvision_resnet18(num_classes=1000):
    """torchvision.models.resnet18()'s modules and forward, for the README's snippet."""
    m = nn.Module()
    m.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    m.bn1, m.relu, m.maxpool = nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512)):
        stride = 1 if i == 0 else 2
        down = (
            None
            if stride == 1 and inplanes == planes
            else nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        )
        setattr(
            m,
            f"layer{i + 1}",
            nn.Sequential(
                _TorchvisionBasicBlock(inplanes, planes, stride, down),
                _TorchvisionBasicBlock(planes, planes),
            ),
        )
        inplanes = planes
    m.avgpool, m.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, num_classes)

    def forward(x):
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return m.fc(torch.flatten(m.avgpool(x), 1))

    m.forward = forward
    return m


def test_our_safetensors_load_into_a_torchvision_layout_model(tmp_path, one_thread):
    from resnetlab.weights import save_weights

    torch.manual_seed(6)
    ours = create_model("resnet18", num_classes=10)
    save_weights(tmp_path / "model.safetensors", ours.state_dict(), {"model": "resnet18"})
    tv = _torchvision_resnet18(num_classes=10)
    tv.load_state_dict(
        safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    )  # the README snippet
    assert torch.equal(logits(tv), logits(ours))


# --- torchvision's and timm's layout, from their own code ---------------------------------------

LAYOUTS = Path(__file__).resolve().parents[1] / "fixtures" / "torchvision_resnet_keys.json"
IMAGENET_FAMILY = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


def test_the_layout_file_records_who_made_it_and_holds_the_nine_models():
    document = json.loads(LAYOUTS.read_text())
    assert {"torchvision", "timm", "torch"} <= set(document["made_by"])
    assert list(document["models"]) == IMAGENET_FAMILY


@pytest.mark.parametrize("name", IMAGENET_FAMILY)
def test_create_model_has_torchvisions_and_timms_state_dict_key_for_key(name):
    """tests/fixtures/torchvision_resnet_keys.json: the keys and shapes of torchvision 0.26's and
    timm 1.0.31's models (the same, checked as the file was made), written by their own resnet.py
    (tests/fixtures/make_torchvision_resnet_keys.py). Built on the meta device: no memory."""
    want = json.loads(LAYOUTS.read_text())["models"][name]
    with torch.device("meta"):
        model = create_model(name)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}, "shapes differ (ours)"
    assert list(got) == list(want)  # the same order too: a positional loader would work
