"""The training loop: `fit` trains with ready parts (train/setup.py builds them).

A reader should be able to hold this file in their head. What it does per step: set the
learning rate from the schedule (a pure function of the step, so resume needs no scheduler
state) and call the step (forward under autocast, backward, optimizer update, train/steps.py),
which adds loss/correct/count to sums that stay on the device. The host reads those sums only
every `SYNC_EVERY` steps (progress and the non-finite check) and at the end of an epoch, so a GPU
never waits for Python inside an epoch. What happens is told to `observers` (report/observer.py):
the console, the run folder, the event log, TensorBoard, each deciding for its own process.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field

import torch

from resnetlab.data import Loaders
from resnetlab.distributed.collectives import (
    all_reduce_sum,
    any_rank,
    average_buffers,
    gather_concat,
    sum_and_any,
)
from resnetlab.distributed.group import DistInfo, shared
from resnetlab.errors import Interrupted, TrainingError
from resnetlab.report.observer import Observer

SYNC_EVERY = 25  # steps between host reads of the running sums (progress, NaN check)


@dataclass(frozen=True)
class Schedule:
    """The learning rate as a pure function of the optimizer step: `constant`, or a warm-up over
    the first `warmup` fraction of the steps followed by `onecycle` (linear decay to zero, as in
    airbench's triangular schedule) or `cosine` decay."""

    kind: str = "constant"
    lr: float = 0.1
    warmup: float = 0.0

    def __call__(self, step: int, total_steps: int) -> float:
        """The rate for optimizer step `step` (0-based) of `total_steps`."""
        if self.kind == "constant":
            return self.lr
        warm = max(1, int(self.warmup * total_steps))
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        if self.kind == "onecycle":
            return self.lr * max(0.0, 1.0 - progress)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


@dataclass(frozen=True)
class Compressed:
    """`schedule` as planned over `planned_total` steps, with its rest after step `at` compressed
    into the steps left of a shortened run (--time-limit, train/timing.py): the rate goes on from
    where it was at `at` and ends where the plan's would have (onecycle: zero), through the same
    shape. Pure, as Schedule: a resume rebuilds it from the three numbers."""

    schedule: Schedule
    at: int
    planned_total: int

    def __call__(self, step: int, total_steps: int) -> float:
        if step < self.at:
            return self.schedule(step, self.planned_total)
        scale = (self.planned_total - self.at) / max(1, total_steps - self.at)
        return self.schedule(self.at + (step - self.at) * scale, self.planned_total)


class StopFlag:
    """First Ctrl-C asks the loop to stop after the current step; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainState:
    """Where the run stands; everything in it is saved in the checkpoint."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # completed steps of the current epoch (non-zero only after Ctrl-C)
    global_step: int = 0
    partial: list = field(
        default_factory=lambda: [0.0, 0.0, 0.0]
    )  # loss sum, correct, count so far
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # the run's wall time up to the last checkpoint, over its processes
    history: list = field(default_factory=list)  # one metrics row per completed epoch
    best_val_acc: float = -1.0
    best_epoch: int = -1
    # streamed data: training images that did not decode (dataset indices, all processes)
    bad_images: list = field(default_factory=list)  # every one met so far, each once
    partial_bad: list = field(default_factory=list)  # met in the current epoch before a stop


def fit(
    step,
    evaluator,
    loaders: Loaders,
    state: TrainState,
    schedule: Schedule | Compressed,
    epochs: int,
    dist: DistInfo = DistInfo(),
    observers: list[Observer] = (),
    pace=None,
) -> TrainState:
    """Train from `state` to `epochs`. `step(x, y, lr)` takes one training step on `step.model`
    (an EagerStep, or a CapturedStep from train/graphs.py) and keeps the epoch's running sums;
    `evaluator(loader)` measures the weights evaluated (with --ema the step's average) after each
    epoch, on `loaders.val` and `loaders.test` when present. `pace(state)`, under a time limit
    (train/timing.py), is asked after each epoch, before the observers save it, whether the run
    still fits: None, or a shorter plan whose schedule and epochs the loop goes on with."""
    total_steps = len(loaders.train) * epochs
    epoch = state.epoch
    with StopFlag() as stop:
        while epoch < epochs:
            started = time.perf_counter()
            _train_epoch(
                step, loaders.train, state, schedule, total_steps, epoch, stop, dist, observers
            )
            row, is_best = _end_epoch(
                step, evaluator, loaders, state, schedule, total_steps, dist, observers, started
            )
            # asked before the observers save the epoch: its checkpoint holds a shortened plan
            change = pace(state) if pace is not None else None
            for observer in observers:
                observer.on_epoch_end(state, row, is_best)
            if change is not None:
                schedule, epochs = change.schedule, change.epochs
                total_steps = len(loaders.train) * epochs
                for observer in observers:
                    observer.on_replan(change.event)
            epoch += 1
            if any_rank(stop.requested, dist, step.sums.device) and epoch < epochs:
                for observer in observers:
                    observer.on_interrupt(state)
                raise shared(Interrupted(f"interrupted {position(state)}"))
    return state


def position(state: TrainState) -> str:
    """Where a run stopped, as the interrupt and the resume both say it: "at epoch 16, step 5"
    (epoch 16 under way, its first 5 steps done) or "after epoch 15" (at an epoch's end)."""
    if state.step_in_epoch:
        return f"at epoch {state.epoch + 1}, step {state.step_in_epoch}"
    return f"after epoch {state.epoch}"


def _train_epoch(step, loader, state, schedule, total_steps, epoch, stop, dist, observers) -> None:
    """One epoch's steps, from state.step_in_epoch on (resuming inside an epoch replays the
    loader up to there); raises Interrupted after saving through the observers on Ctrl-C."""
    steps_per_epoch, skip, started = len(loader), state.step_in_epoch, time.perf_counter()
    step.model.train()
    loader.set_epoch(epoch)
    if skip and hasattr(loader, "skip_next"):  # streamed data: the steps done are not read again
        loader.skip_next(skip)
    # state.partial holds all processes' sums (see the stop below): rank 0 carries them on
    step.start_epoch(state.partial if dist.is_main else [0.0, 0.0, 0.0])
    for i, (x, y) in enumerate(loader):
        if i < skip:
            continue
        lr = schedule(state.global_step, total_steps)
        step(x, y, lr, loader.loss_weight(i))
        state.global_step += 1
        state.step_in_epoch = i + 1
        requested = stop.requested  # read once per step
        # One process stops at the step Ctrl-C lands on. Several processes see it at different
        # steps, so they stop at the next sync point, having all-reduced the flag with the sums.
        if not (
            (requested and not dist.enabled)
            or (i + 1) % SYNC_EVERY == 0
            or i + 1 == steps_per_epoch
        ):
            continue
        (loss_sum, correct, count), stopping = sum_and_any(step.sums, requested, dist)
        if not math.isfinite(loss_sum):
            raise shared(
                TrainingError(
                    f"the training loss became {loss_sum / count} at epoch {epoch + 1}, step {i + 1}; "
                    f"the last good checkpoint (epoch {state.epoch}) is kept; lower --lr or check the data"
                )
            )
        stats = {"loss": loss_sum / count, "acc": correct / count, "lr": lr}
        for observer in observers:
            observer.on_progress(state, i + 1, steps_per_epoch, stats)
        if stopping and i + 1 < steps_per_epoch:
            state.partial = [loss_sum, correct, count]
            state.partial_bad = _bad_so_far(loader, state, dist, step.sums.device) or []
            state.train_seconds += time.perf_counter() - started
            for observer in observers:
                observer.on_interrupt(state)
            raise shared(Interrupted(f"interrupted {position(state)}"))


def _end_epoch(step, evaluator, loaders, state, schedule, total_steps, dist, observers, started):
    """The epoch's metrics row (training sums over the processes, then val and test) and whether
    its weights are the best on validation so far; `state` moves to the next epoch."""
    average_buffers(
        step.model, dist
    )  # evaluation and the saved weights see one set of BN statistics
    if step.average is not None:
        average_buffers(step.average.model, dist)
    sums = all_reduce_sum(step.sums.clone(), dist)
    epoch_seconds = time.perf_counter() - started
    state.train_seconds += epoch_seconds
    loss_sum, correct, count = sums.tolist()
    epoch = state.epoch + 1
    row = {
        "epoch": epoch,
        "train_loss": loss_sum / count,
        "train_acc": correct / count,
        "examples": count,
    }
    bad = _bad_so_far(loaders.train, state, dist, step.sums.device)
    if bad is not None:  # streamed data: the epoch's images that did not decode (replaced)
        row["skipped"] = len(bad)
        state.bad_images = sorted(set(state.bad_images).union(bad))
    for name, loader in (("val", loaders.val), ("test", loaders.test)):
        if loader is not None:
            result = evaluator(loader)
            row[f"{name}_loss"], row[f"{name}_acc"] = result["loss"], result["acc"]
            for observer in observers:
                observer.on_evaluate(epoch, name, result)
    is_best = loaders.val is not None and row["val_acc"] > state.best_val_acc
    if is_best:
        state.best_val_acc, state.best_epoch = row["val_acc"], epoch
    row["lr"] = schedule(max(state.global_step - 1, 0), total_steps)
    # throughput counts training steps only (as the textbook's train_ch6 does)
    row["examples_per_sec"] = count / epoch_seconds if epoch_seconds > 0 else 0.0
    row["epoch_seconds"] = time.perf_counter() - started
    state.history.append(row)
    state.epoch, state.step_in_epoch, state.partial = epoch, 0, [0.0, 0.0, 0.0]
    state.partial_bad = []
    return row, is_best


def _bad_so_far(loader, state: TrainState, dist: DistInfo, device) -> list | None:
    """The current epoch's training images that did not decode so far, over the processes and
    across a resume inside the epoch (the batches before it were not read again); None for
    data that does not report them (in memory)."""
    bad = getattr(loader, "bad_indices", None)
    if bad is None:
        return None
    local = torch.tensor(bad, dtype=torch.int64, device=device)
    return state.partial_bad + gather_concat(local, dist).tolist()  # once per epoch (or stop)
