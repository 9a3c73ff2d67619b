"""Long runs do not leak: the memory a run holds grows by less than a fraction of one batch an
epoch (fitted over 45 epochs, with a deliberate leak as the control), and resident memory after
many evaluations in one process (a notebook left running for hours) stays within 5%."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = str(Path(__file__).with_name("fault_worker.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")
needs_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc for resident memory"
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNETLAB_")}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""),
        **extra,
    )
    return env


SOAK_FLAGS = [
    "--model",
    "resnet20",
    "--subset",
    "192",
    "--val-split",
    "64",
    "--resize",
    "16",
    "--batch-size",
    "64",
    "--seed",
    "3",
]
MiB = 2**20
# Malloc'd bytes may grow by less than this an epoch, fitted over epochs 5 on: one batch of this
# run (64 x 16 x 16 floats) is 0.0625 MiB, and a clean run measured +0.0006 MiB an epoch.
GROWTH_BOUND = 0.02 * MiB


def _soak(tmp_path, epochs: int, **env) -> tuple[list[int], list[int]]:
    """(resident memory, bytes malloc has handed out) as each epoch's checkpoint is written."""
    done = subprocess.run(
        [sys.executable, WORKER, "train", *SOAK_FLAGS, "--epochs", str(epochs)]
        + ["--out", str(tmp_path / ("leaky" if env else "run"))],
        env=_env(RESNETLAB_TEST_PHASES="rss", **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = [
        line for line in done.stderr.splitlines() if line.startswith("phase: write=checkpoint.pt ")
    ]
    assert len(lines) == epochs, done.stderr
    rss = [int(line.split(" rss=")[1].split()[0]) for line in lines]
    heap = [int(line.split(" heap=")[1]) for line in lines]
    if min(heap) < 0:
        pytest.skip("needs glibc's mallinfo2 to count the bytes malloc handed out")
    return rss, heap


def growth_per_epoch(values: list[int], first_epoch: int = 5) -> float:
    """The least-squares slope of `values` (one an epoch, from epoch 1) over epochs `first_epoch`
    on: bytes an epoch. A leak grows it steadily; one early allocation or a noisy epoch do not."""
    ys = values[first_epoch - 1 :]
    xs = range(len(ys))
    mx, my = (len(ys) - 1) / 2, sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def test_growth_per_epoch_is_the_fitted_slope():
    assert growth_per_epoch([9, 9, 9, 9, 10, 12, 14, 16]) == 2.0
    assert growth_per_epoch([0] * 4 + [5, 0, 5, 0, 5]) == 0.0


@pytest.mark.slow
@needs_linux
@pytest.mark.needs_fashion_mnist
def test_memory_grows_less_than_a_fraction_of_one_batch_an_epoch_over_50_epochs(tmp_path):
    """Malloc'd bytes (tensors, buffers) fitted over epochs 5 to 50 grow by less than 0.02 MiB an
    epoch, and resident memory at epoch 50 is within 5 % of epoch 5's. Resident memory alone
    cannot bound a small leak: freed pages absorb it (a leak of 2.9 MiB over the run moved it by
    -1.3 MiB). The control, the same run keeping one batch an epoch (fault_worker.py's
    RESNETLAB_TEST_LEAK), must break the bound, or the bound proves nothing."""
    rss, heap = _soak(tmp_path, 50)
    grew = growth_per_epoch(heap)
    print(
        f"\nmalloc'd: {grew / MiB:+.4f} MiB an epoch over epochs 5-50; resident memory: epoch 5 "
        f"{rss[4] / MiB:.1f} MiB, epoch 50 {rss[49] / MiB:.1f} MiB"
    )
    assert grew < GROWTH_BOUND, [f"{h / MiB:.2f}" for h in heap]
    assert abs(rss[49] / rss[4] - 1) < 0.05, [f"{r / MiB:.1f}" for r in rss]

    _, leaky = _soak(tmp_path, 20, RESNETLAB_TEST_LEAK="batch")
    leaked = growth_per_epoch(leaky)
    print(f"control, one batch kept an epoch: {leaked / MiB:+.4f} MiB an epoch")
    assert leaked >= GROWTH_BOUND, "the bound let a leak of one batch an epoch through"


EVALUATE_MANY = r"""
import sys, torch
from torch import nn
from resnetlab import d2l
from resnetlab.inference.evaluation import evaluate

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

torch.manual_seed(0)
d2l.SUBSET = 512
train_iter, test_iter = d2l.load_data_fashion_mnist(128, resize=16)
net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
seen = []
for i in range(1, 301):
    acc = d2l.evaluate_accuracy_gpu(net, test_iter)
    evaluate(net, test_iter.loader, torch.device("cpu"), num_classes=10)
    assert 0 <= acc <= 1
    if i in (30, 300):
        seen.append(rss())
print(*seen)
"""


@needs_linux
@pytest.mark.needs_fashion_mnist
def test_repeated_evaluation_in_one_process_does_not_grow(tmp_path):
    """300 calls of d2l.evaluate_accuracy_gpu and of the engine's evaluate (a notebook left running)."""
    done = subprocess.run(
        [sys.executable, "-c", EVALUATE_MANY],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    after_30, after_300 = map(int, done.stdout.split())
    growth = after_300 / after_30 - 1
    print(
        f"\nresident memory: after 30 evaluations {after_30 / 2**20:.1f} MiB, after 300 {after_300 / 2**20:.1f} MiB ({growth:+.2%})"
    )
    assert abs(growth) < 0.05
