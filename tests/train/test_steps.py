"""The training step's pieces on tiny modules (fast enough for mutation testing): the optimizer's
parameter groups, the textbook's init, one step's update and running sums, and the eager step's
learning rate, gradients and weight average."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.train import make_config
from resnetlab.train.steps import EagerStep, WeightAverage, init_weights, make_optimizer, train_step


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_decays_conv_and_linear_weights_only(nesterov):
    model = tiny()
    cfg = make_config(optimizer="sgd", lr=0.3, momentum=0.8, nesterov=nesterov, weight_decay=5e-4)
    opt = make_optimizer(model, cfg)
    assert type(opt) is torch.optim.SGD
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(2, 1, 3, 3), (3, 8)]
    assert [p.shape for p in no_decay["params"]] == [(2,), (2,), (2,), (3,)]  # biases, BN
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)
    for group in opt.param_groups:
        assert (group["lr"], group["momentum"], group["nesterov"]) == (0.3, 0.8, nesterov)
        assert group["foreach"] is True
    assert make_optimizer(model, cfg, foreach=False).param_groups[0]["foreach"] is False


def test_adamw_takes_the_learning_rate_and_the_same_groups():
    model = tiny()
    opt = make_optimizer(model, make_config(optimizer="adamw", lr=0.01, weight_decay=0.05))
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 0.01 and g["foreach"] is True for g in opt.param_groups)


def test_xavier_init_redraws_conv_and_linear_weights_and_nothing_else():
    model, before = tiny(), tiny().state_dict()
    init_weights(model, "default")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    init_weights(model, "xavier")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"0.weight", "3.weight"}
    bound = (6 / (9 + 18)) ** 0.5  # xavier-uniform for the conv: fan_in 9, fan_out 18
    assert model[0].weight.abs().max() <= bound


@pytest.mark.parametrize("soft", [False, True])
def test_a_step_updates_once_and_adds_loss_sum_correct_and_count(soft):
    model = tiny().eval()  # eval: batch norm's statistics stay fixed, so the loss can be recomputed
    x = torch.randn(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    target = F.one_hot(y, 3).float() * 0.7 + 0.1 if soft else y
    with torch.no_grad():
        out = model(x)
        loss = F.cross_entropy(out, target, label_smoothing=0.2)
        correct = (out.argmax(1) == y).sum()
    sums = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    calls = []
    train_step(
        model,
        x,
        target,
        sums,
        optimizer_step=lambda: calls.append(1),
        label_smoothing=0.2,
        amp=False,
    )
    assert calls == [1]
    expected = torch.tensor([1 + float(loss) * 5, 2 + float(correct), 3 + 5], dtype=torch.float64)
    torch.testing.assert_close(sums, expected)
    assert sums.dtype == torch.float64


def test_a_steps_gradient_is_scaled_by_the_loss_weight():
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    grads = []
    for weight in (None, 1.0, 0.25):  # None: the default, an even share
        model = tiny().eval()
        given = {} if weight is None else {"loss_weight": weight}
        sums = torch.zeros(3, dtype=torch.float64)
        step = dict(optimizer_step=lambda: None, label_smoothing=0.0, amp=False)
        train_step(model, x, y, sums, **step, **given)
        grads.append(model[3].weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
    torch.testing.assert_close(grads[2], grads[1] * 0.25)


def test_the_eager_step_sets_the_lr_starts_from_fresh_gradients_and_updates_the_average():
    model = tiny()
    opt = torch.optim.SGD(
        [{"params": [model[0].weight]}, {"params": list(model[3].parameters())}], lr=1.0
    )
    average = WeightAverage(model, 0.5)
    step = EagerStep(
        model, opt, torch.device("cpu"), amp=False, label_smoothing=0.0, average=average
    )
    assert torch.equal(step.sums, torch.zeros(3, dtype=torch.float64))
    step.start_epoch([4.0, 2.0, 8.0])
    assert step.sums.tolist() == [4.0, 2.0, 8.0] and step.sums.dtype == torch.float64
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    model[0].weight.grad = torch.full_like(model[0].weight, 1e6)  # a stale gradient: must not count
    before = model[0].weight.detach().clone()
    step(x, y, 0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    assert (model[0].weight - before).abs().max() < 1.0  # no 1e6 * 0.01 step from the stale one
    assert step.sums[2] == 12.0 and int(average.updates) == 1
    expected = before + (model[0].weight.detach() - before) * 0.9  # the first update's weight: 9/10
    torch.testing.assert_close(average.model[0].weight, expected)


def test_the_eager_step_passes_the_loss_weight_and_smooths_no_labels_by_default():
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        loss = F.cross_entropy(tiny().eval()(x), y)  # no label smoothing
    grads = []
    for weight in (1.0, 0.25, None):
        model = tiny().eval()
        step = EagerStep(
            model, torch.optim.SGD(model.parameters(), lr=0.0), torch.device("cpu"), amp=False
        )
        step(x, y, 0.0) if weight is None else step(x, y, 0.0, weight)
        grads.append(model[3].weight.grad.clone())
        if weight is None:
            torch.testing.assert_close(step.sums[0], loss.double() * 4)
    torch.testing.assert_close(grads[1], grads[0] * 0.25)
    assert torch.equal(grads[2], grads[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_average_moves_by_the_warm_up_weight_in_the_weights_own_precision(dtype):
    model = tiny().to(dtype)
    average = WeightAverage(model, 0.999)
    assert average.updates.dtype == torch.int64  # a float32 count stops at 2**24 updates
    for t in range(3):
        before = average.model[0].weight.clone()
        with torch.no_grad():
            model[0].weight.add_(1.0 + t)
        average.update()
        weight = torch.tensor(9.0 / (10 + t), dtype=torch.float64).to(dtype)  # rounded once
        assert torch.equal(average.model[0].weight, before + (model[0].weight - before) * weight)
    assert int(average.updates) == 3


def test_an_average_of_a_model_without_weights_still_counts_its_updates():
    average = WeightAverage(nn.Flatten(), 0.9)
    average.update()
    assert int(average.updates) == 1
