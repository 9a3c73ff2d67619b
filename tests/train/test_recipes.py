"""The recipe options of issue 15: the weights' moving average (--ema), test-time augmentation
(--tta), the optional per-epoch test evaluation (--no-epoch-test), progressive resizing
(--progressive-resize) and the whitened first layer (--init whiten)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab import cli
from resnetlab.errors import CheckpointError, Interrupted, UsageError
from resnetlab.inference.evaluation import evaluate
from resnetlab.inference.tta import TTAModel, with_tta
from resnetlab.train import make_config, train
from resnetlab.train.checkpoint import load_checkpoint
from resnetlab.train.presets import ema_warning, run_warnings
from resnetlab.train.setup import build
from resnetlab.train.steps import WeightAverage
from resnetlab.train.whiten import whiten_first_conv, whitening_filters
from resnetlab.weights import load_weights

TINY = dict(
    model="resnet20",
    model_kwargs={"width": 8},
    subset=512,
    batch_size=64,
    epochs=2,
    seed=3,
    val_split=0,
)


def metrics_less_timing(run) -> list[str]:
    """metrics.csv's lines without their last two columns (examples/s, epoch seconds)."""
    return [row.rsplit(",", 2)[0] for row in (run / "metrics.csv").read_text().splitlines()]


# --- the moving average ------------------------------------------------------------------------


def test_weight_average_is_an_exponential_average_of_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    average = WeightAverage(net, decay=0.9)
    average.updates.fill_(100)  # past the warm-up: the decay is 0.9 itself
    before = {k: v.clone() for k, v in average.model.state_dict().items()}
    net.train()(torch.randn(8, 1, 6, 6))  # moves the running statistics and the step counter
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    average.update()
    now = net.state_dict()
    for key, value in average.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * now[key], msg=key)
        else:  # batch norm's counter is copied, not averaged
            assert torch.equal(value, now[key]), key
    assert not torch.equal(average.model.state_dict()["1.running_mean"], now["1.running_mean"])
    assert (
        not any(p.requires_grad for p in average.model.parameters()) and not average.model.training
    )
    assert int(average.updates) == 101


