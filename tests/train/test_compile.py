"""--compile compiles once per run: no recompilation after the first epoch, evaluation included
(it runs the uncompiled model), on the CPU and, where there is one, on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from resnetlab.report.observer import Observer
from resnetlab.train import make_config
from resnetlab.train.engine import Schedule, fit
from resnetlab.train.setup import build

pytestmark = [pytest.mark.slow, pytest.mark.needs_fashion_mnist]


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_no_recompilation_after_the_first_epoch(device):
    torch._dynamo.reset()
    counters.clear()
    # 200 training examples in batches of 64: the last partial batch is dropped (one shape)
    cfg = make_config(
        "quick",
        model="resnet20",
        model_kwargs={"width": 4},
        subset=264,
        val_split=64,
        batch_size=64,
        epochs=3,
        compile=True,
        device=device,
        progressive_resize=0,
    )  # one size: one graph
    parts = build(cfg)
    graphs_after = []

    class CountGraphs(Observer):
        def on_epoch_end(self, state, row, is_best):
            graphs_after.append(counters["stats"]["unique_graphs"])

    schedule = Schedule(cfg.schedule, cfg.lr, cfg.warmup)
    fit(
        parts.step,
        parts.evaluator,
        parts.loaders,
        parts.state,
        schedule,
        cfg.epochs,
        observers=[CountGraphs()],
    )
    assert graphs_after[0] >= 1, "the first epoch compiled the training step"
    assert graphs_after == [graphs_after[0]] * 3, (
        f"graphs compiled by the end of each epoch: {graphs_after}"
    )
