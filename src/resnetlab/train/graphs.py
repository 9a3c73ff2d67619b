"""The training step and evaluation replayed from CUDA graphs: one launch a step instead of hundreds.

At the textbook's batch of 256 a GPU spends most of a step waiting for Python to launch kernels
(BENCHMARKS.md, "On a GPU"). PyTorch's CUDA graphs record a step's kernels once and replay them
with one call (torch.cuda.graphs, "whole network capture"):

- `CapturedStep` runs `steps.train_step`, the function the eager loop runs, for a few warm-up
  steps on a side stream (real steps: they train), then captures it with static input buffers
  and replays it for every later step. The learning rate lives in a device tensor that the
  schedule refills before each replay; the update is `SGDUpdate`, torch.optim.SGD's arithmetic
  with that tensor rate, on the optimizer's own momentum buffers (so checkpoints and resume are
  unchanged). Every batch must have the captured shape: the trainer drops each epoch's last,
  smaller batch, as with --compile.
- `CapturedEvaluator` replays one graph of the eval-mode forward and its sums per full batch; a
  last, smaller batch runs eagerly.

A capture chosen by default (not asked for with --capture) that raises does not stop the run:
given `fallback` (a `CaptureFallback`), the step or evaluator says why and runs op by op from
then on, as steps.EagerStep and evaluation.Evaluator do, with the same optimizer and sums.

Where captures apply, the policy the trainer and the bench ask (`capture_problem`,
`resolve_capture`): one process on CUDA, SGD, no --compile, batches of one shape.

Nothing else here runs without CUDA; `Graphs` is the seam the CPU tests replace to check the plumbing
(static buffers, the rate, warm-up, sums) with the capture itself taken out.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from resnetlab.device import autocast
from resnetlab.errors import UsageError, first_line
from resnetlab.inference.evaluation import Evaluator, batch_sums, evaluation_result
from resnetlab.report.observer import Observer
from resnetlab.train.steps import EagerStep, Step

WARMUP_STEPS = (
    3  # eager steps before capture: cuDNN autotuning, lazy allocations (PyTorch's example uses 3)
)


def capture_problem(
    device: torch.device, world_size: int, optimizer: str, compile: bool, one_shape: bool = True
) -> str | None:
    """Why training steps cannot be replayed from CUDA graphs here, or None when they can (and then
    they pay: on an H200 a captured resnet18_d2l step at batch 256 ran 45k ex/s in bf16 against
    22k eager). They need one process on CUDA (DDP's communication hooks are not captured here),
    SGD (no captured update for AdamW yet), no torch.compile (which has its own) and batches of one
    shape (`one_shape=False`: progressive resizing changes it each epoch)."""
    if not one_shape:
        return (
            "--capture replays one batch shape and --progressive-resize changes it each epoch; "
            "add --progressive-resize 0 or drop --capture"
        )
    if not (device.type == "cuda" and world_size == 1 and optimizer == "sgd" and not compile):
        return "--capture needs one process on a CUDA device, SGD and no --compile; drop --capture"
    return None


def resolve_capture(
    asked: bool | None,
    device: torch.device,
    world_size: int,
    optimizer: str,
    compile: bool,
    one_shape: bool = True,
) -> bool:
    """--capture as given, or where it applies when not given (`asked` None); given where it
    cannot apply, a UsageError says why."""
    problem = capture_problem(device, world_size, optimizer, compile, one_shape)
    if asked and problem:
        raise UsageError(problem)
    return problem is None if asked is None else asked


class Graphs:
    """The CUDA calls a captured step makes; the CPU tests hand the classes below a stand-in whose
    `capture(fn)` keeps `fn` and whose `replay()` calls it."""

    @staticmethod
    def side_stream(device: torch.device):
        return _SideStream(device)

    @staticmethod
    def capture(fn) -> torch.cuda.CUDAGraph:
        """A graph of what `fn` launches on the device; capturing records it without running it."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph


class CaptureFallback:
    """Where a capture chosen by default failed and the run went on op by op: `reasons` (one per
    step or evaluator that fell back), told to the run's `observers` (their `on_fallback`: the
    console says it, config.json and events.jsonl record it) as it happens."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.observers: Sequence[Observer] = ()  # the trainer's list, once it is made

    def __call__(self, what: str, error: BaseException) -> None:
        reason = f"capturing the {what} failed ({type(error).__name__}: {first_line(error, 200)})"
        self.reasons.append(reason)
        for observer in self.observers:
            observer.on_fallback(reason)

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) or None


class _SideStream(contextlib.AbstractContextManager):
    """Run a block on a side stream that waits for the current one, and make the current one wait for it."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)
        self.context = None

    def __enter__(self):
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        self.context = torch.cuda.stream(self.stream)
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)
        torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)
        return False


