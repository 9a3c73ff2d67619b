"""Fixtures for the report tests: one finished tiny run shared by the tests that only read it,
and a helper that trains more tiny runs (512 Fashion-MNIST examples, a width-8 ResNet-20)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from resnetlab.train import make_config, train

TINY = dict(
    model="resnet20",
    model_kwargs={"width": 8},
    subset=512,
    batch_size=64,
    epochs=1,
    seed=3,
    val_split=0,
    epoch_test=True,
)  # per-epoch test figures: the report shows them


def tiny_run(out: Path, **overrides) -> dict:
    return train(make_config("quick", **dict(TINY, **overrides)), out=out, verbose=False)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished run with a validation split (kept weights: best.safetensors). Read-only: copy it
    (`run_copy`) to change it."""
    out = tmp_path_factory.mktemp("report") / "finished"
    tiny_run(out, val_split=128)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / finished_run.name
    shutil.copytree(finished_run, copy)
    return copy


@pytest.fixture
def train_tiny():
    """tiny_run(out, **overrides): train one more tiny run."""
    return tiny_run
