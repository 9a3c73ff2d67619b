"""What the sweep tests share (tests/test_sweep*.py): the tiniest trials, and `resnetlab sweep`
run as a worker process the way a second machine would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
POSTGRES_ENV = "RESNETLAB_TEST_POSTGRES_URL"

# A trial in about a second of training: 300 training and 100 validation images, width-4 ResNet-8.
TINY = {
    "subset": 400,
    "val_split": 100,
    "epochs": 1,
    "batch_size": 100,
    "model": "resnet8",
    "model_kwargs": {"width": 4},
    "tta": "none",
    "progressive_resize": 0,
    "init": "default",
    "device": "cpu",
}


def tiny_flags(**changes) -> list[str]:
    import json

    flags = []
    for k, v in dict(TINY, **changes).items():
        flags += [f"--{k.replace('_', '-')}", json.dumps(v) if isinstance(v, dict) else str(v)]
    return flags


def start_worker(args: list[str], **popen) -> subprocess.Popen:
    """`python -m resnetlab sweep ARGS` with this checkout's code, one thread, output captured."""
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "sweep", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def load_study(url: str, name: str):
    import optuna

    from resnetlab.sweep.storage import parse_storage

    return optuna.load_study(study_name=name, storage=parse_storage(url).url)


def trial_numbers(folder: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in folder.glob("trial-*") if p.is_dir()}