def test_weight_average_warms_up_so_a_short_run_keeps_its_trained_weights():
    """Update t uses min(decay, (1 + t) / (10 + t)) (timm's ModelEmaV3): the first copies 90 % of
    the weights; a decay fitted to a long run (the imagenet preset's 0.99968 at batch 32 for 2
    epochs, issue 40) no longer keeps the initial weights through 18 steps."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    average = WeightAverage(net, decay=0.99968)
    start = net.weight.detach().clone()
    trained = torch.randn_like(start)
    for t in range(18):
        expected = max(1 - 0.99968, 9 / (10 + t))
        assert abs(float(average.weight()) - expected) < 1e-7, t
        with torch.no_grad():
            net.weight.copy_(trained)
        average.update()
    # the average is nearly the trained weights, not the start
    moved = (average.model.weight - start).norm() / (trained - start).norm()
    assert moved > 0.99, f"the average moved {moved:.4f} of the way from the start"
    average.updates.fill_(10**6)  # a long run: the set decay, torchvision's per-step figure
    assert abs(float(average.weight()) - (1 - 0.99968)) < 1e-9


def test_the_warm_up_leaves_the_imagenet_presets_full_run_as_torchvisions():
    """On ImageNet (1,281,167 images) at the preset's batch and epochs, the decay reaches its cap
    (torchvision's figure, imagenet_ema) within the run, and what the warm-up steps still weigh in
    the final average is negligible: the long run ends as torchvision's reference does."""
    cfg = make_config("imagenet")
    steps = -(-1_281_167 // cfg.batch_size) * cfg.epochs
    capped = math.ceil(9 / (1 - cfg.ema) - 10)  # the first update whose decay is the cap
    assert capped < steps / 2
    average = WeightAverage(nn.Linear(1, 1), cfg.ema)
    average.updates.fill_(capped)
    assert abs(float(average.weight()) - (1 - cfg.ema)) < 1e-12
    assert cfg.ema ** (steps - capped) < 1e-6  # the warm-up's share of the kept average


def test_an_ema_span_longer_than_the_run_is_named_in_one_warning_line():
    short = make_config("imagenet", batch_size=32, epochs=2)  # issue 40: 18 steps in all
    warning = ema_warning(short.ema, 18)
    assert warning is not None and len(warning.splitlines()) == 1
    assert warning.startswith("warning: --ema 0.99968") and "this run's 18" in warning
    assert ema_warning(short.ema, 10**6) is None  # a run longer than the span: nothing to say
    assert ema_warning(0.0, 18) is None  # no average
    assert ema_warning(0.9, 18) is None


def test_a_batch_larger_than_the_training_set_is_named_in_one_warning_line():
    """The imagenet preset's batch of 1024 on 300 images: one step an epoch at a rate for 1024
    (measured: the loss went to 138 and the test accuracy stayed at chance)."""
    cfg = make_config("imagenet", epochs=5)
    lines = run_warnings(cfg, train_examples=300, steps_per_epoch=1)
    assert lines[0].startswith("warning: --batch-size 1024 is more than the 300 training images")
    assert len(lines) == 2 and lines[1] == ema_warning(cfg.ema, 5)
    assert run_warnings(make_config("imagenet", batch_size=32), 10**6, 10**5) == []
    long = make_config("imagenet", batch_size=32, epochs=600)  # 300 images: 6000 steps
    assert run_warnings(long, 300, 10)[0].startswith("warning: --ema 0.9999989 averages")


@pytest.mark.needs_fashion_mnist
def test_training_says_the_ema_warning_once(tmp_path, capsys):
    train(make_config("quick", **dict(TINY, epochs=1, ema=0.999)), out=tmp_path / "r")
    out = capsys.readouterr().out.splitlines()
    steps = TINY["subset"] // TINY["batch_size"]  # one epoch
    assert [line for line in out if "--ema" in line] == [ema_warning(0.999, steps)]


def test_config_checks_ema_and_tta():
    with pytest.raises(UsageError, match="--ema must be at least 0 .off. and below 1, got 1.0"):
        make_config("quick", ema=1.0)
    with pytest.raises(UsageError, match="unknown tta 'mirror'; use none, flip, flip-shift"):
        make_config("quick", tta="mirror")


# --- the whitened first layer ------------------------------------------------------------------


def test_whitening_filters_decorrelate_the_patches_to_unit_variance():
    torch.manual_seed(0)
    mix = torch.randn(4, 4)  # correlated pixels: each 2x2 patch is a mix of independent sources
    images = [
        F.pixel_shuffle(torch.einsum("ij,bjhw->bihw", mix, torch.randn(400, 4, 5, 5)), 2)
        for _ in range(3)
    ]
    filters = whitening_filters(images, (2, 2), eps=0.0)
    assert filters.shape == (8, 1, 2, 2) and torch.equal(
        filters[1::2], -filters[0::2]
    )  # each with its negation
    out = torch.cat(
        [F.conv2d(x, filters[0::2]) for x in images]
    )  # every 2x2 patch, as the stem sees them
    moments = torch.einsum("bihw,bjhw->ij", out, out) / (out.numel() / 4)
    torch.testing.assert_close(moments, torch.eye(4), atol=1e-3, rtol=0)  # whitened
    norms = filters[0::2].flatten(1).norm(dim=1)
    assert torch.all(norms[:-1] <= norms[1:])  # the largest eigenvalue (shortest filter) first


def test_whitened_first_layer_is_frozen_and_as_many_filters_as_the_patches_give():
    from resnetlab.models import create_model

    images = [torch.randn(20, 1, 8, 8)]
    net = create_model("resnet20", in_chans=1, width=16)
    whiten_first_conv(net, images)
    assert not net.conv1.weight.requires_grad and net.layer1[0].conv1.weight.requires_grad
    assert torch.equal(net.conv1.weight, whitening_filters(images, (3, 3))[:16])
    torch.manual_seed(0)
    wide = create_model("resnet20", in_chans=1, width=32)  # 32 filters; 1 x 3 x 3 patches give 18
    initial = wide.conv1.weight.detach().clone()
    whiten_first_conv(wide, images)
    assert torch.equal(wide.conv1.weight[:18], whitening_filters(images, (3, 3)))
    assert torch.equal(wide.conv1.weight[18:], initial[18:]) and not wide.conv1.weight.requires_grad
    with pytest.raises(
        UsageError, match="--init whiten sets the first layer from the data and --init-from"
    ):
        make_config("quick", init="whiten", init_from="weights.pth")


# --- progressive resizing ----------------------------------------------------------------------


def test_progressive_sizes_grow_linearly_to_the_full_size():
    sizes = lambda **kw: make_config("quick", progressive_resize=16, **kw).epoch_sizes(28)  # noqa: E731
    assert sizes(epochs=12, progressive_until=0.5) == [16, 18, 20, 22, 24, 26] + [28] * 6
    assert sizes(epochs=3, progressive_until=1.0) == [16, 22, 28]
    assert sizes(epochs=4, progressive_until=0.0) == [16, 28, 28, 28]
    assert make_config("quick", epochs=5, progressive_resize=0).epoch_sizes(28) is None  # 0: off
    with pytest.raises(
        UsageError,
        match=r"--progressive-resize must be between 1 and 4096 pixels \(0: off\), got -1",
    ):
        make_config("quick", progressive_resize=-1)
    with pytest.raises(UsageError, match="--progressive-until must be between 0 and 1, got 1.5"):
        make_config("quick", progressive_resize=16, progressive_until=1.5)


def test_progressive_resizing_refuses_what_it_cannot_do():
    from resnetlab.data import Dataset
    from resnetlab.train.setup import epoch_sizes

    wide = Dataset(
        "wide",
        torch.zeros(4, 1, 8, 12, dtype=torch.uint8),
        torch.zeros(4, dtype=torch.int64),
        ["a"],
    )
    with pytest.raises(UsageError, match="grows square images; these are 8 x 12: add --resize"):
        epoch_sizes(make_config("quick", progressive_resize=4), wide)
    assert epoch_sizes(make_config("quick", progressive_resize=4, resize=10, epochs=2), wide) == [
        4,
        10,
    ]
    with pytest.raises(
        UsageError, match="--capture replays one batch shape and --progressive-resize changes it"
    ):
        build(make_config("quick", progressive_resize=16, capture=True, device="cpu"))


@pytest.mark.needs_fashion_mnist
def test_ema_run_saves_the_average_and_resumes_bit_identically(tmp_path, monkeypatch, ctrl_c_at):
    """With --ema the weights kept and evaluated are the average; a run stopped mid-epoch and
    resumed ends with the same average, the same training weights and the same metrics. The other
    recipe options are on too (alternating flips, flip TTA, the test set at the end only,
    progressive resizing: 16, 22, then 28 px, the whitened first layer)."""
    cfg = make_config(
        "quick",
        **dict(
            TINY,
            ema=0.9,
            val_split=128,
            alternate_flip=True,
            tta="flip",
            epoch_test=False,
            epochs=3,
            progressive_resize=16,
            progressive_until=1.0,
            init="whiten",
        ),
    )
    train(cfg, out=tmp_path / "straight", verbose=False)
    ctrl_c_at(9)  # inside epoch 2 of 3 (6 steps an epoch), trained at 22 px
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    assert load_checkpoint(tmp_path / "broken")["state"]["step_in_epoch"] > 0
    monkeypatch.undo()
    train(resume=tmp_path / "broken", verbose=False)

    for name in ("model.safetensors", "best.safetensors"):
        a, _ = load_weights(tmp_path / "straight" / name)
        b, _ = load_weights(tmp_path / "broken" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), (
            f"resumed {name} differs from the uninterrupted run"
        )
    ckpt_a, ckpt_b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "broken")
    assert all(torch.equal(ckpt_a["model"][k], ckpt_b["model"][k]) for k in ckpt_a["model"])
    assert metrics_less_timing(tmp_path / "straight") == metrics_less_timing(tmp_path / "broken")
    a, b = (
        json.loads((tmp_path / run / "summary.json").read_text()) for run in ("straight", "broken")
    )
    assert (a["kept_test_acc"], a["kept_test_acc_no_tta"]) == (
        b["kept_test_acc"],
        b["kept_test_acc_no_tta"],
    )

    saved, _ = load_weights(tmp_path / "straight" / "model.safetensors")
    assert all(
        torch.equal(saved[k], ckpt_a["average"][k]) for k in saved
    )  # the average is what is saved
    assert not torch.equal(
        saved["fc.weight"], ckpt_a["model"]["fc.weight"]
    )  # and it is not the trained weights
    whitened = build(cfg).raw_model.conv1.weight  # the frozen first layer ends as it started
    assert torch.equal(ckpt_a["model"]["conv1.weight"], whitened) and torch.equal(
        ckpt_b["model"]["conv1.weight"], whitened
    )


@pytest.mark.needs_fashion_mnist
def test_resuming_an_ema_run_without_its_average_is_one_clear_error(tmp_path, capsys):
    train(make_config("quick", **dict(TINY, epochs=2, ema=0.9)), out=tmp_path / "r", verbose=False)
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["average_updates"] == ckpt["state"]["global_step"]  # one update a step
    ckpt["state"]["epoch"], ckpt["state"]["history"] = 1, ckpt["state"]["history"][:1]
    good = dict(ckpt)
    del ckpt["average"]
    torch.save(ckpt, tmp_path / "r" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds no moving average of the weights"):
        train(resume=tmp_path / "r", verbose=False)
    ckpt["average"] = {"fc.weight": "not a tensor"}
    torch.save(ckpt, tmp_path / "r" / "checkpoint.pt")
    assert cli.main(["train", "--resume", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert "weight average holds no tensors" in err and len(err.splitlines()) == 1
    for count in (-1, "7"):  # the update count, which sets the decay's warm-up
        torch.save(dict(good, average_updates=count), tmp_path / "r" / "checkpoint.pt")
        assert cli.main(["train", "--resume", str(tmp_path / "r")]) == 1
        err = capsys.readouterr().err.strip()
        assert f"update count is {count!r}" in err and len(err.splitlines()) == 1


# --- test-time augmentation --------------------------------------------------------------------


class Pixels(nn.Module):
    """A 'model' whose logits are its input's pixels: what the views average becomes visible."""

    def forward(self, x):
        return x.flatten(1)


def test_flip_averages_the_image_and_its_mirror_image():
    x = torch.randn(2, 1, 5, 7)
    expected = (x + torch.flip(x, dims=[3])).flatten(1) / 2
    torch.testing.assert_close(TTAModel(Pixels(), "flip")(x), expected)


def test_flip_shift_adds_the_one_pixel_shifts_with_reflected_borders():
    x = torch.randn(2, 3, 6, 6)
    out = TTAModel(Pixels(), "flip-shift")(x).view_as(x)
    flip = lambda t: torch.flip(t, dims=[3])
    down_right = torch.zeros_like(
        x
    )  # the image moved one pixel down and right: pixel (i, j) shows (i-1, j-1)
    down_right[:, :, 1:, 1:] = x[:, :, :-1, :-1]
    up_left = torch.zeros_like(x)
    up_left[:, :, :-1, :-1] = x[:, :, 1:, 1:]
    expected = (x + flip(x)) / 4 + (down_right + flip(down_right) + up_left + flip(up_left)) / 8
    # away from the border (where reflection fills in) every view is an exact shift
    torch.testing.assert_close(out[:, :, 2:-2, 2:-2], expected[:, :, 2:-2, 2:-2])
    constant = torch.full((1, 1, 4, 4), 3.0)  # reflected borders keep a constant image constant
    torch.testing.assert_close(TTAModel(Pixels(), "flip-shift")(constant), constant.flatten(1))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(TTAModel(Pixels(), "flip-shift")(channels_last), out.flatten(1))


def test_with_tta_none_is_the_model_itself():
    net = Pixels()
    assert with_tta(net, "none") is net
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        TTAModel(net, "rotate")


@pytest.mark.parametrize("mode", ["flip", "flip-shift"])
def test_with_tta_wraps_the_model_in_the_views_asked_for(mode):
    x = torch.randn(2, 1, 5, 7)
    wrapped = with_tta(Pixels(), mode)
    torch.testing.assert_close(wrapped(x), TTAModel(Pixels(), mode)(x))
    assert not torch.allclose(wrapped(x), Pixels()(x))  # not the bare model
    torch.testing.assert_close(TTAModel(Pixels())(x), TTAModel(Pixels(), "flip")(x))  # the default
    with pytest.raises(ValueError, match=r"'rotate'; use flip, flip-shift$"):
        TTAModel(Pixels(), "rotate")


@pytest.mark.needs_fashion_mnist
def test_final_test_figure_is_the_kept_weights_with_tta_and_without(tmp_path):
    """--tta: the summary's kept test figure is the kept weights evaluated through the views (the
    same wrapper as `resnetlab eval --tta`); the plain figure is reported beside it; the per-epoch
    evaluations and the training itself are unchanged."""
    base = dict(TINY, val_split=128, amp=False)
    plain = train(
        make_config("quick", **dict(base, tta="none")), out=tmp_path / "plain", verbose=False
    )
    summary = train(
        make_config("quick", **dict(base, tta="flip-shift")), out=tmp_path / "tta", verbose=False
    )
    assert summary["tta"] == "flip-shift" and "tta" not in plain
    assert summary["kept_test_acc_no_tta"] == plain["kept_test_acc"]
    assert metrics_less_timing(tmp_path / "plain") == metrics_less_timing(tmp_path / "tta")
    a, _ = load_weights(tmp_path / "plain" / "best.safetensors")
    b, _ = load_weights(tmp_path / "tta" / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    parts = build(make_config("quick", **dict(base, tta="flip-shift")))
    parts.raw_model.load_state_dict(b)
    again = evaluate(with_tta(parts.raw_model, "flip-shift"), parts.loaders.test, parts.device)
    assert again["acc"] == summary["kept_test_acc"] and again["loss"] == pytest.approx(
        summary["kept_test_loss"]
    )
    r = json.loads((tmp_path / "tta" / "summary.json").read_text())
    assert r["kept_test_acc"] == summary["kept_test_acc"]


# --- the test set at the end only -----------------------------------------------------------------


@pytest.mark.needs_fashion_mnist
def test_no_epoch_test_leaves_the_test_set_to_the_end(tmp_path):
    base = dict(TINY, val_split=128, amp=False)
    every = train(
        make_config("quick", **dict(base, epoch_test=True)), out=tmp_path / "every", verbose=False
    )
    end = train(
        make_config("quick", **dict(base, epoch_test=False)), out=tmp_path / "end", verbose=False
    )
    rows = list(csv.DictReader((tmp_path / "end" / "metrics.csv").open()))
    assert len(rows) == 2 and all(r["test_acc"] == "" and r["val_acc"] for r in rows)
    for key in ("test_acc", "test_loss", "kept_test_acc", "kept_test_loss", "best_epoch"):
        assert end[key] == every[key], key  # the same weights, measured once at the end
    assert (tmp_path / "end" / "curves.png").stat().st_size > 0