class SGDUpdate:
    """torch.optim.SGD's update (weight decay, momentum, Nesterov; no dampening, no maximize) with
    the rate read from a device tensor, on the optimizer's own momentum buffers.

    torch's SGD takes its rate as a Python number (a tensor rate is read back to the host), so a
    graph that replays it would keep the rate of its capture. Torch starts a momentum buffer as
    a copy of the first gradient; this one starts from zeros, which gives the same first buffer
    (0 * momentum + g)."""

    def __init__(self, optimizer: torch.optim.Optimizer, neg_lr: torch.Tensor) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise UsageError(
                f"a captured step updates with SGD; {type(optimizer).__name__} runs eagerly (--no-capture)"
            )
        for group in optimizer.param_groups:
            if group.get("dampening", 0) or group.get("maximize", False):
                raise UsageError("a captured SGD step supports no dampening and no maximize")
        self.optimizer, self.neg_lr = optimizer, neg_lr

    @torch.no_grad()
    def make_buffers(self) -> None:
        """Create the momentum buffers of every trainable parameter, zeroed, where missing: called
        before a capture, since a buffer created inside one would be zeroed again by every replay."""
        for group in self.optimizer.param_groups:
            if not group["momentum"]:
                continue
            for p in group["params"]:
                state = self.optimizer.state[p]
                if p.requires_grad and state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )

    @torch.no_grad()
    def __call__(self) -> None:
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            momentum = group["momentum"]
            if momentum:
                bufs = []
                for p in params:
                    state = self.optimizer.state[p]
                    if state.get("momentum_buffer") is None:  # never in a capture (make_buffers)
                        state["momentum_buffer"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format
                        )
                    bufs.append(state["momentum_buffer"])
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                grads = (
                    torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
                )
            torch._foreach_add_(params, torch._foreach_mul(grads, self.neg_lr))


