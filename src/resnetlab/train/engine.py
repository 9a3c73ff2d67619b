"""The training loop: `fit` trains a ready model on ready loaders; `evaluate` measures it.

A reader should be able to hold this file in their head. What it does per step: set the
learning rate from the schedule (a pure function of the step, so resume needs no scheduler
state), forward under autocast, backward, optimizer step, and add loss/correct/count to sums
that stay on the device. The host reads those sums only every `SYNC_EVERY` steps (progress and
the non-finite check) and at the end of an epoch, so a GPU never waits for Python inside an epoch.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from resnetlab.errors import Interrupted, TrainingError
from resnetlab.train.config import TrainConfig
from resnetlab.train.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    average_buffers,
    gather_concat,
    shared,
    sum_and_any,
)

SYNC_EVERY = 25  # steps between host reads of the running sums (progress, NaN check)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = max(1, int(cfg.warmup * total_steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total_steps - warm)
    if cfg.schedule == "onecycle":  # linear decay to zero, as in airbench's triangular schedule
        return cfg.lr * max(0.0, 1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, *, foreach: bool = True
) -> torch.optim.Optimizer:
    """The config's optimizer. `foreach=True`: one multi-tensor update instead of a Python loop
    over ~60 tensors (False only to measure what that saves)."""
    # Weight decay on conv/linear weights only: decaying BN scales and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=foreach)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=foreach
    )


def init_weights(model: nn.Module, scheme: str) -> None:
    """ "xavier": the textbook's train_ch6 init (Xavier-uniform conv and linear weights)."""
    if scheme == "xavier":
        for m in model.modules():
            if type(m) in (nn.Linear, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)


def autocast(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast. `cache=False` inside a CUDA graph: cached casts of the weights would be
    captured stale (PyTorch's advice for graphs)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=cache
    )


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sums: torch.Tensor,
    *,
    optimizer_step: Callable[[], None],
    label_smoothing: float,
    amp: bool,
    cache_casts: bool = True,
) -> None:
    """One training step on gradients set to None: forward under autocast, loss, backward, the
    optimizer's update, and the batch's (loss sum, correct, count) added to `sums` on the device,
    with no host read. The eager loop runs it op by op; on CUDA the same function is captured
    whole in a graph (train/graphs.py) and replayed."""
    with autocast(x.device, amp, cache_casts):
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
    loss.backward()
    optimizer_step()
    with torch.no_grad():
        # torch.full fills on the device; torch.tensor(..., device=cuda) would copy from the host
        # and make it wait for the device at every step.
        n = torch.full((), float(len(y)), dtype=torch.float64, device=x.device)
        sums += torch.stack([loss.detach().double() * n, (out.argmax(1) == y).sum().double(), n])


class WeightAverage:
    """An exponential moving average of a model's weights and buffers, batch-norm running
    statistics included (as timm's ModelEmaV2): after each optimizer step, avg += (1 - decay) *
    (w - avg). `model` is the averaged copy, in eval mode: what the run evaluates and saves.

    The float tensors are updated by torch's own EMA function (swa_utils.get_ema_multi_avg_fn, one
    foreach lerp); integer buffers (batch norm's step counters) are copied. Not swa_utils.AveragedModel
    itself: its update reads a counter back to the host every step, which a GPU would wait for and
    a CUDA graph cannot capture."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self._lerp = get_ema_multi_avg_fn(decay)
        pairs = list(
            zip(
                [*self.model.parameters(), *self.model.buffers()],
                [*model.parameters(), *model.buffers()],
            )
        )
        self._floats = (
            [a for a, _ in pairs if a.is_floating_point()],
            [m for a, m in pairs if a.is_floating_point()],
        )
        self._others = [(a, m) for a, m in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self._lerp(*self._floats, None)
        for averaged, current in self._others:
            averaged.copy_(current)


class EagerStep:
    """`train_step` run op by op with the optimizer's own update: the CPU's path, DDP's, and
    wherever no graph is captured. `sums` holds the epoch's running (loss sum, correct, count);
    `average`, when given, is updated after every optimizer step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        device: torch.device,
        amp: bool,
        average: WeightAverage | None = None,
    ) -> None:
        self.model, self.optimizer, self.device, self.amp, self.average = (
            model,
            optimizer,
            device,
            amp,
            average,
        )
        self.label_smoothing = cfg.label_smoothing
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def start_epoch(self, partial: list[float]) -> None:
        self.sums = torch.tensor(partial, dtype=torch.float64, device=self.device)

    def _update(self) -> None:
        self.optimizer.step()
        if self.average is not None:
            self.average.update()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        train_step(
            self.model,
            x,
            y,
            self.sums,
            optimizer_step=self._update,
            label_smoothing=self.label_smoothing,
            amp=self.amp,
        )


