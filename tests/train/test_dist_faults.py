"""A process of several stalls: the others stop within RESNETLAB_DIST_TIMEOUT, each with one line
naming itself, and the run resumes from its last checkpoint (3 processes, Gloo, loopback).
(tests/train/test_distributed.py covers 2 processes: one that dies, one that stalls.)"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnetlab.distributed.group import TIMEOUT_ENV
from resnetlab.train.checkpoint import load_checkpoint

WORKER = str(Path(__file__).with_name("dist_worker.py"))


def _env(
    **extra,
) -> dict:  # as tests/train/test_distributed.py's: loopback only, one thread a process
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"),
    )
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.update(extra)
    return env


# 288 training examples: 6 global batches of 48 (16 a process) an epoch; 1 to validate on
FLAGS = [
    "--model",
    "resnet20",
    "--resize",
    "16",
    "--subset",
    "289",
    "--val-split",
    "1",
    "--batch-size",
    "48",
    "--epochs",
    "2",
    "--no-amp",
]


def _torchrun(args, env, timeout=180):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=3",
        WORKER,
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32", reason="needs Gloo on POSIX"
)
@pytest.mark.needs_fashion_mnist
def test_three_processes_one_stalls_the_others_stop_in_time_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    stalled = _torchrun(
        ["train", *FLAGS, "--out", str(out)],
        _env(**{TIMEOUT_ENV: "5", "RESNETLAB_TEST_FAULT": "2:8:hang"}),
    )
    ended = time.monotonic()
    assert stalled.returncode != 0
    text = stalled.stdout + stalled.stderr
    # what happened: rank 2 stalled after its 8th step (dist_worker.py's line), once
    faults = re.findall(r"^fault: rank (\d) (\w+) after step (\d+) at ([\d.]+)$", text, re.M)
    assert [f[:3] for f in faults] == [("2", "hang", "8")], text
    stalled_at = float(faults[0][3])
    lost = re.findall(
        r"^(?:rank (\d): )?resnetlab: error: (?:rank \d: )?process (\d) of 3 lost the others.*"
        rf"{TIMEOUT_ENV} \(now 5 s\)$",
        text,
        re.M,
    )
    named = sorted(int(r) for _, r in lost)
    assert named and set(named) <= {0, 1} and len(named) == len(set(named)), (
        text
    )  # each survivor once, by its rank
    assert "Traceback" not in stalled.stdout
    # when: the others leave their collective as the 5-s timeout runs out, not much later; the
    # margin is half the start-up (launch to the stall), so that it scales with the machine's load
    start_up, waited = stalled_at - started, ended - stalled_at
    print(
        f"\n3 processes, rank 2 stalled {start_up:.0f} s after launch: the others stopped "
        f"{waited:.1f} s later with: {lost}"
    )
    assert 5 - 1 <= waited < 5 + max(start_up / 2, 5), f"{waited:.1f} s (start-up {start_up:.1f} s)"

    ckpt = load_checkpoint(out)  # epoch 1's checkpoint, written before the stall in epoch 2
    assert (ckpt["state"]["epoch"], ckpt["world_size"]) == (1, 3)
    rows_before = (out / "metrics.csv").read_text().splitlines()
    assert len(rows_before) == 2 and not (out / "model.safetensors").exists()

    resumed = _torchrun(["train", "--resume", str(out)], _env(**{TIMEOUT_ENV: "60"}))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[:2] == rows_before
    assert load_checkpoint(out)["state"]["epoch"] == 2 and (out / "model.safetensors").exists()
