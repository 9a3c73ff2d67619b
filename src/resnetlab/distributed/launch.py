"""`resnetlab train --nproc N`: runs torchrun for the user on this machine (the CLI is its only user)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import torch

from resnetlab.distributed.group import env_int
from resnetlab.errors import Interrupted, UsageError

SHUTDOWN_TIMEOUT_S = (
    120  # `--nproc`: how long torchrun lets the processes finish after Ctrl-C (its default: 30 s)
)


def torchrun_command(nproc: int, train_argv: list[str], log_dir: str | None = None) -> list[str]:
    """The torchrun command line that runs `resnetlab train <train_argv>` in `nproc` processes here
    (torchrun's own files in `log_dir`: by default it leaves a torchelastic_* folder in /tmp)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *([f"--log-dir={log_dir}"] if log_dir else []),
        "-m",
        "resnetlab",
        "train",
        *train_argv,
    ]


def check_launch(nproc: int, batch_size: int | None = None) -> None:
    """What can be refused before torchrun starts (one line, exit status 2)."""
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
    if batch_size is not None and batch_size % nproc:
        raise UsageError(
            f"--batch-size {batch_size} (the global batch) must divide by the {nproc} processes; "
            f"give a multiple of {nproc}"
        )


def launch_local(nproc: int, train_argv: list[str], *, batch_size: int | None = None) -> int:
    """Run `resnetlab train <train_argv>` in `nproc` processes on this machine; their exit status:
    the first failed process's own (2 for a usage error), 130 after Ctrl-C. torchrun's own
    report of a failure or a signal (a traceback) is left out of stderr; the processes' lines
    pass through."""
    check_launch(nproc, batch_size)
    env = dict(os.environ)
    # torchrun would set 1 thread per process (with a warning); share this machine's cores instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    # Ctrl-C reaches torchrun too (same terminal); it forwards it to the processes, which stop
    # together and save a checkpoint. This process only notes it and waits for the outcome.
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    log_dir = tempfile.mkdtemp(prefix="resnetlab-torchrun-")
    try:
        child = subprocess.Popen(
            torchrun_command(nproc, train_argv, log_dir), env=env, stderr=subprocess.PIPE
        )
        report = TorchrunFilter(sys.stderr.buffer)
        for line in child.stderr:
            report.feed(line)
        report.close()
        status = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        shutil.rmtree(log_dir, ignore_errors=True)
    if interrupted and status != 0:
        return Interrupted.exit_code  # torchrun itself exits 1 after passing Ctrl-C on
    if status == 1 and report.exit_code is not None:
        status = report.exit_code  # torchrun exits 1 for any failure: the process's own status
    return status if status >= 0 else 128 - status  # killed by signal N: the shell's 128 + N


# torchrun's log lines ("W0101 12:00:00.000000 123 .../torch/distributed/...] ...")
_TORCH_LOG = re.compile(rb"^[DIWEC]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S*torch/distributed/")
_ROOT_EXIT = re.compile(rb"exitcode\s*:\s*(-?\d+)")


class TorchrunFilter:
    """Passes the processes' stderr lines on to `out`, less torchrun's own: its log lines and
    the traceback of its ChildFailedError or SignalException (with the report below it, from
    which `exit_code`, the failed processes' status, is read). Other tracebacks (a
    process's own crash) pass through whole."""

    def __init__(self, out) -> None:
        self.out, self.held, self.swallowing = out, [], False
        self.codes: list[int] = []  # the failed processes' statuses, the root cause's first
        self.root_cause = False

    def feed(self, line: bytes) -> None:
        if self.swallowing:
            self._read_report(line)
        elif _TORCH_LOG.match(line):
            return
        elif self.held or line.startswith(b"Traceback (most recent call last):"):
            self._traceback(line)
        else:
            self._write(line)

    def _traceback(self, line: bytes) -> None:
        self.held.append(line)
        if len(self.held) == 1 or line[:1] in (b" ", b"\t"):
            return
        held, self.held = self.held, []  # its last line: the exception
        if b"torch.distributed.elastic" in line:
            self.swallowing = True  # torchrun's own: the rest is its report
        else:
            for held_line in held:
                self._write(held_line)

    def _read_report(self, line: bytes) -> None:
        if b"Root Cause" in line:
            self.root_cause = True
        found = _ROOT_EXIT.search(line)
        if found:
            code = int(found.group(1))
            # the root cause first; a signal's status as the shell gives it (128 + N)
            self.codes.insert(
                0 if self.root_cause else len(self.codes), code if code >= 0 else 128 - code
            )
            self.root_cause = False

    @property
    def exit_code(self) -> int | None:
        """The failed processes' status: a specific one (2: a usage error) before 1, the status
        of "lost the others" (torchrun's first observed failure is a matter of timing), and
        before the SIGTERM torchrun sent the others; None when torchrun reported none."""
        specific = [c for c in self.codes if c not in (1, 128 + signal.SIGTERM)]
        return (specific or self.codes or [None])[0]

    def close(self) -> None:
        """The end of the stream: a traceback cut short is shown as it is."""
        held, self.held = self.held, []
        for line in held:
            self._write(line)

    def _write(self, line: bytes) -> None:
        self.out.write(line)
        self.out.flush()