class CapturedStep(Step):
    """`steps.train_step` replayed from one CUDA graph (see the module docstring); the same
    interface as steps.EagerStep (`options`: a Step's amp, label_smoothing and average)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        graphs=Graphs,
        warmup_steps: int = WARMUP_STEPS,
        fallback: CaptureFallback | None = None,
        **options,
    ) -> None:
        super().__init__(model, optimizer, device, **options)
        self.graphs, self.warmup_steps, self.fallback = graphs, warmup_steps, fallback
        self.eager = False  # True once a capture failed under `fallback`: op by op from then on
        self._eager_step_ = None  # the EagerStep that takes over then
        # A 0-d tensor of the parameters' dtype (float32): torch._foreach_mul takes its one-kernel
        # multi-tensor path only for a scalar tensor of the lists' dtype (a float64 rate costs one
        # kernel per parameter at every replay), and torch's SGD rounds -lr to float32 anyway.
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.neg_lr = torch.zeros((), dtype=dtype, device=device)
        self.update = SGDUpdate(optimizer, self.neg_lr)
        self.sums = torch.zeros(
            3, dtype=torch.float64, device=device
        )  # the graph adds into this tensor
        self.graph = self.x = self.y = None
        self.warmed = 0

    def start_epoch(self, partial: list[float]) -> None:
        self.sums.copy_(
            torch.tensor(partial, dtype=torch.float64)
        )  # in place: the graph holds its address

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.take_step(x, y, cache_casts=False)

    def update_weights(self) -> None:
        self.update()
        if self.average is not None:  # in the graph too: a foreach lerp on tensors that stay put
            self.average.update()

    def _eager_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """steps.EagerStep's step, on this step's optimizer (its momentum buffers) and sums."""
        if self._eager_step_ is None:
            self._eager_step_ = EagerStep(
                self.model,
                self.optimizer,
                self.device,
                amp=self.amp,
                label_smoothing=self.label_smoothing,
                average=self.average,
            )
            self._eager_step_.sums = self.sums  # the same tensor: start_epoch refills it in place
        self._eager_step_(x, y, lr)

    def _capture(self) -> bool:
        """Capture the step on the static buffers; False when it failed and `fallback` took over."""
        self.update.make_buffers()  # outside the graph: warmup_steps=0 has made none yet
        try:
            self.graph = self.graphs.capture(lambda: self._step(self.x, self.y))
        except Exception as e:
            if self.fallback is None:  # --capture was asked for: its failure is the run's
                raise
            self.graph = self.x = self.y = None
            self.eager = True
            self.fallback("training step", e)
            return False
        return True

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, loss_weight: float = 1.0
    ) -> None:
        # one process (no uneven shares): every batch's loss_weight is 1.0
        if self.eager:
            return self._eager_step(x, y, lr)
        self.neg_lr.fill_(-lr)  # a fill from a host number: no copy the host would wait for
        if self.graph is not None:
            if x.shape != self.x.shape:
                raise UsageError(
                    f"a captured step takes batches of {list(self.x.shape)}, got {list(x.shape)}; "
                    "drop the last partial batch (the trainer does) or run with --no-capture"
                )
            self.x.copy_(x)
            self.y.copy_(y)
            self.graph.replay()
            return
        if self.warmed < self.warmup_steps:
            with self.graphs.side_stream(self.device):
                self._step(x, y)
            self.warmed += 1
            return
        self.x, self.y = x.clone(memory_format=torch.preserve_format), y.clone()
        if not self._capture():
            return self._eager_step(x, y, lr)  # this batch too: no step is lost
        self.graph.replay()  # capturing recorded the step without running it


class CapturedEvaluator(Evaluator):
    """inference.evaluation.evaluate with each full batch replayed from one graph: an
    evaluation.Evaluator (`options`: its amp, num_classes, dist and per_example), the same call."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        graphs=Graphs,
        fallback: CaptureFallback | None = None,
        **options,
    ) -> None:
        super().__init__(model, device, **options)
        self.graphs, self.fallback = graphs, fallback
        num_classes = self.num_classes
        self.eager = False  # True once a capture failed under `fallback`: op by op from then on
        self.graph = self.x = self.y = self.outputs = None
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.confusion = (
            torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
            if num_classes
            else None
        )

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp, cache=False):
            out = self.model(x)
        return batch_sums(out, y, self.sums, self.confusion)

    def _captured_batch(self) -> None:
        self.outputs = self._batch(
            self.x, self.y
        )  # in a graph: its static outputs, rewritten by each replay

    def _capture(self) -> bool:
        """Capture a batch on the static buffers; False when it failed and `fallback` took over."""
        try:
            self.graph = self.graphs.capture(self._captured_batch)
        except Exception as e:
            if self.fallback is None:  # --capture was asked for: its failure is the run's
                raise
            self.graph = self.x = self.y = self.outputs = None
            self.eager = True
            self.fallback("evaluation", e)
            return False
        return True

    @torch.no_grad()  # not inference_mode: the graph's static tensors are reused across calls
    def __call__(self, loader) -> dict:
        self.model.eval()
        self.sums.zero_()
        if self.confusion is not None:
            self.confusion.zero_()
        collected = ([], []) if self.per_example else None
        full = _full_batch(loader)
        for x, y in loader:
            if (
                self.eager
                or (full is not None and len(x) != full)
                or (self.x is not None and x.shape != self.x.shape)
            ):
                outputs = self._batch(x, y)  # a smaller batch (a split's last, or a small split)
            elif self.x is None:  # the first full batch: warm up on it, capture on the next
                self.x, self.y = x.clone(memory_format=torch.preserve_format), y.clone()
                with self.graphs.side_stream(self.device):
                    outputs = self._batch(x, y)
            else:
                self.x.copy_(x)
                self.y.copy_(y)
                if self.graph is None and not self._capture():
                    outputs = self._batch(x, y)
                else:
                    self.graph.replay()
                    outputs = tuple(t.clone() for t in self.outputs)
            if collected is not None:
                collected[0].append(outputs[0])
                collected[1].append(outputs[1])
        return evaluation_result(
            self.sums.clone(),
            None if self.confusion is None else self.confusion.clone(),
            self.dist,
            collected,
            getattr(loader, "bad_indices", None),
        )


def _full_batch(loader) -> int | None:
    """The size of the loader's full batches (this process's share of its batch), or None for a
    plain list of batches, whose first batch then sets the captured shape."""
    batch_size = getattr(loader, "batch_size", None)
    if batch_size is None:
        return None
    return math.ceil(batch_size / getattr(loader, "world_size", 1))