def batch_sums(
    out: torch.Tensor, y: torch.Tensor, sums: torch.Tensor, confusion: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a batch's (loss sum, correct, count) to `sums` and its (true, predicted) pairs to
    `confusion`, on the device: no host read (index_add_, unlike bincount, needs no size from the
    host). Returns each example's top probability and predicted class."""
    logits = out.float()
    top_prob, pred = logits.softmax(1).max(1)
    loss = F.cross_entropy(logits, y, reduction="sum")
    count = torch.full(
        (), float(len(y)), dtype=torch.float64, device=out.device
    )  # a fill, not a host copy
    sums += torch.stack([loss.double(), (pred == y).sum().double(), count])
    if confusion is not None:
        n = confusion.shape[0]
        confusion.view(-1).index_add_(0, y * n + pred, torch.ones_like(y))
    return top_prob, pred


def evaluation_result(
    sums: torch.Tensor,
    confusion: torch.Tensor | None,
    dist: DistInfo,
    per_example: tuple[list, list] | None = None,
) -> dict:
    """The figures of an evaluation, summed (and per-example results gathered) over the processes:
    loss, acc, count; "confusion" when counted; "top_prob" and "pred" (each example's top
    probability and predicted class, in dataset order, on the CPU) when `per_example` was collected."""
    all_reduce_sum(sums, dist)
    if confusion is not None:
        all_reduce_sum(confusion, dist)
    loss_sum, correct, count = sums.tolist()
    result = {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1), "count": int(count)}
    if confusion is not None:
        result["confusion"] = confusion.cpu()
    if (
        per_example is not None
    ):  # a process may have no example (a split smaller than the processes)
        for (name, dtype), parts in zip(
            (("top_prob", torch.float32), ("pred", torch.int64)), per_example
        ):
            local = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=sums.device)
            result[name] = gather_concat(local.to(dtype), dist).cpu()
    return result


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    amp: bool = False,
    num_classes: int | None = None,
    dist: DistInfo = DistInfo(),
    per_example: bool = False,
) -> dict:
    """Loss, accuracy and count over the loader (summed over all processes); a confusion
    matrix (rows: true class, columns: predicted) when `num_classes` is given; each example's top
    probability and predicted class with `per_example` (see `evaluation_result`)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    confusion = (
        torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        if num_classes
        else None
    )
    collected = ([], []) if per_example else None
    for x, y in loader:
        with autocast(device, amp):
            out = model(x)
        top_prob, pred = batch_sums(out, y, sums, confusion)
        if collected is not None:
            collected[0].append(top_prob)
            collected[1].append(pred)
    return evaluation_result(sums, confusion, dist, collected)


class Evaluator:
    """`evaluate` bound to a model: what `fit` calls after each epoch (train/graphs.py has the
    CUDA-graph kind, with the same call)."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        amp: bool = False,
        num_classes: int | None = None,
        dist: DistInfo = DistInfo(),
        per_example: bool = False,
    ) -> None:
        self.model, self.device, self.amp, self.num_classes, self.dist = (
            model,
            device,
            amp,
            num_classes,
            dist,
        )
        self.per_example = per_example

    def __call__(self, loader) -> dict:
        return evaluate(
            self.model,
            loader,
            self.device,
            amp=self.amp,
            num_classes=self.num_classes,
            dist=self.dist,
            per_example=self.per_example,
        )


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
    history: list = field(default_factory=list)  # one metrics row per completed epoch
    best_val_acc: float = -1.0
    best_epoch: int = -1


@dataclass
class Hooks:
    """What the loop tells the outside world; the run folder and the progress display plug in here."""

    on_progress: Callable[[int, int, dict], None] = lambda step, total, stats: None
    on_epoch_end: Callable[[TrainState, dict, bool], None] = lambda state, row, is_best: None
    on_interrupt: Callable[[TrainState], None] = lambda state: None
    on_evaluate: Callable[[int, str, dict], None] = lambda epoch, split, result: (
        None
    )  # with its confusion matrix


