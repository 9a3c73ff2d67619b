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

import atexit
import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from resnetlab.device import device_type
from resnetlab.errors import ResnetlabError, TrainingError, UsageError, first_line

TIMEOUT_ENV = "RESNETLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = (
    300  # longer than any step or evaluation we expect, short enough not to feel like a hang
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


def env_int(name: str, default: int | None = None) -> int:
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
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    info = DistInfo(env_int("RANK"), world, env_int("LOCAL_RANK", 0))
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
                f"{timeout.total_seconds():g} s ({_peer_message(e)}); check that every process "
                f"started and that the address is reachable"
            ) from None
    return info


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# Set by session() when every process finished the run and left the group together.
_finished_together = False


def exit_status(code: int) -> int:
    """`code`, for a process to exit with; a torchrun process whose run every process finished
    (code 0, session() left together) ends here instead, at once, without the interpreter's
    teardown. DistributedDataParallel keeps Gloo's process group alive past
    destroy_process_group (a reference held in C++: its worker and transport threads still run
    after the group is destroyed and every Python reference is gone), and on busy cores one of
    those threads aborted the process in that teardown ("terminate called without an active
    exception", exit 134, 1 run in 8 to 12) after the summary was printed. Only a finished run
    leaves this way: a process whose peer failed exits as before, after its own error line, so
    that torchrun does not stop the others before they print theirs."""
    if code != 0 or not _finished_together:
        return code
    atexit._run_exitfuncs()  # what the interpreter would run first (workers, temporary files)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def session(info: DistInfo) -> Iterator[None]:
    """The body of a multi-process run: a lost or stalled peer becomes one clear TrainingError,
    and the process group is left on the way out."""
    global _finished_together
    together = failed_peer = finished = False
    try:
        yield
        together = finished = True
    except ResnetlabError as e:
        together = getattr(e, "shared", False)
        raise
    except (RuntimeError, dist.DistError) as e:
        if not (info.enabled and is_peer_failure(e)):
            raise
        failed_peer = True
        raise TrainingError(
            f"process {info.rank} of {info.world_size} lost the others ({_peer_message(e)}): another process "
            f"stopped or stalled; its own output says why. Waits are bounded by {TIMEOUT_ENV} "
            f"(now {collective_timeout().total_seconds():g} s)"
        ) from None
    finally:
        if (
            info.enabled and dist.is_initialized() and not failed_peer
        ):  # after a failed collective, leaving could block
            left_together = False
            if together:
                # Leave together: a Gloo process that exits while another still holds its
                # connections sometimes aborts in teardown (measured: 3 exits in 20 without this).
                with contextlib.suppress(RuntimeError, dist.DistError):
                    barrier()
                    left_together = finished
            shutdown(info)
            _finished_together = left_together


_PEER_FAILURE = re.compile(
    r"gloo|nccl|connection (reset|closed|refused)|timed out|broken pipe", re.I
)


def is_peer_failure(error: BaseException) -> bool:
    """Whether an exception from a collective means another process is gone or stuck."""
    return isinstance(error, dist.DistError) or bool(_PEER_FAILURE.search(str(error)))


def _peer_message(error: BaseException) -> str:
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
    if env_int("WORLD_SIZE", 1) <= 1:
        return 0
    return env_int("RANK", 0)


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


# --- batch norm over all processes (--sync-bn) -----------------------------------------------


@contextlib.contextmanager
def local_main_first(info: DistInfo) -> Iterator[None]:
    """Local rank 0 of each machine runs the body first (a download fills the cache once), then the rest."""
    if info.enabled and info.local_rank != 0:
        barrier()
    yield
    if info.enabled and info.local_rank == 0:
        barrier()


def barrier() -> None:
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


# --- refusing mixed setups -----------------------------------------------------------------


# --- `resnetlab train --nproc N` ------------------------------------------------------------
