"""Issue 31, item 7: `train --nproc N` refuses what it can before torchrun starts, shows the
processes' lines without torchrun's tracebacks, exits with their status and leaves no
torchelastic_* folder behind."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from resnetlab import cli
from resnetlab.distributed import launch

CHILD_FAILED = b"""\
W1202 18:06:53.080000 4228 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 4285 closing signal SIGTERM
E1202 18:06:53.113000 4228 site-packages/torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2) local_rank: 0 (pid: 4284) of binary: /usr/bin/python
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/x/torch/distributed/run.py", line 1032, in <module>
    main()
  File "/x/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
resnetlab FAILED
------------------------------------------------------------
Failures:
[0]:
  time      : 2026-12-02_18:06:53
  rank      : 0 (local_rank: 0)
  exitcode  : 2 (pid: 4284)
------------------------------------------------------------
Root Cause (first observed failure):
[1]:
  time      : 2026-12-02_18:06:53
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 4285)
============================================================
"""

SIGNAL = b"""\
W1202 18:20:01.000000 99 site-packages/torch/distributed/elastic/agent/server/api.py:719] Received 2 death signal, shutting down workers
Traceback (most recent call last):
  File "/x/torch/distributed/run.py", line 1032, in <module>
    main()
  File "/x/torch/distributed/elastic/multiprocessing/api.py", line 84, in _terminate_process_handler
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)
torch.distributed.elastic.multiprocessing.api.SignalException: Process 99 got signal: 2
"""

CHILD_CRASH = b"""\
Traceback (most recent call last):
  File "/x/resnetlab/cli.py", line 1, in main
    boom()
ZeroDivisionError: division by zero
"""


def _filtered(*chunks: bytes) -> launch.TorchrunFilter:
    f = launch.TorchrunFilter(io.BytesIO())
    for chunk in chunks:
        for line in chunk.splitlines(keepends=True):
            f.feed(line)
    f.close()
    return f


def test_torchrun_report_is_left_out_and_the_processes_status_kept():
    rank0 = b"resnetlab: error: --val-split 5000 leaves no training data\n"
    rank1 = b"resnetlab: error: rank 1: process 1 of 2 lost the others\n"
    f = _filtered(rank1, rank0, CHILD_FAILED)
    assert f.out.getvalue() == rank1 + rank0  # the processes' lines, nothing of torchrun's
    assert f.exit_code == 2  # the usage error's status, not torchrun's 1


def test_ctrl_c_leaves_out_torchruns_signal_traceback_but_not_a_crash():
    saved = b"resnetlab: interrupted at epoch 1, step 25: checkpoint saved; resume with: ...\n"
    f = _filtered(saved, CHILD_CRASH, SIGNAL)
    assert f.out.getvalue() == saved + CHILD_CRASH


def test_batch_size_is_checked_before_torchrun_starts(monkeypatch, capsys):
    def no_torchrun(*args, **kwargs):
        raise AssertionError("torchrun was started")

    monkeypatch.setattr(launch.subprocess, "Popen", no_torchrun)
    monkeypatch.setattr(launch.subprocess, "call", no_torchrun)
    assert cli.main(["train", "--nproc", "2", "--batch-size", "127"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size 127 (the global batch) must divide by" in err


@pytest.mark.slow
def test_failed_processes_leave_no_traceback_and_no_torchelastic_folder(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnetlab",
            "train",
            "--nproc",
            "2",
            "--resume",
            str(tmp_path / "none"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr  # CheckpointError's status
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("resnetlab: error: ") for line in lines), lines
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("torchelastic_*"))


class Exited(Exception):
    pass


@pytest.mark.parametrize(
    "body, barrier_fails, left_at_once",
    [("finished", False, True), ("shared error", False, False), ("finished", True, False)],
)
def test_only_a_run_every_process_finished_leaves_without_teardown(
    body, barrier_fails, left_at_once, monkeypatch, tmp_path
):
    """exit_status (resnetlab/__main__.py): a process ends at once (os._exit, skipping the
    teardown where Gloo's threads, kept alive by DDP, aborted finished runs) only when its run
    finished and the processes left together; an error, or a peer gone before the last
    barrier, exits as before, after its own line. A one-process Gloo group stands in for the
    run's (the barrier and destroy_process_group are the real ones)."""
    import torch.distributed as dist

    from resnetlab.distributed import group
    from resnetlab.errors import TrainingError

    monkeypatch.setattr(group, "_finished_together", False)
    monkeypatch.setattr(group.os, "_exit", lambda code: (_ for _ in ()).throw(Exited(code)))
    ran = []
    monkeypatch.setattr(group.atexit, "_run_exitfuncs", lambda: ran.append("atexit"))
    if barrier_fails:
        monkeypatch.setattr(group, "barrier", lambda: (_ for _ in ()).throw(RuntimeError("gloo")))
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    info = group.DistInfo(rank=0, world_size=2)  # as one of two processes
    try:
        with group.session(info):
            if body == "shared error":
                raise group.shared(TrainingError("the loss is nan"))
    except TrainingError:
        pass
    assert not dist.is_initialized()  # the group was left either way
    assert group.exit_status(1) == 1 and group.exit_status(2) == 2  # failures: as they were
    if left_at_once:
        with pytest.raises(Exited) as e:
            group.exit_status(0)
        assert e.value.args == (0,) and ran == ["atexit"]  # the exit handlers ran first
    else:
        assert group.exit_status(0) == 0
