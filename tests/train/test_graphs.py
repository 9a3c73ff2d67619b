"""The CUDA-graph path's plumbing on the CPU, with the capture itself taken out: a stand-in
`capture(fn)` keeps `fn` and `replay()` calls it, as a graph replays what it recorded.

What runs on the GPU alone (capture, replay speed, sync-freedom) is in test_cuda.py."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from resnetlab.data import Dataset, Loader
from resnetlab.errors import UsageError
from resnetlab.inference.evaluation import Evaluator
from resnetlab.report.observer import Observer
from resnetlab.train import graphs, make_config, steps
from resnetlab.train.graphs import CapturedEvaluator, CapturedStep, SGDUpdate
from resnetlab.train.steps import EagerStep, WeightAverage, make_optimizer


class FakeGraph:
    def __init__(self, fn):
        self.fn, self.replays = fn, 0

    def replay(self):
        self.replays += 1
        self.fn()


class FakeGraphs:
    captured: list = []

    @staticmethod
    def side_stream(device):
        return contextlib.nullcontext()

    @classmethod
    def capture(cls, fn):
        graph = FakeGraph(fn)  # recording runs nothing
        cls.captured.append(graph)
        return graph


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def batches(n=20, b=8):
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(b, 1, 6, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (b,), generator=g),
        )
        for _ in range(n)
    ]


def test_the_graph_captures_the_eager_loops_step_function():
    # both take steps.Step's take_step, which runs steps.train_step
    assert graphs.CapturedStep.take_step is steps.EagerStep.take_step is steps.Step.take_step


@pytest.mark.parametrize(
    "momentum, nesterov, weight_decay, ema",
    [(0.0, False, 0.0, 0.0), (0.9, True, 5e-4, 0.8), (0.9, False, 1e-3, 0.0)],
)
def test_captured_step_trains_as_the_eager_step_for_20_steps(momentum, nesterov, weight_decay, ema):
    cfg = make_config(
        "quick",
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        label_smoothing=0.1,
    )
    eager_net, graph_net = tiny_net(), tiny_net()
    average = lambda net: (
        WeightAverage(net, ema) if ema else None
    )  # --ema: updated inside the graph
    eager = EagerStep(
        eager_net,
        make_optimizer(eager_net, cfg),
        torch.device("cpu"),
        amp=False,
        label_smoothing=cfg.label_smoothing,
        average=average(eager_net),
    )
    FakeGraphs.captured = []
    captured = CapturedStep(
        graph_net,
        make_optimizer(graph_net, cfg),
        torch.device("cpu"),
        amp=False,
        label_smoothing=cfg.label_smoothing,
        average=average(graph_net),
        graphs=FakeGraphs,
    )
    for runner in (eager, captured):
        runner.start_epoch([0.0, 0.0, 0.0])
    for i, (x, y) in enumerate(batches()):
        lr = 0.1 * (1 - i / 20)  # the rate changes every step: a graph must read it at replay
        eager(x, y, lr)
        captured(x, y, lr)
    assert (
        len(FakeGraphs.captured) == 1 and FakeGraphs.captured[0].replays == 20 - graphs.WARMUP_STEPS
    )
    for (name, a), b in zip(eager_net.state_dict().items(), graph_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    torch.testing.assert_close(eager.sums, captured.sums)
    if ema:
        ours, theirs = captured.average.model.state_dict(), eager.average.model.state_dict()
        for name in theirs:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-12, atol=1e-12, msg=name)
        assert not torch.equal(ours["0.weight"], graph_net.state_dict()["0.weight"])
    if momentum:  # the optimizer's own buffers: a checkpoint holds the same state either way
        ours = [captured.optimizer.state[p]["momentum_buffer"] for p in graph_net.parameters()]
        theirs = [eager.optimizer.state[p]["momentum_buffer"] for p in eager_net.parameters()]
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_captured_step_refuses_another_batch_shape():
    cfg = make_config("quick")
    net = tiny_net()
    step = CapturedStep(
        net,
        make_optimizer(net, cfg),
        torch.device("cpu"),
        amp=False,
        graphs=FakeGraphs,
        warmup_steps=0,
    )
    step.start_epoch([0.0, 0.0, 0.0])
    x, y = batches(1)[0]
    step(x, y, 0.1)
    with pytest.raises(UsageError, match="drop the last partial batch"):
        step(x[:3], y[:3], 0.1)


def test_captured_update_is_sgd_only():
    net = tiny_net()
    with pytest.raises(UsageError, match="AdamW runs eagerly"):
        SGDUpdate(torch.optim.AdamW(net.parameters()), torch.zeros(()))


def test_captured_evaluator_matches_evaluate_with_a_last_partial_batch():
    g = torch.Generator().manual_seed(2)
    ds = Dataset(
        "t",
        torch.randint(0, 256, (37, 1, 6, 6), generator=g, dtype=torch.uint8),
        torch.arange(37) % 3,
    )
    loader = Loader(ds, 8, shuffle=False)
    net = tiny_net().float()
    FakeGraphs.captured = []
    captured = CapturedEvaluator(net, torch.device("cpu"), num_classes=3, graphs=FakeGraphs)
    expected = Evaluator(net, torch.device("cpu"), num_classes=3)(loader)
    for _ in range(2):  # a second evaluation replays the graph of the first
        result = captured(loader)
        assert result["count"] == 37 and torch.equal(result["confusion"], expected["confusion"])
        assert result["acc"] == expected["acc"] and result["loss"] == pytest.approx(
            expected["loss"], rel=1e-6
        )
    assert len(FakeGraphs.captured) == 1


def test_capture_needs_cuda():
    from resnetlab.train.setup import build

    with pytest.raises(UsageError, match="--capture needs one process on a CUDA device"):
        build(make_config("quick", capture=True, device="cpu", progressive_resize=0))


class CheckingGraphs(FakeGraphs):
    """FakeGraphs that records, at each capture, whether every trainable parameter already had its
    momentum buffer: one created inside a real capture would be zeroed again by every replay."""

    optimizer = None
    buffers_at_capture: list = []

    @classmethod
    def capture(cls, fn):
        state = cls.optimizer.state
        cls.buffers_at_capture.append(
            all(
                state[p].get("momentum_buffer") is not None
                for group in cls.optimizer.param_groups
                for p in group["params"]
            )
        )
        return super().capture(fn)


@pytest.mark.parametrize("warmup_steps", [0, graphs.WARMUP_STEPS])
def test_captured_update_is_torch_sgds_in_float32_for_20_steps(warmup_steps):
    """float32 parameters: the rate tensor is float32 (the lists' dtype: foreach's one-kernel
    path), and the weights after 20 captured steps are torch.optim.SGD's; with warmup_steps=0 the
    momentum buffers exist before the capture."""
    cfg = make_config("quick", momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.0)
    theirs_net, ours_net = tiny_net().float(), tiny_net().float()
    theirs = make_optimizer(theirs_net, cfg)
    ours = make_optimizer(ours_net, cfg)
    CheckingGraphs.optimizer, CheckingGraphs.buffers_at_capture = ours, []
    step = CapturedStep(
        ours_net,
        ours,
        torch.device("cpu"),
        amp=False,
        graphs=CheckingGraphs,
        warmup_steps=warmup_steps,
    )
    assert step.neg_lr.dtype == torch.float32
    step.start_epoch([0.0, 0.0, 0.0])
    for i, (x, y) in enumerate(batches()):
        x, lr = x.float(), 0.1 * (1 - i / 20)
        step(x, y, lr)
        for group in theirs.param_groups:
            group["lr"] = lr
        theirs.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(theirs_net(x), y).backward()
        theirs.step()
    assert CheckingGraphs.buffers_at_capture == [True]
    for (name, a), b in zip(theirs_net.state_dict().items(), ours_net.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_captured_evaluator_takes_its_shape_from_a_full_batch():
    """A split smaller than one batch (a small validation split, evaluated first) runs eagerly;
    the graph is captured at the full batch of the next split, and both figures are evaluate's."""
    g = torch.Generator().manual_seed(3)

    def loader(n):
        ds = Dataset(
            "t",
            torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8),
            torch.arange(n) % 3,
        )
        return Loader(ds, 8, shuffle=False)

    small, big = loader(5), loader(37)
    net = tiny_net().float()
    FakeGraphs.captured = []
    captured = CapturedEvaluator(net, torch.device("cpu"), num_classes=3, graphs=FakeGraphs)
    for _ in range(2):  # as after each epoch: validation, then test
        for split in (small, big):
            result, expected = (
                captured(split),
                Evaluator(net, torch.device("cpu"), num_classes=3)(split),
            )
            assert torch.equal(result["confusion"], expected["confusion"])
            assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert len(FakeGraphs.captured) == 1 and list(captured.x.shape) == [8, 1, 6, 6]
    assert (
        FakeGraphs.captured[0].replays == 3 + 4
    )  # the big split's 4 full batches, less the warm-up


