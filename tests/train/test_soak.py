"""Long runs do not leak: resident memory late in a run (or after many evaluations in one
process, as a notebook does for hours) stays within 5% of what it was early on."""

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


@pytest.mark.slow
@needs_linux
@pytest.mark.needs_fashion_mnist
def test_resident_memory_after_epoch_50_is_within_5_percent_of_epoch_5(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            WORKER,
            "train",
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
            "--epochs",
            "50",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "run"),
        ],
        env=_env(RESNETLAB_TEST_PHASES="rss"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    # resident memory as each epoch's checkpoint is written
    rss = [
        int(line.rsplit("rss=", 1)[1])
        for line in done.stderr.splitlines()
        if line.startswith("phase: write=checkpoint.pt ")
    ]
    assert len(rss) == 50
    growth = rss[49] / rss[4] - 1
    print(
        f"\nresident memory: epoch 5 {rss[4] / 2**20:.1f} MiB, epoch 50 {rss[49] / 2**20:.1f} MiB ({growth:+.2%})"
    )
    assert abs(growth) < 0.05, [f"{r / 2**20:.1f}" for r in rss]


EVALUATE_MANY = r"""
import sys, torch
from torch import nn
from resnetlab import d2l
from resnetlab.train.engine import evaluate

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
