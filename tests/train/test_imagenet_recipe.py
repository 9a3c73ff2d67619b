"""The imagenet preset and its ingredients in training: mixed batches through the eager and the
captured step, a mixed run that resumes bit-identically, the preset's scaling with --batch-size,
and the preset end to end on a small Fashion-MNIST subset."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_graphs import FakeGraphs, batches, tiny_net

from resnetlab import cli
from resnetlab.data.mixing import Mix, mix_batch
from resnetlab.errors import Interrupted, UsageError
from resnetlab.train import make_config, train
from resnetlab.train.checkpoint import load_checkpoint
from resnetlab.train.graphs import CapturedStep
from resnetlab.train.presets import PRESETS, imagenet_ema
from resnetlab.train.steps import EagerStep, make_optimizer, train_step
from resnetlab.weights import load_weights

TINY = dict(
    model="resnet20",
    model_kwargs={"width": 8},
    subset=512,
    batch_size=64,
    epochs=2,
    seed=3,
    val_split=0,
    epoch_test=True,
    tta="none",
)


def mixed_batches():
    return [
        mix_batch(x, y, 3, Mix("mixup", 0.3) if i % 2 else Mix("cutmix", 0.75, (1, 2, 4, 5)))
        for i, (x, y) in enumerate(batches())
    ]


def test_a_mixed_batch_trains_on_probability_targets_counting_the_dominant_label():
    net = tiny_net()
    (x, y), (_, labels) = mixed_batches()[1], batches()[1]
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        out = net(x)
    train_step(net, x, y, sums, optimizer_step=lambda: None, label_smoothing=0.1, amp=False)
    # the loss of probability targets, smoothed: -sum((0.9 t + 0.1 / 3) log softmax)
    smoothed = 0.9 * y + 0.1 / 3
    expected = -(smoothed * out.log_softmax(1)).sum(1).mean()
    assert math.isclose(sums[0] / len(x), float(expected), rel_tol=1e-9)
    assert sums[1] == (out.argmax(1) == y.argmax(1)).sum()  # against the dominant label
    # lam 0.3: the partner's (the previous example's) label dominates, unlike its own
    assert torch.equal(y.argmax(1), labels.roll(1, 0)) and not torch.equal(
        labels, labels.roll(1, 0)
    )


def test_the_captured_step_takes_mixed_batches_as_the_eager_step():
    cfg = make_config("quick", momentum=0.9, label_smoothing=0.1)
    eager_net, graph_net = tiny_net(), tiny_net()
    device = torch.device("cpu")
    eager = EagerStep(eager_net, make_optimizer(eager_net, cfg), device, amp=False)
    FakeGraphs.captured = []
    captured = CapturedStep(
        graph_net, make_optimizer(graph_net, cfg), device, amp=False, graphs=FakeGraphs
    )
    for runner in (eager, captured):
        runner.start_epoch([0.0, 0.0, 0.0])
    for x, y in mixed_batches():
        eager(x, y, 0.05)
        captured(x, y, 0.05)
    assert FakeGraphs.captured and FakeGraphs.captured[0].replays > 0
    for a, b in zip(eager_net.state_dict().values(), graph_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eager.sums, captured.sums)


@pytest.mark.needs_fashion_mnist
def test_a_mixed_run_resumes_bit_identically(tmp_path, monkeypatch, ctrl_c_at):
    cfg = make_config(
        "quick", **dict(TINY, mixup=0.2, cutmix=1.0, trivial_augment=True, eval_crop=24)
    )
    train(cfg, out=tmp_path / "straight", verbose=False)
    ctrl_c_at(11)  # inside epoch 2 of 2 (8 steps an epoch)
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    assert load_checkpoint(tmp_path / "broken")["state"]["step_in_epoch"] > 0
    monkeypatch.undo()
    train(resume=tmp_path / "broken", verbose=False)
    a, meta = load_weights(tmp_path / "straight" / "model.safetensors")
    b, _ = load_weights(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    rows = [
        (tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("straight", "broken")
    ]
    strip = lambda lines: [r.rsplit(",", 2)[0] for r in lines]  # noqa: E731
    assert strip(rows[0]) == strip(rows[1])
    assert meta["eval_crop"] == 24
    plain = make_config("quick", **TINY)
    train(plain, out=tmp_path / "plain", verbose=False)
    c, _ = load_weights(tmp_path / "plain" / "model.safetensors")
    assert not torch.equal(a["fc.weight"], c["fc.weight"])  # mixing changed the training


def test_the_imagenet_preset_scales_its_rate_and_average_with_the_batch():
    cfg = make_config("imagenet", device="cpu")
    assert (cfg.model, cfg.resize, cfg.eval_resize, cfg.eval_crop) == ("resnet50", 176, 232, 224)
    assert (cfg.mixup, cfg.cutmix, cfg.erasing, cfg.label_smoothing) == (0.2, 1.0, 0.1, 0.1)
    assert cfg.trivial_augment and cfg.flip and cfg.schedule == "cosine"
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.weight_decay) == (1024, 0.5, 600, 2e-5)
    assert math.isclose(cfg.warmup * cfg.epochs, 5)
    assert math.isclose(cfg.ema, 0.99996585, abs_tol=1e-8)
    # 32 steps of the per-step decay are one of torchvision's updates, adjusted as its train.py does
    adjust = 1024 * 32 / 600
    assert math.isclose(cfg.ema**32, 1 - (1 - 0.99998) * adjust, rel_tol=1e-12)
    half = make_config("imagenet", batch_size=256)
    assert half.lr == 0.125 and math.isclose(half.ema, imagenet_ema(256, 600))
    assert half.ema > cfg.ema  # more steps per epoch: each moves the average less
    assert make_config("imagenet", batch_size=256, lr=0.3, ema=0.9).lr == 0.3
    assert make_config("imagenet", batch_size=256, lr=0.3, ema=0.9).ema == 0.9
    assert make_config("imagenet", epochs=1).ema < 0.99  # a short run: a short average
    assert "imagenet" in PRESETS and make_config("quick", batch_size=256).lr == 0.2


def test_recipe_settings_are_checked():
    for bad, match in (
        (dict(mixup=-1.0), "--mixup"),
        (dict(cutmix=float("nan")), "--cutmix"),
        (dict(eval_crop=0), "--eval-crop"),
        (dict(eval_resize=30, eval_crop=31), "--eval-crop 31 is larger"),
        (dict(trivial_augment="yes"), "--trivial-augment"),
        (dict(random_resized_crop=True), "replaces the padded crop"),  # quick pads its crops
    ):
        with pytest.raises(UsageError, match=match):
            make_config("quick", **bad)


@pytest.mark.needs_fashion_mnist
def test_the_imagenet_preset_trains_on_the_default_data(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--preset",
            "imagenet",
            "--data",
            "fashion-mnist",
            "--epochs",
            "1",
            "--subset",
            "256",
            "--batch-size",
            "128",
            "--model",
            "resnet18",
            "--resize",
            "32",
            "--eval-resize",
            "36",
            "--eval-crop",
            "32",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--random-resized-crop crops full-resolution images" in err  # said, not applied
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["lr"] == 0.0625 and config["eval_crop"] == 32 and config["mixup"] == 0.2
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # the header and one epoch
