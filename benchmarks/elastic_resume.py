"""Elastic resume (issue 36): a streamed run trained for one epoch with `--nproc 2`, stopped by
Ctrl-C, and resumed with one process, against the same run uninterrupted with `--nproc 2`.

Packs a seeded Fashion-MNIST subset into shards, then runs, one after the other:
  (a) `resnetlab train --nproc 2 --data shards:...` for EPOCHS epochs, uninterrupted;
  (b) the same command, sent SIGINT (as Ctrl-C sends it to torchrun) once its first epoch is
      in metrics.csv, then `resnetlab train --resume` with one process.
Prints each run's test accuracy, the difference (contract: within 0.5 points) and the resumed
run's line saying how many processes it had. That the resumed epochs read the same samples in
the same global batches is checked exactly by tests/train/test_stream_train.py
(`test_a_streamed_run_of_two_processes_resumes_with_one`); this measures what it costs in accuracy.

Usage: python benchmarks/elastic_resume.py [--subset N] [--epochs E] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resnetlab.data.shards import pack_builtin

FLAGS = [
    "--model", "resnet20", "--resize", "28", "--batch-size", "128", "--lr", "0.1",
    "--val-split", "0", "--workers", "1", "--device", "cpu", "--seed", "1",
    "--no-epoch-test", "--tta", "none",
]  # fmt: skip


def train(args: list[str], *, stop_after_epoch: Path | None = None) -> tuple[int, str, float]:
    """Runs `resnetlab train ARGS` in a process group of its own; with `stop_after_epoch` (a run
    folder) sends SIGINT to the group, as Ctrl-C in a terminal does (the launcher, torchrun and the
    training processes), once that run's metrics.csv has its first epoch.
    (exit status, output, seconds)"""
    started = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    ) as run:
        if stop_after_epoch is not None:
            metrics = stop_after_epoch / "metrics.csv"
            while run.poll() is None:
                if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                    os.killpg(run.pid, signal.SIGINT)
                    break
                time.sleep(0.2)
        out = run.communicate()[0]
    return run.returncode, out, time.monotonic() - started


def test_accuracy(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=20000, help="training images (and test)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    a = parser.parse_args()
    work = a.out or Path(tempfile.mkdtemp(prefix="resnetlab-elastic."))
    work.mkdir(parents=True, exist_ok=True)
    packed = work / "fm"
    if not (packed / "manifest.json").exists():
        pack_builtin("fashion-mnist", packed, subset=a.subset)
    flags = [*FLAGS, "--data", f"shards:{packed}", "--epochs", str(a.epochs)]

    whole, resumed = work / "whole", work / "resumed"
    code, out, seconds = train([*flags, "--nproc", "2", "--out", str(whole)])
    assert code == 0, out
    print(f"(a) --nproc 2, {a.epochs} epochs uninterrupted: {seconds:.0f} s")
    code, out, seconds = train(
        [*flags, "--nproc", "2", "--out", str(resumed)], stop_after_epoch=resumed
    )
    stopped = json.loads((resumed / "config.json").read_text()) if code else None
    assert code != 0 and stopped is not None, f"the run was not stopped:\n{out}"
    print(f"(b) --nproc 2 stopped by SIGINT after epoch 1 (exit {code}, {seconds:.0f} s)")
    code, out, seconds = train(["--resume", str(resumed)])
    assert code == 0, out
    said = [line for line in out.splitlines() if "resuming" in line]
    print(f"    resumed with 1 process: {seconds:.0f} s; {said[0].strip() if said else out[:200]}")
    acc_a, acc_b = test_accuracy(whole), test_accuracy(resumed)
    print(f"test accuracy: (a) {acc_a:.4f}, (b) {acc_b:.4f}")
    print(f"difference: {100 * (acc_b - acc_a):+.2f} points (contract: within 0.5)")


if __name__ == "__main__":
    main()
