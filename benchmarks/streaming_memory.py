"""Streaming data (issue 27): memory of a streaming training run on data far bigger than memory.

Generates N JPEGs of 2400 x 1800 (smooth, so they compress to ~100 KB while decoding to 13 MB
each; N=1000: 12 GiB decoded), packs them (`resnetlab data pack`), then trains on them with
`resnetlab train --data shards:... --workers 2` in a child process while sampling, every 0.2 s,
the proportional set size (PSS: shared pages divided among the processes sharing them, so the
forked workers are not counted twice) summed over the trainer and its workers, and each epoch's
peak. Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/streaming_memory.py [N] [EPOCHS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = (1800, 2400)  # height, width


def make_images(folder: Path, n: int) -> int:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", max(2, n // 10))):
        for i in range(count):
            small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
            image = Image.fromarray(small).resize(SIDE[::-1], Image.Resampling.BILINEAR)
            d = folder / split / f"c{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            image.save(d / f"{i}.jpg", quality=85)
    return (n + max(2, n // 10)) * SIDE[0] * SIDE[1] * 3


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return pids


def pss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main(n: int = 1000, epochs: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        decoded = make_images(tmp / "photos", n)
        env = dict(os.environ)
        run = [sys.executable, "-m", "resnetlab"]
        subprocess.run(
            [*run, "data", "pack", str(tmp / "photos"), str(tmp / "packed")], check=True, env=env
        )
        encoded = sum(p.stat().st_size for p in (tmp / "packed").glob("*.tar"))
        print(
            f"{n} training images of {SIDE[1]} x {SIDE[0]}: {decoded / 2**30:.1f} GiB decoded, "
            f"{encoded / 2**20:.0f} MiB of shards (made in {time.perf_counter() - started:.0f} s)"
        )
        train = [*run, "train", "--data", f"shards:{tmp / 'packed'}", "--workers", "2"]
        train += ["--model", "resnet20", "--model-kwargs", '{"width": 8}', "--resize", "64"]
        train += ["--epochs", str(epochs), "--batch-size", "64", "--val-split", "0"]
        train += ["--progressive-resize", "0", "--init", "default", "--device", "cpu"]
        train += ["--no-amp", "--no-channels-last", "--out", str(tmp / "run")]
        child = subprocess.Popen(train, env=env, stdout=subprocess.PIPE, text=True)
        samples: list[tuple[float, float]] = []

        def sample() -> None:
            while child.poll() is None:
                samples.append((time.perf_counter(), pss_mib(child.pid)))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        epoch_ends = []
        for line in child.stdout:
            print("  " + line.rstrip())
            if line.startswith("epoch "):
                epoch_ends.append(time.perf_counter())
        child.wait()
        sampler.join()
        peak = max(m for _, m in samples)
        print(
            f"peak PSS (trainer + workers): {peak:.0f} MiB; decoded data / peak = {decoded / 2**20 / peak:.1f}"
        )
        start = samples[0][0]
        for e, end in enumerate(epoch_ends, 1):
            in_epoch = [m for t, m in samples if start <= t <= end]
            print(f"  epoch {e}: peak {max(in_epoch, default=0):.0f} MiB")
            start = end
        assert child.returncode == 0


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
