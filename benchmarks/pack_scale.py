"""Packing at scale (issue 36, item 5): `data pack` time against the number of files, and with
more worker processes, measured in one run on this machine.

It writes a folder of N small JPEGs (32-48 px, photo-like noise) spread over 1,000 class folders
for each N in --files (default 5,000 and 20,000), packs each with `pack_folder` at --workers 1
and at each of --compare workers (default 2), and prints seconds, files/s, the CPU time of the
packing process and of its workers (what bounds the speed-up on free cores), and the ratios the
issue asks for: 20k / 5k time (target <= 4.5x: linear in files, one scan of the folder) and
workers 1 / workers 2 time (target >= 1.6x). Each pack runs --rounds times (best kept).

    python benchmarks/pack_scale.py [--files 5000 20000] [--classes 1000] [--compare 2]
                                    [--rounds 1] [--keep DIR]

On a machine shared with other jobs the figures are loaded-machine figures: say so with them.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_folder(root: Path, files: int, classes: int, seed: int = 0) -> Path:
    """`files` JPEGs of 32-48 px over `classes` class folders (round robin)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        h, w = (int(v) for v in rng.integers(32, 49, 2))
        base = np.linspace(0, 180, w, dtype=np.float64)[None, :, None]
        pixels = (base + rng.integers(0, 70, (h, w, 3))).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
        (root / f"class{i % classes:04d}" / f"{i:07d}.jpg").write_bytes(buf.getvalue())
    return root


def time_pack(src: Path, out: Path, workers: int, rounds: int) -> tuple[float, float, float]:
    """(best wall seconds, CPU seconds of this process, of the worker processes) of packing."""
    from resnetlab.data.shards import pack_folder

    best = (float("inf"), 0.0, 0.0)
    for _ in range(rounds):
        shutil.rmtree(out, ignore_errors=True)
        before, start = os.times(), time.perf_counter()
        pack_folder(src, out, workers=workers)
        wall, after = time.perf_counter() - start, os.times()
        own = after.user + after.system - before.user - before.system
        children = (
            after.children_user + after.children_system
            - before.children_user - before.children_system
        )  # fmt: skip
        best = min(best, (wall, own, children))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--compare", type=int, nargs="+", default=[2], help="worker counts")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="write the folders here (kept) instead of /tmp")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="pack-scale-"))
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    times: dict[tuple[int, int], float] = {}
    try:
        for n in args.files:
            src = work / f"photos-{n}"
            if not src.exists():
                start = time.perf_counter()
                write_folder(src, n, args.classes)
                print(
                    f"wrote {n:,} JPEGs in {args.classes:,} classes: {time.perf_counter() - start:.1f} s"
                )
            for workers in (1, *args.compare):
                t, own, children = time_pack(
                    src, work / f"packed-{n}-{workers}", workers, args.rounds
                )
                times[n, workers] = t
                print(
                    f"{n:>7,} files, --workers {workers}: {t:7.2f} s, {n / t:7.0f} files/s "
                    f"(CPU s: packing process {own:.2f}, worker processes {children:.2f})"
                )
                shutil.rmtree(work / f"packed-{n}-{workers}", ignore_errors=True)
        lo, hi = min(args.files), max(args.files)
        if lo != hi:
            ratio = times[hi, 1] / times[lo, 1]
            print(
                f"time {hi:,} / {lo:,} files (1 worker): {ratio:.2f}x "
                f"(linear: {hi / lo:.1f}x; target for 20k / 5k: <= 4.5x)"
            )
        for workers in args.compare:
            for n in args.files:
                print(
                    f"{n:,} files: --workers {workers} is {times[n, 1] / times[n, workers]:.2f}x "
                    "as fast as --workers 1 (target for 2: >= 1.6x)"
                )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
