"""The captured GPU path on a real GPU (skipped without CUDA): a graph step trains as the eager
step, resume works, an epoch needs no host synchronisation, --compile compiles once.

Run by `benchmarks/gpu.sh` on the GPU machine (its `tests` step) as well as by pytest there."""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.needs_fashion_mnist,
]

from resnetlab.errors import Interrupted  # noqa: E402
from resnetlab.train import make_config, train  # noqa: E402
from resnetlab.train.checkpoint import load_checkpoint  # noqa: E402
from resnetlab.train.graphs import CapturedStep  # noqa: E402
from resnetlab.train.setup import build  # noqa: E402
from resnetlab.train.steps import EagerStep, make_optimizer  # noqa: E402
from resnetlab.weights import load_weights  # noqa: E402

SMALL = dict(model="resnet20", subset=2048, batch_size=256, epochs=2, val_split=0, device="cuda")


def test_graph_step_agrees_with_the_eager_step_for_20_steps():
    cfg = make_config(
        "d2l",
        model="resnet20",
        subset=20 * 128,
        batch_size=128,
        resize=None,
        amp=True,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        device="cuda",
    )
    parts = build(cfg)
    batches = [(x.clone(), y.clone()) for x, y in parts.loaders.train][:20]
    eager_net, graph_net = parts.raw_model, build(cfg).raw_model
    smoothing = cfg.label_smoothing
    eager = EagerStep(
        eager_net, make_optimizer(eager_net, cfg), parts.device, amp=True, label_smoothing=smoothing
    )
    captured = CapturedStep(
        graph_net, make_optimizer(graph_net, cfg), parts.device, amp=True, label_smoothing=smoothing
    )
    for runner in (eager, captured):
        runner.start_epoch([0.0, 0.0, 0.0])
    for i, (x, y) in enumerate(batches):
        lr = 0.05 * (1 - i / 20)
        eager(x, y, lr)
        captured(x, y, lr)
    assert captured.graph is not None
    for (name, a), b in zip(eager_net.state_dict().items(), graph_net.state_dict().values()):
        if (
            a.is_floating_point()
        ):  # bf16 autocast: kernels may differ between the two, so agree to its rounding
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2, msg=name)
    torch.testing.assert_close(eager.sums, captured.sums, rtol=1e-2, atol=1.0)


def test_captured_run_resumes_after_an_interruption(tmp_path, monkeypatch, ctrl_c_at):
    """A real 2-epoch run stopped after epoch 1 (as Ctrl-C does, tests/train/test_train.py) and
    resumed ends where the unbroken run ends: the same schedule, the same first epoch, and a second
    epoch that differs only by what a GPU's kernels may (atomics, autotuned algorithms)."""
    cfg = make_config("quick", **SMALL, epoch_test=True, tta="none")  # test figures every epoch
    whole = train(cfg, out=tmp_path / "whole", verbose=False)
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["capture"] is True
    steps_per_epoch = 2048 // 256  # the captured step drops no full batch: 2048 is 8 of them
    ctrl_c_at(steps_per_epoch)  # during the epoch's last step: the run stops after epoch 1
    with pytest.raises(Interrupted, match="after epoch 1"):
        train(cfg, out=tmp_path / "split", verbose=False)
    assert load_checkpoint(tmp_path / "split")["state"]["epoch"] == 1
    monkeypatch.undo()
    resumed = train(resume=tmp_path / "split", verbose=False)
    state = load_checkpoint(tmp_path / "split")["state"]
    assert state["epoch"] == 2 and state["global_step"] == 2 * steps_per_epoch
    rows = [
        list(csv.DictReader((tmp_path / run / "metrics.csv").open())) for run in ("whole", "split")
    ]
    for a, b in zip(*rows):
        assert float(a["lr"]) == float(b["lr"])  # one schedule: 2 epochs in both
        for key in ("train_loss", "test_loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-2), key
    assert resumed["test_acc"] == pytest.approx(whole["test_acc"], abs=0.01)
    a, _ = load_weights(tmp_path / "whole" / "model.safetensors")
    b, _ = load_weights(tmp_path / "split" / "model.safetensors")
    for name in a:
        if a[name].is_floating_point():
            torch.testing.assert_close(b[name], a[name], rtol=2e-2, atol=2e-2, msg=name)


def test_a_captured_epoch_makes_no_host_sync(monkeypatch):
    """Between the documented sync points (SYNC_EVERY steps, the epoch's end) nothing waits for the GPU."""
    parts = build(make_config("quick", **dict(SMALL, subset=40 * 256, epochs=1)))
    loader = parts.loaders.train
    loader.set_epoch(0)
    batches = iter(loader)  # the first batch sends the epoch's augmentation to the GPU in one copy
    parts.step.start_epoch([0.0, 0.0, 0.0])
    first = next(batches)
    for _ in range(4):  # warm-up and capture allocate and autotune: outside the checked stretch
        parts.step(*first, 0.1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            parts.step(x, y, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert parts.step.sums.tolist()[2] == 40 * 256 + 3 * 256


def test_the_rate_is_float32_and_a_failed_default_capture_runs_on_op_by_op():
    """The captured update's rate tensor has the parameters' dtype (foreach's one-kernel path), and
    a capture chosen by default that raises leaves the run training op by op."""
    from resnetlab.train.graphs import Graphs

    class Raising(Graphs):
        @staticmethod
        def capture(fn):
            raise RuntimeError("a capture that fails, as a driver or an op may")

    parts = build(make_config("quick", **dict(SMALL, subset=8 * 256, epochs=1)))
    assert parts.step.neg_lr.dtype == torch.float32
    assert parts.capture_fallback is not None  # capture chosen by default
    parts.step.graphs = Raising
    parts.step.start_epoch([0.0, 0.0, 0.0])
    before = [p.detach().clone() for p in parts.raw_model.parameters()]
    for x, y in parts.loaders.train:
        parts.step(x, y, 0.1)
    assert parts.step.eager and len(parts.capture_fallback.reasons) == 1
    assert parts.step.sums.tolist()[2] == 8 * 256  # every batch trained, the failed one too
    after = list(parts.raw_model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(after, before) if a.requires_grad)
    assert parts.describe()["capture"] is False and "capture_fallback" in parts.describe()
