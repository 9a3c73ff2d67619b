"""Training learns: the tiny configuration, trained through `resnetlab.train.train` on every step
path the CPU runs (eager, --ema, --compile, and the captured path with the CUDA graph taken out),
clears a test accuracy that a trainer which barely works cannot. The control, the same run at a
learning rate of 1e-9 (nothing learnt) on the same path, stays at chance; both figures are in
each test.

Measured (seed 3, 512 training and 512 test images, a width-4 ResNet-20, 6 epochs): eager 0.572,
--ema 0.5 0.568 (0.629 since its warm-up), --ema 0.999 0.604 (0.088 without the warm-up),
--compile 0.635; lr 1e-9 0.084. (test_train.py's 2-epoch runs reach 0.195 against
0.129 at lr 1e-9: its tests only range-check their figures.)
"""

from __future__ import annotations

import functools

import pytest
from test_graphs import FakeGraphs  # tests/train is on the path (rootdir imports)

from resnetlab.train import make_config, setup, train
from resnetlab.train.graphs import CapturedEvaluator, CapturedStep

pytestmark = pytest.mark.needs_fashion_mnist

# test_train.py's tiny configuration, 6 epochs, one image size (the captured step and --compile
# take one shape), the test set evaluated once at the end without test-time augmentation. Width 4,
# batch 64 at 28 px: test_compile.py's network, so --compile here finds its graphs in inductor's
# cache (20 s instead of 210 s on the shared CI machine).
TINY = dict(
    model="resnet20",
    model_kwargs={"width": 4},
    subset=512,
    batch_size=64,
    epochs=6,
    seed=3,
    val_split=0,
    tta="none",
    progressive_resize=0,
)
LEARNT = 0.45  # every path reaches 0.57-0.64; a trainer that barely works does not
CHANCE = 0.2  # ten classes: 0.1, and the lr-1e-9 control measured 0.084


def test_accuracy(tmp_path, name: str, **overrides) -> float:
    summary = train(
        make_config("quick", **dict(TINY, **overrides)), out=tmp_path / name, verbose=False
    )
    return summary["test_acc"]


test_accuracy.__test__ = False  # a helper, not a test


def captured_on_the_cpu(monkeypatch) -> None:
    """Training and evaluation through CapturedStep and CapturedEvaluator, their CUDA graph
    replaced by test_graphs.py's stand-in (capture keeps the function, replay calls it)."""
    monkeypatch.setattr(setup, "resolve_capture", lambda *a, **k: True)
    monkeypatch.setattr(setup, "CapturedStep", functools.partial(CapturedStep, graphs=FakeGraphs))
    monkeypatch.setattr(
        setup, "CapturedEvaluator", functools.partial(CapturedEvaluator, graphs=FakeGraphs)
    )
    FakeGraphs.captured = []


@pytest.mark.parametrize(
    "path, overrides",
    [
        ("eager", {}),
        ("ema", {"ema": 0.5}),
        # 48 steps: a 0.999 average without its warm-up would still hold 95 % of the start
        ("ema-longer-than-the-run", {"ema": 0.999}),
        ("captured", {}),
        pytest.param("compile", {"compile": True}, marks=pytest.mark.slow),
    ],
)
def test_the_tiny_configuration_learns_on_every_step_path(path, overrides, tmp_path, monkeypatch):
    """Each path has its own control, the same run on the same path at a learning rate of 1e-9:
    a path whose accuracy does not come from what it learnt (an evaluator of other weights, a
    learning rate it ignores) fails there even where the eager path is sound."""
    if path == "captured":
        captured_on_the_cpu(monkeypatch)
    control = test_accuracy(tmp_path, f"{path}-control", lr=1e-9, **overrides)
    assert control < CHANCE, f"{path}: the lr-1e-9 control reached {control:.3f}: not a control"
    if path == "captured":
        FakeGraphs.captured = []
    acc = test_accuracy(tmp_path, path, **overrides)
    assert acc >= LEARNT, f"{path}: test accuracy {acc:.3f} after 6 epochs (control {control:.3f})"
    if path == "captured":  # the graphs were captured and replayed: this was the captured path
        assert len(FakeGraphs.captured) >= 2 and all(g.replays > 0 for g in FakeGraphs.captured)
