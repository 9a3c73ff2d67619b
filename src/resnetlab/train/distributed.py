"""torch.distributed glue: a process learns its rank from torchrun's environment variables.

`torchrun --nproc_per_node=N -m resnetlab train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `resnetlab train --nproc N` runs that command for
you (`launch_local`). One process (no WORLD_SIZE, or 1) needs none of this and skips it all.

What keeps N processes in step:
- every wait on the others is bounded (`RESNETLAB_DIST_TIMEOUT` seconds, default 300), so a
  process that died or stalled stops the rest with a clear error instead of a hang;
- before any work, the processes compare their configuration, data and versions
  (`check_same_setup`) and refuse to start when they differ;
- decisions that end a run (Ctrl-C, a non-finite loss) are taken on all-reduced values, so every
  process takes them at the same step; such errors are `shared`: rank 0 reports them, the others
  exit with the same status and say nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from resnetlab import __version__
from resnetlab.errors import Interrupted, ResnetlabError, TrainingError, UsageError, first_line
from resnetlab.train.device import device_type

TIMEOUT_ENV = "RESNETLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = (
    300  # longer than any step or evaluation we expect, short enough not to feel like a hang
)
SHUTDOWN_TIMEOUT_S = (
    120  # `--nproc`: how long torchrun lets the processes finish after Ctrl-C (its default: 30 s)
)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# --- joining and leaving ---------------------------------------------------------------------


def collective_timeout() -> timedelta:
    """How long any process waits for the others (joining, every collective): RESNETLAB_DIST_TIMEOUT."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(
            f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; unset it for {DEFAULT_TIMEOUT_S}"
        )
    return timedelta(seconds=seconds)


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name) or None
    if raw is None and default is not None:
        return default
    if raw is None:
        raise UsageError(
            f"WORLD_SIZE is set but {name} is not; start the processes with torchrun "
            f"(or `resnetlab train --nproc N`), which sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
        )
    try:
        return int(raw)
    except ValueError:
        raise UsageError(
            f"{name}={raw!r} is not a whole number; it should come from torchrun"
        ) from None


def init_from_env(device: str) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); one process: no-op.

    Gloo on the CPU, NCCL on CUDA. `device` (a --device value) need only name the type: each
    process then takes the GPU numbered by its LOCAL_RANK."""
    device = torch.device(device_type(device))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    info = DistInfo(_env_int("RANK"), world, _env_int("LOCAL_RANK", 0))
    if device.type == "cuda" and info.local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"process {info.rank} (LOCAL_RANK {info.local_rank}) has no GPU: this machine shows "
            f"{torch.cuda.device_count()}; start at most that many processes per machine"
        )
    if not dist.is_initialized():
        timeout = collective_timeout()
        try:
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout
            )
        except ValueError as e:  # env:// without MASTER_ADDR / MASTER_PORT
            raise UsageError(
                f"cannot join the other processes: {e}; start them with torchrun"
            ) from None
        except (RuntimeError, dist.DistError) as e:
            raise TrainingError(
                f"process {info.rank} could not reach the others at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within "
                f"{timeout.total_seconds():g} s ({_first_line(e)}); check that every process "
                f"started and that the address is reachable"
            ) from None
    return info


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(info: DistInfo) -> Iterator[None]:
    """The body of a multi-process run: a lost or stalled peer becomes one clear TrainingError,
    and the process group is left on the way out."""
    together = failed_peer = False
    try:
        yield
        together = True
    except ResnetlabError as e:
        together = getattr(e, "shared", False)
        raise
    except (RuntimeError, dist.DistError) as e:
        if not (info.enabled and is_peer_failure(e)):
            raise
        failed_peer = True
        raise TrainingError(
            f"process {info.rank} of {info.world_size} lost the others ({_first_line(e)}): another process "
            f"stopped or stalled; its own output says why. Waits are bounded by {TIMEOUT_ENV} "
            f"(now {collective_timeout().total_seconds():g} s)"
        ) from None
    finally:
        if (
            info.enabled and dist.is_initialized() and not failed_peer
        ):  # after a failed collective, leaving could block
            if together:
                # Leave together: a Gloo process that exits while another still holds its
                # connections sometimes aborts in teardown (measured: 3 exits in 20 without this).
                with contextlib.suppress(RuntimeError, dist.DistError):
                    _barrier()
            shutdown(info)


_PEER_FAILURE = re.compile(
    r"gloo|nccl|connection (reset|closed|refused)|timed out|broken pipe", re.I
)


def is_peer_failure(error: BaseException) -> bool:
    """Whether an exception from a collective means another process is gone or stuck."""
    return isinstance(error, dist.DistError) or bool(_PEER_FAILURE.search(str(error)))


def _first_line(error: BaseException) -> str:
    return re.sub(
        r"^\[[^\]]*\]\s*", "", first_line(error)
    )  # drop gloo's "[/path/to/pair.cc:537] " prefix


# --- errors every process raises alike -----------------------------------------------------


def shared(error: ResnetlabError) -> ResnetlabError:
    """Mark an error every process raises alike (decided on all-reduced values): rank 0 reports it."""
    error.shared = True
    return error


def process_rank() -> int:
    """This process's rank as torchrun set it (0 when there is one process): for printing decisions
    made outside `train`."""
    if _env_int("WORLD_SIZE", 1) <= 1:
        return 0
    return _env_int("RANK", 0)


def error_to_report(error: ResnetlabError) -> ResnetlabError | None:
    """What this process should print for `error`: None for a shared error on a rank other than 0
    (rank 0 prints it); other ranks' own errors say which rank they come from."""
    rank = process_rank()
    if rank == 0:
        return error
    if getattr(error, "shared", False):
        return None
    error.args = (f"rank {rank}: {error}",)
    return error


