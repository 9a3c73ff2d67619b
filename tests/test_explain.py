"""resnetlab.explain: feature_maps against hooks written here, the stages found in every family,
and Grad-CAM checked for meaning: on a synthetic task where one quadrant of each image carries the
class, a small trained net's maps put most of their mass in that quadrant."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetlab.errors import UsageError
from resnetlab.explain import feature_maps, grad_cam, residual_stages, resolve_layer
from resnetlab.models import create_model, list_models

CELLS = Path(__file__).parent / "d2l_cells" / "000"


def hooked(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs forward hooks on `modules` see during one eval-mode forward pass."""
    seen = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.clone())) for m in modules]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def notebook_net() -> nn.Sequential:
    """The seed notebook's own ResNet-18, built by its cells (its own `Residual` class)."""
    namespace = {"__name__": "nb"}
    for cell in ("02", "05", "06", "07", "08"):
        exec((CELLS / f"{cell}.py").read_text(), namespace)
    return namespace["net"]


@pytest.mark.parametrize(
    "name, kwargs, size, stages",
    [
        ("resnet18_d2l", {}, 64, lambda m: [m[1], m[2], m[3], m[4]]),
        ("resnet20", {"width": 8}, 28, lambda m: [m.layer1, m.layer2, m.layer3]),
        ("resnet18", {"num_classes": 10}, 64, lambda m: [m.layer1, m.layer2, m.layer3, m.layer4]),
        ("preact_resnet18", {"num_classes": 10}, 64, lambda m: [m.layer1, m.layer4]),
    ],
)
def test_feature_maps_are_what_forward_hooks_see(name, kwargs, size, stages):
    torch.manual_seed(0)
    in_chans = 1 if name.endswith("d2l") else 3
    model = create_model(name, in_chans=in_chans, **kwargs).train()
    for m in model.modules():  # non-trivial batch-norm statistics, so eval mode matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    image = torch.rand(in_chans, size, size)
    modules = stages(model)
    names = None if len(modules) > 2 else ["layer1", "layer4"]
    maps = feature_maps(model, image, stages=names)
    assert model.training  # the mode is restored
    expected = hooked(model, modules, image[None])
    assert len(maps) == len(expected)
    for (stage, got), want in zip(maps.items(), expected):
        assert got.shape == want.shape[1:], stage  # one image: no batch dimension
        assert torch.equal(got, want[0]), stage
    batch = torch.rand(3, in_chans, size, size)
    got = feature_maps(model, batch, stages=names)
    for t, want in zip(got.values(), hooked(model, modules, batch)):
        assert torch.equal(t, want)


def test_stages_of_every_registered_family_and_the_notebook_net():
    expected = {"resnet18_d2l": ["1", "2", "3", "4"], "resnet20": ["layer1", "layer2", "layer3"]}
    for name in list_models():
        if "101" in name or "152" in name or "110" in name or "wide" in name:
            continue  # same families, slow to build
        stages = residual_stages(create_model(name))
        assert stages == expected.get(
            name,
            ["layer1", "layer2", "layer3"]
            if len(stages) == 3
            else [f"layer{i}" for i in range(1, 5)],
        ), name
        assert len(stages) in (3, 4), name
    net = notebook_net()
    assert residual_stages(net) == ["1", "2", "3", "4"]  # b2..b5, of the notebook's own Residual
    assert resolve_layer(net)[0] == "4"
    maps = feature_maps(net, torch.rand(1, 96, 96))
    assert [tuple(t.shape) for t in maps.values()] == [
        (64, 24, 24),
        (128, 12, 12),
        (256, 6, 6),
        (512, 3, 3),
    ]


