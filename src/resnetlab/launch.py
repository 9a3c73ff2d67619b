"""`resnetlab train --nproc N`: runs torchrun for the user on this machine (the CLI is its only user)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

from resnetlab.distributed.group import env_int
from resnetlab.errors import Interrupted, UsageError

SHUTDOWN_TIMEOUT_S = (
    120  # `--nproc`: how long torchrun lets the processes finish after Ctrl-C (its default: 30 s)
)


def torchrun_command(nproc: int, train_argv: list[str]) -> list[str]:
    """The torchrun command line that runs `resnetlab train <train_argv>` in `nproc` processes here."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "resnetlab",
        "train",
        *train_argv,
    ]


def launch_local(nproc: int, train_argv: list[str]) -> int:
    """Run `resnetlab train <train_argv>` in `nproc` processes on this machine; their exit status."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    most = max(
        8, 2 * (os.cpu_count() or 1), torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    if nproc > most:  # --nproc 1e20 once started torchrun, which then hung spawning processes
        raise UsageError(
            f"--nproc {nproc} is more processes than this machine can run together (at most {most}: "
            "twice its CPUs, or its GPUs)"
        )
    if env_int("WORLD_SIZE", 1) > 1:
        raise UsageError(
            "--nproc starts torchrun itself; under torchrun (WORLD_SIZE is set) drop --nproc"
        )
    env = dict(os.environ)
    # torchrun would set 1 thread per process (with a warning); share this machine's cores instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    # Ctrl-C reaches torchrun too (same terminal); it forwards it to the processes, which stop
    # together and save a checkpoint. This process only notes it and waits for the outcome.
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        status = subprocess.call(torchrun_command(nproc, train_argv), env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted and status != 0:
        return Interrupted.exit_code  # torchrun itself exits 1 after passing Ctrl-C on
    return status if status >= 0 else 128 - status  # killed by signal N: the shell's 128 + N