class RaisingGraphs(FakeGraphs):
    """A capture that raises, as a driver, a kernel or an op that cannot be captured would."""

    @classmethod
    def capture(cls, fn):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def test_a_failed_capture_chosen_by_default_trains_on_op_by_op():
    """The step says why once and runs as EagerStep from then on, on its own optimizer (momentum
    buffers) and sums: the weights after 20 steps are the eager step's."""
    cfg = make_config("quick", momentum=0.9, nesterov=True, weight_decay=5e-4)
    eager_net, graph_net = tiny_net(), tiny_net()
    eager = EagerStep(eager_net, make_optimizer(eager_net, cfg), torch.device("cpu"), amp=False)
    fallback = graphs.CaptureFallback()
    heard = []

    class Heard(Observer):
        def on_fallback(self, reason: str) -> None:
            heard.append(reason)

    fallback.observers = [Heard()]
    captured = CapturedStep(
        graph_net,
        make_optimizer(graph_net, cfg),
        torch.device("cpu"),
        amp=False,
        graphs=RaisingGraphs,
        fallback=fallback,
    )
    for runner in (eager, captured):
        runner.start_epoch([0.0, 0.0, 0.0])
    for i, (x, y) in enumerate(batches()):
        eager(x, y, 0.1 * (1 - i / 20))
        captured(x, y, 0.1 * (1 - i / 20))
    assert captured.eager and captured.graph is None
    assert heard == fallback.reasons and len(heard) == 1
    assert heard[0] == (
        "capturing the training step failed "
        "(RuntimeError: operation not permitted when stream is capturing)"
    )
    for (name, a), b in zip(eager_net.state_dict().items(), graph_net.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=name)
    torch.testing.assert_close(captured.sums, eager.sums)