def fit(
    model: nn.Module,
    train_loader,
    cfg: TrainConfig,
    device: torch.device,
    *,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    val_loader=None,
    test_loader=None,
    amp: bool = False,
    dist: DistInfo = DistInfo(),
    hooks: Hooks = Hooks(),
    eval_model: nn.Module | None = None,
    step=None,
    evaluator=None,
) -> TrainState:
    """Train from `state` to cfg.epochs. `model` may be wrapped (DDP, compiled); `eval_model`
    (default: `model`) is what the evaluations run, so a compiled `model` need not be compiled
    again for evaluation's mode (with --ema it is the step's average). `step` (default: an
    EagerStep) takes each training step and `evaluator` (default: an Evaluator of eval_model)
    each evaluation: train/graphs.py has their CUDA-graph kinds."""
    eval_model = model if eval_model is None else eval_model
    step = step or EagerStep(model, optimizer, cfg, device, amp)
    evaluator = evaluator or Evaluator(eval_model, device, amp=amp, num_classes=None, dist=dist)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    with StopFlag() as stop:
        for epoch in range(state.epoch, cfg.epochs):
            model.train()
            train_loader.set_epoch(epoch)
            skip = state.step_in_epoch  # resuming inside an epoch: replay the loader up to there
            # state.partial holds all processes' sums (see the stop below): rank 0 carries them on
            step.start_epoch(state.partial if dist.is_main else [0.0, 0.0, 0.0])
            started = time.perf_counter()
            for i, (x, y) in enumerate(train_loader):
                if i < skip:
                    continue
                lr = lr_at(state.global_step, total_steps, cfg)
                step(x, y, lr)
                state.global_step += 1
                state.step_in_epoch = i + 1
                requested = stop.requested  # read once per step
                # One process stops at the step Ctrl-C lands on. Several processes see it at different
                # steps, so they stop at the next sync point, having all-reduced the flag with the sums.
                if (
                    (requested and not dist.enabled)
                    or (i + 1) % SYNC_EVERY == 0
                    or i + 1 == steps_per_epoch
                ):
                    (loss_sum, correct, count), stopping = sum_and_any(step.sums, requested, dist)
                    if not math.isfinite(loss_sum):
                        raise shared(
                            TrainingError(
                                f"the training loss became {loss_sum / count} at epoch {epoch + 1}, step {i + 1}; "
                                f"the last good checkpoint (epoch {state.epoch}) is kept; lower --lr or check the data"
                            )
                        )
                    hooks.on_progress(
                        i + 1,
                        steps_per_epoch,
                        {"loss": loss_sum / count, "acc": correct / count, "lr": lr},
                    )
                    if stopping and i + 1 < steps_per_epoch:
                        state.partial = [loss_sum, correct, count]
                        state.train_seconds += time.perf_counter() - started
                        hooks.on_interrupt(state)
                        raise shared(Interrupted(f"interrupted at epoch {epoch + 1}, step {i + 1}"))
            average_buffers(
                model, dist
            )  # evaluation and the saved weights see one set of BN statistics
            if getattr(step, "average", None) is not None:
                average_buffers(step.average.model, dist)
            sums = all_reduce_sum(step.sums.clone(), dist)
            epoch_seconds = time.perf_counter() - started
            state.train_seconds += epoch_seconds
            loss_sum, correct, count = sums.tolist()
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / count,
                "train_acc": correct / count,
                "examples": count,
            }
            is_best = False
            for name, loader in (("val", val_loader), ("test", test_loader)):
                if loader is not None:
                    r = evaluator(loader)
                    row[f"{name}_loss"], row[f"{name}_acc"] = r["loss"], r["acc"]
                    hooks.on_evaluate(epoch + 1, name, r)
            if val_loader is not None and row["val_acc"] > state.best_val_acc:
                state.best_val_acc, state.best_epoch, is_best = row["val_acc"], epoch + 1, True
            row["lr"] = lr_at(max(state.global_step - 1, 0), total_steps, cfg)
            # throughput counts training steps only (as the textbook's train_ch6 does)
            row["examples_per_sec"] = count / epoch_seconds if epoch_seconds > 0 else 0.0
            row["epoch_seconds"] = time.perf_counter() - started
            state.history.append(row)
            state.epoch, state.step_in_epoch, state.partial = epoch + 1, 0, [0.0, 0.0, 0.0]
            hooks.on_epoch_end(state, row, is_best)
            if any_rank(stop.requested, dist, device) and epoch + 1 < cfg.epochs:
                hooks.on_interrupt(state)
                raise shared(Interrupted(f"interrupted after epoch {epoch + 1}"))
    return state