def test_layer_errors_are_one_line():
    model = create_model("resnet8", in_chans=1, width=4)
    x = torch.rand(2, 1, 16, 16)
    for layer, message in [
        (
            "layer9",
            r"no layer 'layer9' in CifarResNet; its residual stages are layer1, layer2, layer3",
        ),
        ("fc", r"layer 'fc' gives no spatial map"),
        (nn.Conv2d(1, 1, 1), r"not a module of this net"),
    ]:
        with pytest.raises(UsageError, match=message) as e:
            grad_cam(model, x, layer=layer)
        assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="out of range: the net has 10 classes"):
        grad_cam(model, x, target=10)
    with pytest.raises(UsageError, match=r"one per image \(2\)"):
        grad_cam(model, x, target=[1, 2, 3])
    with pytest.raises(UsageError, match="float tensor"):
        feature_maps(model, torch.rand(16, 16))
    with pytest.raises(UsageError, match=r"torch.uint8; convert it"):
        grad_cam(model, torch.zeros(1, 16, 16, dtype=torch.uint8))


def test_grad_cam_without_captum_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # `import captum.attr` fails
    with pytest.raises(UsageError, match=r"pip install 'resnetlab\[explain\]'"):
        grad_cam(create_model("resnet8", in_chans=1, width=4), torch.rand(1, 16, 16))


def test_grad_cam_shape_range_target_and_layer():
    torch.manual_seed(0)
    model = create_model("resnet8", in_chans=1, width=4).train()
    x = torch.rand(3, 1, 20, 20)
    cam = grad_cam(model, x)
    assert cam.shape == (3, 20, 20) and cam.dtype == torch.float32 and model.training
    assert cam.min() >= 0 and all(float(c.max()) in (0.0, 1.0) for c in cam)
    assert grad_cam(model, x[0], target=2, layer="layer2.0").shape == (20, 20)
    by_index = grad_cam(model, x, target=[1, 1, 1])
    torch.testing.assert_close(by_index, grad_cam(model, x, target=1))
    torch.testing.assert_close(by_index, grad_cam(model, x, target=torch.tensor([1, 1, 1])))