def test_a_failed_capture_asked_for_is_an_error():
    net = tiny_net()
    step = CapturedStep(
        net,
        make_optimizer(net, make_config("quick")),
        torch.device("cpu"),
        amp=False,
        graphs=RaisingGraphs,
        warmup_steps=0,
    )
    step.start_epoch([0.0, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="stream is capturing"):
        step(*batches(1)[0], 0.1)
    ds = Dataset("t", torch.zeros(16, 1, 6, 6, dtype=torch.uint8), torch.arange(16) % 3)
    evaluator = CapturedEvaluator(
        net.float(), torch.device("cpu"), num_classes=3, graphs=RaisingGraphs
    )
    with pytest.raises(RuntimeError, match="stream is capturing"):
        evaluator(Loader(ds, 8, shuffle=False))


def test_a_failed_evaluation_capture_chosen_by_default_evaluates_op_by_op():
    g = torch.Generator().manual_seed(4)
    ds = Dataset(
        "t",
        torch.randint(0, 256, (37, 1, 6, 6), generator=g, dtype=torch.uint8),
        torch.arange(37) % 3,
    )
    loader, net = Loader(ds, 8, shuffle=False), tiny_net().float()
    fallback = graphs.CaptureFallback()
    captured = CapturedEvaluator(
        net, torch.device("cpu"), num_classes=3, graphs=RaisingGraphs, fallback=fallback
    )
    expected = Evaluator(net, torch.device("cpu"), num_classes=3)(loader)
    for _ in range(2):
        result = captured(loader)
        assert result["count"] == 37 and torch.equal(result["confusion"], expected["confusion"])
        assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert len(fallback.reasons) == 1 and fallback.reasons[0].startswith("capturing the evaluation")


@pytest.mark.needs_fashion_mnist
def test_a_run_whose_default_capture_fails_finishes_and_says_why(tmp_path, monkeypatch, capsys):
    """Capture chosen by default (cfg.capture None), made to apply on the CPU and to raise: the run
    finishes op by op, prints one line, and config.json, events.jsonl and report.html record it."""
    import json

    from resnetlab.report.events import read_events
    from resnetlab.train import setup, train

    monkeypatch.setattr(setup, "resolve_capture", lambda *args, **kwargs: True)
    monkeypatch.setattr(graphs, "Graphs", RaisingGraphs)
    monkeypatch.setattr(
        CapturedStep.__init__,
        "__kwdefaults__",
        {**CapturedStep.__init__.__kwdefaults__, "graphs": RaisingGraphs},
    )
    monkeypatch.setattr(
        CapturedEvaluator.__init__,
        "__kwdefaults__",
        {**CapturedEvaluator.__init__.__kwdefaults__, "graphs": RaisingGraphs},
    )
    cfg = make_config(
        "quick",
        model="resnet20",
        model_kwargs={"width": 8},
        subset=256,
        batch_size=32,
        epochs=1,
        val_split=0,
        progressive_resize=0,
        tta="none",
        device="cpu",
    )
    summary = train(cfg, out=tmp_path / "run")
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "running op by op" in line]
    assert len(notes) == 1  # the step's (256 test images make no full evaluation batch)
    assert "capturing the training step failed (RuntimeError: operation not permitted" in notes[0]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["capture"] is False
    assert config["capture_fallback"].startswith("capturing the training step failed")
    events = [e for e in read_events(tmp_path / "run") if e["event"] == "capture_fallback"]
    assert [e["reason"] for e in events] == config["capture_fallback"].split("; ")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "CUDA graphs fell back" in html and "running op by op from then on" in html
    assert summary["epochs"] == 1 and summary["test_count"] == 256


def test_only_capture_chosen_by_default_may_fall_back(monkeypatch):
    from resnetlab.data import Dataset as Data
    from resnetlab.train import setup

    monkeypatch.setattr(setup, "resolve_capture", lambda *args, **kwargs: True)
    images = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    ds = Data("t", images, torch.arange(64) % 10, [str(i) for i in range(10)])
    splits = setup.Splits(ds, None, ds)
    small = dict(model="resnet20", model_kwargs={"width": 4}, batch_size=16, val_split=0)
    small.update(progressive_resize=0, init="default", device="cpu")
    by_default = setup.build(make_config("quick", **small), splits=splits)
    asked = setup.build(make_config("quick", capture=True, **small), splits=splits)
    assert by_default.step.fallback is by_default.capture_fallback is not None
    assert by_default.evaluator.fallback is by_default.capture_fallback
    assert asked.capture_fallback is None and asked.step.fallback is None
    assert by_default.describe()["capture"] is True and "capture_fallback" not in asked.describe()
    by_default.capture_fallback("training step", RuntimeError("no"))
    described = by_default.describe()
    assert described["capture"] is False
    assert described["capture_fallback"] == "capturing the training step failed (RuntimeError: no)"
