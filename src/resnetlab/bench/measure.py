"""The measurement: clocks that drain the device, peak memory, FLOPs and matmul peaks, and one
timed round of a runner with its figures (throughputs, the extrapolated epoch)."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.models import create_model

MIB = 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall-clock seconds of a block, with the device drained at both ends, and the CPU seconds
    the process spent in it (all threads): on a shared machine the wall clock also counts the time
    other processes held the cores, the CPU time does not."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = self.cpu_seconds = 0.0

    def __enter__(self):
        _sync(self.device)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mib() -> float:
    """The process's peak resident set (VmHWM), or getrusage's maximum where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory a block adds: CUDA max allocated, or the resident set above its start (Linux lets
    a process reset its own high-water mark: /proc/self/clear_refs, "5")."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / MIB
            return self
        try:  # hand freed heap back to the OS so the next block's growth shows in the RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.start = _rss_mib()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / MIB - self.start
        elif self.resettable:
            self.mib = peak_rss_mib() - self.start
        # else: the high-water mark may predate the block; leave the figure out rather than guess


def training_flops_per_example(
    model_name: str, in_chans: int, num_classes: int, input_px: int
) -> float:
    """Convolution and linear FLOPs of one training step (forward and backward) per example, as
    torch.utils.flop_counter counts them, on the meta device: no memory, no time."""
    batch = 2  # batch norm in training mode needs more than one value per channel
    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes, in_chans=in_chans)
        x = torch.empty(batch, in_chans, input_px, input_px)
        y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def matmul_peak_gflops(
    dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 3
) -> float:
    """GFLOP/s of the fastest of `repeats` n x n x n matrix products in `dtype` at the current
    thread count: about the most a convolution network's arithmetic can reach on this device."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up: kernels chosen, memory touched
    best = float("inf")
    for _ in range(repeats):
        with Clock(device) as c:
            a @ b
        best = min(best, c.seconds)
    return 2 * n**3 / best / 1e9


def count_examples(batches) -> int:
    return sum(len(y) for _, y in batches)


def timed_round(runner, device: torch.device) -> dict:
    """One timed round of everything a variant does: wall and CPU seconds of each part."""
    steps = runner.steps
    # resnetlab lets cuDNN pick its fastest algorithms, as the trainer does; the textbook does not.
    torch.backends.cudnn.benchmark = not runner.variant.textbook
    parts = {
        "train": lambda: runner.train(runner.train_batches),
        "eval_setup": runner.prepare_eval,
        "eval": lambda: runner.evaluate(runner.eval_batches),
        "loader": lambda: runner.load(steps),
        # End to end: batches straight from the loaders, as an epoch sees them.
        "e2e_train": lambda: runner.train_from_loader(steps),
        "e2e_eval": lambda: (runner.prepare_eval(), runner.evaluate_from_loader(steps)),
    }
    out = {}
    for name, part in parts.items():
        with Clock(device) as c:
            part()
        out[f"{name}_s"], out[f"{name}_cpu_s"] = c.seconds, c.cpu_seconds
    return out


def _figures(
    med: dict, clock: str, n_train: int, n_eval: int, n_loader: int, num_train: int, num_test: int
) -> dict:
    """Throughputs and the extrapolated epoch from median seconds; clock is "" (wall) or "_cpu"."""
    t = {
        k: med[f"{k}{clock}_s"]
        for k in ("train", "eval_setup", "eval", "loader", "e2e_train", "e2e_eval")
    }
    # The end-to-end evaluation includes one eval_setup (folding) per evaluation: counted once.
    e2e_eval_rate = n_eval / max(t["e2e_eval"] - t["eval_setup"], 1e-9)
    epoch_train, epoch_eval = (
        num_train * t["e2e_train"] / n_train,
        t["eval_setup"] + num_test / e2e_eval_rate,
    )
    return {
        f"train_ex{clock}_s": n_train / t["train"],
        f"eval_ex{clock}_s": n_eval / t["eval"],
        f"loader_ex{clock}_s": n_loader / t["loader"],
        f"epoch{clock}_s": epoch_train + epoch_eval,
        f"epoch_train{clock}_s": epoch_train,
        f"epoch_eval{clock}_s": epoch_eval,
    }


def summarize(
    rounds: list[dict], runner, num_train: int, num_test: int, device: torch.device
) -> dict:
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    n_train = count_examples(
        runner.train_batches
    )  # also what the loader and the end-to-end pass yield: full batches
    counts = (n_train, count_examples(runner.eval_batches), n_train)
    res = _figures(med, "", *counts, num_train, num_test)
    # CPU-seconds mean nothing for a GPU's work, which runs beside the host thread.
    res.update(_figures(med, "_cpu", *counts, num_train, num_test) if device.type == "cpu" else {})
    res.update(eval_setup_s=med["eval_setup_s"], rounds=rounds)
    return res