def reference_grad_cam(model: nn.Module, module: nn.Module, x: torch.Tensor, target: int):
    """Grad-CAM as the paper defines it, by hooks: the layer's activations A [N, K, h, w] in eval
    mode, the gradient of each image's `target` score wrt A, channel weights = its spatial mean,
    ReLU of the weighted sum, bilinear upsampling to the image, scaled to a peak of 1."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    model.eval()
    logits = model(x)
    handle.remove()
    (activations,) = seen
    (grads,) = torch.autograd.grad(logits[:, target].sum(), activations)
    cam = (grads.mean((2, 3), keepdim=True) * activations).sum(1, keepdim=True)
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear").relu()[:, 0]
    return (cam / cam.flatten(1).amax(1).clamp_min(1e-30)[:, None, None]).detach()


def test_grad_cam_explains_the_class_asked_for_not_the_predicted_one():
    """Each class's map is the paper's Grad-CAM for that class, including classes the net does
    not predict (a map of the predicted class in their place would differ)."""
    torch.manual_seed(0)
    model = create_model("resnet8", in_chans=1, width=4)
    for m in model.modules():  # non-trivial statistics, so the net's classes disagree
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
    others = [c for c in range(10) if c not in predicted.tolist()][:3]
    assert others
    for target in [*others, int(predicted[0])]:
        want = reference_grad_cam(model, model.layer3, x, target)
        torch.testing.assert_close(grad_cam(model, x, target=target), want, atol=1e-5, rtol=1e-4)
    per_image = [others[0], others[1]]
    torch.testing.assert_close(
        grad_cam(model, x, target=per_image),
        torch.stack(
            [reference_grad_cam(model, model.layer3, x, t)[i] for i, t in enumerate(per_image)]
        ),
        atol=1e-5,
        rtol=1e-4,
    )
    default = torch.stack(
        [reference_grad_cam(model, model.layer3, x, int(t))[i] for i, t in enumerate(predicted)]
    )
    torch.testing.assert_close(grad_cam(model, x), default, atol=1e-5, rtol=1e-4)
    # and the maps of two classes are not the same map
    assert not torch.allclose(
        grad_cam(model, x, target=others[0]), grad_cam(model, x, target=others[1])
    )


# --- Grad-CAM for meaning: the quadrant that carries the class ------------------------------

SIZE, HALF = 32, 16


def quadrant_task(n: int, generator: torch.Generator):
    """Noise images [n, 1, 32, 32]; in one random quadrant each, stripes: horizontal (class 0) or
    vertical (class 1). Returns (images, labels, quadrant of each)."""
    x = torch.randn(n, 1, SIZE, SIZE, generator=generator) * 0.3
    y = torch.randint(0, 2, (n,), generator=generator)
    q = torch.randint(0, 4, (n,), generator=generator)
    phase = torch.randint(0, 4, (n, 1), generator=generator)
    stripes = (((torch.arange(HALF) + phase) // 2) % 2).float() * 2 - 1  # [n, 16], period 4
    rows = stripes[:, :, None].expand(n, HALF, HALF)
    pattern = torch.where(y[:, None, None] == 0, rows, rows.transpose(1, 2))
    for i in range(n):
        r, c = divmod(int(q[i]), 2)
        x[i, 0, r * HALF : (r + 1) * HALF, c * HALF : (c + 1) * HALF] += pattern[i]
    return x, y, q


def quadrant_mass(cam: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    mass = []
    for m, quadrant in zip(cam, q.tolist()):
        r, c = divmod(quadrant, 2)
        inside = m[r * HALF : (r + 1) * HALF, c * HALF : (c + 1) * HALF].sum()
        mass.append(float(inside / m.sum()) if m.sum() > 0 else 0.0)
    return torch.tensor(mass)


@pytest.mark.slow
def test_grad_cam_finds_the_quadrant_that_carries_the_class():
    """A ResNet-8 (width 8) trained for 100 steps (~5 s) on 2,048 images: its Grad-CAM of each
    correctly predicted test image puts >= 60 % of its mass in the quadrant holding the stripes
    (25 % is chance); measured here: all 256 right, mass mean 0.80, lowest 0.71."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x_train, y_train, _ = quadrant_task(2048, g)
    x_test, y_test, q_test = quadrant_task(256, g)
    net = create_model("resnet8", in_chans=1, num_classes=2, width=8).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        i = torch.randint(0, len(x_train), (64,), generator=g)
        loss = nn.functional.cross_entropy(net(x_train[i]), y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        correct = net(x_test).argmax(1) == y_test
    assert correct.float().mean() >= 0.9
    mass = quadrant_mass(grad_cam(net, x_test), q_test)[correct]
    assert mass.mean() >= 0.6, mass.mean()
    assert (mass >= 0.6).float().mean() >= 0.95, sorted(mass.tolist())[:10]


def test_grad_cam_uses_the_layer_asked_for_and_refuses_each_kind_of_bad_target():
    torch.manual_seed(0)
    model = create_model("resnet8", in_chans=1, width=4)
    x = torch.rand(3, 1, 20, 20)
    by_name = grad_cam(model, x, target=1, layer="layer1")
    torch.testing.assert_close(by_name, grad_cam(model, x, target=1, layer=model.layer1))
    assert not torch.allclose(by_name, grad_cam(model, x, target=1))  # not the default stage
    no_map = r"^layer 'fc' gives no spatial map \(\(3, 1\)\); pick a convolutional layer or a residual stage$"
    with pytest.raises(UsageError, match=no_map):
        grad_cam(model, x, layer="fc")
    for bad, message in [
        (1.5, r"a class index or one per image \(3\), got 1.5$"),
        (-1, "out of range"),
        ([0, -1, 2], "out of range"),
        (10, "out of range: the net has 10 classes"),
    ]:
        with pytest.raises(UsageError, match=message):
            grad_cam(model, x, target=bad)


def test_one_target_index_is_repeated_for_each_image():
    from resnetlab.explain.cam import _targets

    logits = torch.zeros(3, 4)
    for one in (2, torch.tensor(2), [2]):
        assert torch.equal(_targets(one, logits), torch.tensor([2, 2, 2]))
    assert torch.equal(_targets((3, 0, 1), logits), torch.tensor([3, 0, 1]))