# --- collectives the training loop uses ------------------------------------------------------


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_concat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every process's `t` (1-d, lengths may differ by process), concatenated in rank order: the
    per-example results of an evaluation split into contiguous blocks, in dataset order."""
    if not info.enabled:
        return t
    n = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = t.new_zeros(max(sizes))
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def sum_and_any(sums: torch.Tensor, flag: bool, info: DistInfo) -> tuple[list[float], bool]:
    """The running sums of all processes and whether any process raised `flag`, in one all-reduce."""
    if not info.enabled:
        return sums.tolist(), flag
    packed = torch.cat([sums, sums.new_tensor([1.0 if flag else 0.0])])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    *totals, raised = packed.tolist()
    return totals, raised > 0


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() > 0


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Make the buffers (batch-norm running statistics) equal on every process: floats are averaged
    over the processes, counters taken from rank 0. Training never reads running statistics, so
    this changes only what evaluation and the saved weights see; with --sync-bn they are already equal."""
    if not info.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world_size)
        else:
            dist.broadcast(buf, src=0)


def wrap_ddp(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """DistributedDataParallel without its per-forward buffer broadcast: `average_buffers` syncs
    them once per epoch, and evaluation (where ranks may run different numbers of batches)
    then has no collective inside the forward pass."""
    if device.type not in ("cpu", "cuda"):
        raise shared(
            UsageError(
                f"multi-process training runs on CPUs (Gloo) or CUDA GPUs (NCCL), not on "
                f"{device.type}; pass --device cpu"
            )
        )
    if device.type == "cuda" and device.index != info.local_rank:
        raise shared(
            UsageError(
                f"--device {device} would put every process on one GPU; pass --device cuda "
                f"(each process takes the GPU numbered by its LOCAL_RANK)"
            )
        )
    kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    # torch 2.13 renamed broadcast_buffers; the new flag still syncs at construction, which we want
    kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = (
        False
    )
    return nn.parallel.DistributedDataParallel(model, **kwargs)


# --- batch norm over all processes (--sync-bn) -----------------------------------------------


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every process's loss reaches
    every process's inputs through the shared statistics."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all processes), on any
    device: torch's SyncBatchNorm runs on GPUs only, this one serves the CPU (Gloo). Same
    parameters, buffers and state-dict keys as BatchNorm2d, so saved weights load into the plain model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        xf = (
            x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        )  # statistics in fp32 under autocast
        local_count = xf.new_tensor([x.numel() / x.shape[1]])
        sums = _SumOverProcesses.apply(torch.cat([xf.sum(dims), local_count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centered = xf - mean.view(shape)
        var = (
            _SumOverProcesses.apply(centered.square().sum(dims)) / n
        )  # two passes: no E[x^2]-E[x]^2 cancellation
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(
                    (var * n / (n - 1).clamp(min=1)).to(self.running_var.dtype), factor
                )
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """--sync-bn: batch norms normalize with the global batch's statistics. torch's SyncBatchNorm
    on CUDA; GlobalBatchNorm2d elsewhere. The new layers share the old ones' parameters and buffers."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if type(model) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(
            model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats
        )
        if model.affine:
            new.weight, new.bias = model.weight, model.bias
        new.running_mean, new.running_var = model.running_mean, model.running_var
        new.num_batches_tracked = model.num_batches_tracked
        new.train(model.training)
        return new
    for name, child in model.named_children():
        model.add_module(name, convert_sync_batchnorm(child, device))
    return model


@contextlib.contextmanager
def local_main_first(info: DistInfo) -> Iterator[None]:
    """Local rank 0 of each machine runs the body first (a download fills the cache once), then the rest."""
    if info.enabled and info.local_rank != 0:
        _barrier()
    yield
    if info.enabled and info.local_rank == 0:
        _barrier()


def _barrier() -> None:
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


# --- refusing mixed setups -----------------------------------------------------------------


def fingerprint(dataset) -> str | None:
    """A short digest of a dataset: its size, image shape, classes, every label and a sample of pixels."""
    if dataset is None:
        return None
    h = hashlib.blake2b(digest_size=12)
    h.update(repr((len(dataset), tuple(dataset.images.shape), list(dataset.classes))).encode())
    h.update(dataset.labels.contiguous().numpy().tobytes())
    flat = dataset.images.reshape(-1)
    step = max(
        1, flat.numel() // (1 << 22)
    )  # ~4 MB of pixels: enough to tell two versions apart, fast on ImageNet
    h.update(flat[::step].contiguous().numpy().tobytes())
    return h.hexdigest()


def describe_setup(config: dict, datasets: dict, **resolved) -> dict:
    """What must be the same on every process: the configuration (less where the data lives),
    what `auto` settings resolved to, the data and the versions."""
    return {
        "config": {k: v for k, v in config.items() if k != "data_dir"},
        **resolved,
        "data": {split: fingerprint(ds) for split, ds in datasets.items()},
        "versions": {"resnetlab": __version__, "torch": torch.__version__},
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "config.model_kwargs":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def describe_mismatch(setups: list[dict]) -> str | None:
    """One line naming what differs between the processes' setups, or None when they agree."""
    flat = [_flatten(s) for s in setups]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    diffs = []
    for key in keys:
        values = [f.get(key) for f in flat]
        other = next((r for r, v in enumerate(values) if v != values[0]), None)
        if other is not None:
            name = key.removeprefix("config.")
            diffs.append(f"{name} is {values[0]!r} on rank 0 but {values[other]!r} on rank {other}")
    if not diffs:
        return None
    more = f" (and {len(diffs) - 3} more differences)" if len(diffs) > 3 else ""
    return (
        f"the {len(setups)} processes were not started alike: {'; '.join(diffs[:3])}{more}; "
        f"start every process with the same flags, data and resnetlab/torch versions"
    )


def check_same_setup(info: DistInfo, setup: dict) -> None:
    """Refuse to train when the processes differ in configuration, data or versions."""
    if not info.enabled:
        return
    setups = [None] * info.world_size
    dist.all_gather_object(setups, setup)
    problem = describe_mismatch(setups)
    if problem:
        raise shared(UsageError(problem))


def check_resume_world_size(saved: int, info: DistInfo, run) -> None:
    """A run resumes with as many processes as it was trained with (its data split and batch-norm
    statistics depend on the count)."""
    if saved == info.world_size:
        return
    how = (
        f"resnetlab train --resume {run}"
        if saved == 1
        else f"resnetlab train --nproc {saved} --resume {run} (or torchrun with {saved} processes in all)"
    )
    raise shared(
        UsageError(
            f"{run} was trained with {saved} process(es), this launch has {info.world_size}; "
            f"resume it with the same count: {how}"
        )
    )


# --- `resnetlab train --nproc N` ------------------------------------------------------------


def torchrun_command(nproc: int, train_argv: list[str]) -> list[str]:
    """The torchrun command line that runs `resnetlab train <train_argv>` in `nproc` processes here."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "resnetlab",
        "train",
        *train_argv,
    ]


def launch_local(nproc: int, train_argv: list[str]) -> int:
    """Run `resnetlab train <train_argv>` in `nproc` processes on this machine; their exit status."""
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
    if _env_int("WORLD_SIZE", 1) > 1:
        raise UsageError(
            "--nproc starts torchrun itself; under torchrun (WORLD_SIZE is set) drop --nproc"
        )
    env = dict(os.environ)
    # torchrun would set 1 thread per process (with a warning); share this machine's cores instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    # Ctrl-C reaches torchrun too (same terminal); it forwards it to the processes, which stop
    # together and save a checkpoint. This process only notes it and waits for the outcome.
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        status = subprocess.call(torchrun_command(nproc, train_argv), env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted and status != 0:
        return Interrupted.exit_code  # torchrun itself exits 1 after passing Ctrl-C on
    return status if status >= 0 else 128 - status  # killed by signal N: the shell's 128 + N
