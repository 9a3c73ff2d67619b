"""One training step and what it updates: the optimizer (with its weight-decay groups), the textbook's
initialisation, the moving average of the weights (--ema), and `EagerStep`, the step run op by op."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.device import autocast
from resnetlab.train.config import TrainConfig


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
    loss_weight: float = 1.0,
) -> None:
    """One training step on gradients set to None: forward under autocast, loss, backward, the
    optimizer's update, and the batch's (loss sum, correct, count) added to `sums` on the device,
    with no host read. `y` holds class indices [b], or probabilities [b, classes] (a batch mixed
    by --mixup or --cutmix: data/mixing.py), whose largest counts as the label for the accuracy. The eager loop runs it op by op; on CUDA the same function is captured
    whole in a graph (train/graphs.py) and replayed."""
    with autocast(x.device, amp, cache_casts):
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
    # an uneven share of a global batch (several processes): see Loader.loss_weight
    (loss if loss_weight == 1.0 else loss * loss_weight).backward()
    optimizer_step()
    with torch.no_grad():
        # torch.full fills on the device; torch.tensor(..., device=cuda) would copy from the host
        # and make it wait for the device at every step.
        n = torch.full((), float(len(y)), dtype=torch.float64, device=x.device)
        labels = y if y.ndim == 1 else y.argmax(1)  # mixed: the dominant label
        sums += torch.stack(
            [loss.detach().double() * n, (out.argmax(1) == labels).sum().double(), n]
        )


class WeightAverage:
    """An exponential moving average of a model's weights and buffers, batch-norm running
    statistics included (as timm's ModelEmaV2): after each optimizer step, avg += (1 - d) *
    (w - avg). `model` is the averaged copy, in eval mode: what the run evaluates and saves.

    The decay warms up as timm's ModelEmaV3 and TensorFlow's ExponentialMovingAverage do: update
    t (from 0) uses d = min(decay, (1 + t) / (10 + t)), so the first update copies most of the
    weights and the average never spans more than about a ninth of the steps taken. Without it a
    decay set for a long run (the imagenet preset's 0.99968 at batch 32 for 2 epochs) kept the
    initial weights through a short one. A run long past 9 / (1 - decay) steps ends as without
    it: the imagenet preset's cap (0.99996585) is reached after 263k of its 750k steps, whose
    average then spans 29k steps.

    `updates` counts the updates on the device (no host read per step, and a CUDA graph replays
    it); the checkpoint keeps it. Float tensors move by foreach ops with the weight a 0-d tensor;
    integer buffers (batch norm's step counters) are copied. Not swa_utils.AveragedModel: its
    update reads a counter back to the host every step, which a GPU would wait for and a CUDA
    graph cannot capture."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
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
        first = self._floats[0][0] if self._floats[0] else torch.zeros(())
        # the lists' dtype: torch._foreach_mul_ takes its one-kernel path only for a 0-d tensor of it
        self._dtype = first.dtype
        self.updates = torch.zeros((), dtype=torch.int64, device=first.device)

    def weight(self) -> torch.Tensor:
        """1 - d of the next update, a 0-d tensor on the device: max(1 - decay, 9 / (10 + t))."""
        t = self.updates.to(torch.float64)  # one number: float64 costs nothing and rounds once
        return torch.clamp(9.0 / (10 + t), min=1 - self.decay).to(self._dtype)

    @torch.no_grad()
    def update(self) -> None:
        averaged, current = self._floats
        if averaged:
            step = torch._foreach_sub(current, averaged)
            torch._foreach_mul_(step, self.weight())
            torch._foreach_add_(averaged, step)
        for a, m in self._others:
            a.copy_(m)
        self.updates += 1


class Step:
    """What a training step holds, eager or captured (graphs.CapturedStep): the model, its
    optimizer and device, bf16 autocast, label smoothing and the --ema `average`, updated after
    every optimizer step; `sums`, the epoch's running (loss sum, correct, count)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        amp: bool,
        label_smoothing: float = 0.0,
        average: WeightAverage | None = None,
    ) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.amp, self.label_smoothing, self.average = amp, label_smoothing, average
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def update_weights(self) -> None:
        raise NotImplementedError

    def take_step(self, x: torch.Tensor, y: torch.Tensor, **extra) -> None:
        """One `train_step` with this step's model, sums, update, label smoothing and precision;
        `extra`: train_step's other arguments. Gradients start as None: backward then writes
        them afresh (in a graph, into buffers of its pool that every replay overwrites) instead
        of adding to the last step's."""
        self.optimizer.zero_grad(set_to_none=True)
        train_step(
            self.model,
            x,
            y,
            self.sums,
            optimizer_step=self.update_weights,
            label_smoothing=self.label_smoothing,
            amp=self.amp,
            **extra,
        )


class EagerStep(Step):
    """`train_step` run op by op with the optimizer's own update: the CPU's path, DDP's, and
    wherever no graph is captured."""

    def start_epoch(self, partial: list[float]) -> None:
        self.sums = torch.tensor(partial, dtype=torch.float64, device=self.device)

    def update_weights(self) -> None:
        self.optimizer.step()
        if self.average is not None:
            self.average.update()

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, loss_weight: float = 1.0
    ) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.take_step(x, y, loss_weight=loss_weight)
