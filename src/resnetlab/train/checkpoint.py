"""What a checkpoint holds, in one place: made from a run's parts after each epoch (or at Ctrl-C),
written through resnetlab.fileio, loaded and checked for damage, restored into the model, optimizer
and weight average the trainer rebuilt from its configuration, and the process count it needs.
Checkpoints hold tensors and plain Python types only: `torch.load(path, weights_only=True)` reads them."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from resnetlab.distributed.group import DistInfo, shared
from resnetlab.errors import CheckpointError, UsageError, first_line, plural
from resnetlab.fileio import write_bytes
from resnetlab.rundir import CHECKPOINT_FILE
from resnetlab.train.engine import TrainState

CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}; --resume takes the folder of a run that saved at least one epoch"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle: torch raises many types
        raise CheckpointError(
            f"{path} is not a readable resnetlab checkpoint ({first_line(e)}); it may be truncated or foreign"
        ) from None
    if (
        not isinstance(ckpt, dict)
        or ckpt.get("version") != CHECKPOINT_VERSION
        or "config" not in ckpt
    ):
        raise CheckpointError(
            f"{path} is not a resnetlab checkpoint (version {CHECKPOINT_VERSION}); it was written by another program"
        )
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise CheckpointError(
            f"{path} is a damaged resnetlab checkpoint ({problem}); resume from another copy or start again"
        )
    return ckpt


def _checkpoint_problem(ckpt: dict) -> str | None:
    """What is wrong with the contents of a checkpoint that unpickled (found by feeding `--resume`
    checkpoints with one part changed: each was a traceback deep in the trainer)."""
    for key in ("config", "model", "optimizer", "state", "rng"):
        if not isinstance(ckpt.get(key), dict):
            return f"its {key!r} is {type(ckpt.get(key)).__name__}, not a dict"
    if "test_split" in ckpt and not isinstance(ckpt["test_split"], str):
        return f"its test split's digest is {type(ckpt['test_split']).__name__}, not a str"
    if "plan" in ckpt and not isinstance(ckpt["plan"], dict):
        return f"its time plan is {type(ckpt['plan']).__name__}, not a dict"
    if not ckpt["model"] or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        return "its model holds no tensors, or other things"
    average = ckpt.get("average")
    if average is not None and not (
        isinstance(average, dict)
        and average
        and all(isinstance(v, torch.Tensor) for v in average.values())
    ):
        return "its weight average holds no tensors, or other things"
    updates = ckpt.get("average_updates", 0)
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        return f"its weight average's update count is {updates!r}"
    if not isinstance(ckpt["optimizer"].get("state"), dict) or not isinstance(
        ckpt["optimizer"].get("param_groups"), list
    ):
        return "its optimizer state is incomplete"
    rng = ckpt["rng"].get("torch")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        return "its random-number state is not a byte tensor"
    fields = {f.name: f.type for f in TrainState.__dataclass_fields__.values()}
    state = ckpt["state"]
    if set(state) - set(fields):
        return f"its state has unknown entries {sorted(set(state) - set(fields))}"
    for name, kind in (
        ("epoch", int),
        ("step_in_epoch", int),
        ("global_step", int),
        ("best_epoch", int),
        ("train_seconds", (int, float)),
        ("wall_seconds", (int, float)),
        ("best_val_acc", (int, float)),
        ("history", list),
        ("partial", list),
        ("bad_images", list),
        ("partial_bad", list),
    ):
        value = state.get(name, 0 if kind is int else [] if kind is list else 0.0)
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"its state's {name} is {value!r}"
    if min(state.get("epoch", 0), state.get("step_in_epoch", 0), state.get("global_step", 0)) < 0:
        return "its state counts negative steps"
    epochs = ckpt["config"].get("epochs")
    if isinstance(epochs, int) and state.get("epoch", 0) > epochs:
        return f"its state is past the run's end (epoch {state.get('epoch')} of {epochs})"
    for name in ("bad_images", "partial_bad"):  # dataset indices of images that did not decode
        if not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in state.get(name, [])
        ):
            return f"its state's {name} holds something other than image indices"
    if not all(isinstance(row, dict) for row in state.get("history", [])):
        return "its metrics history is not a list of rows"
    if len(state.get("history", [])) != state.get("epoch", 0):
        return f"its metrics history has {len(state.get('history', []))} rows for {state.get('epoch', 0)} epochs"
    return None


def restore_checkpoint(checkpoint: dict, model, optimizer, where, *, average=None) -> TrainState:
    """Load a checkpoint (from load_checkpoint) into the model and optimizer the trainer built from
    its configuration, and into `average` (the --ema steps.WeightAverage: its weights and its
    update count, which sets its decay's warm-up) when given; the TrainState to continue from.
    The torch RNG continues where it was."""
    if average is not None and "average" not in checkpoint:
        raise CheckpointError(
            f"{where}: the checkpoint holds no moving average of the weights, but its configuration "
            "asks for one (--ema); it is damaged or was edited"
        )
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if average is not None:
            average.model.load_state_dict(checkpoint["average"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{where}: the checkpoint's weights do not fit the model its configuration builds ({first})"
        ) from None
    state = TrainState(**checkpoint["state"])
    if average is not None:
        # one update per step: a checkpoint written before the count was kept counted as many
        average.updates.fill_(checkpoint.get("average_updates", state.global_step))
    torch.set_rng_state(checkpoint["rng"]["torch"])
    return state


def check_resume_world_size(saved: int, info: DistInfo, run, *, elastic: bool = False) -> None:
    """A run resumes with as many processes as it was trained with (in memory, its data split and
    batch-norm statistics depend on the count), unless `elastic`: streamed data's global batches
    do not depend on the count (data/stream.py), so such a run resumes with any."""
    if saved == info.world_size or elastic:
        return
    how = (
        f"resnetlab train --resume {run}"
        if saved == 1
        else f"resnetlab train --nproc {saved} --resume {run} (or torchrun with {saved} processes in all)"
    )
    raise shared(
        UsageError(
            f"{run} was trained with {saved} {plural(saved, 'process', 'processes')}, "
            f"this launch has {info.world_size}; "
            f"resume it with the same count: {how}"
        )
    )


def make_checkpoint(
    cfg,
    model,
    optimizer,
    state: TrainState,
    world_size: int,
    average=None,
    policy=None,
    plan=None,
    identity: dict[str, str] | None = None,
) -> dict:
    """What checkpoint.pt holds after `state`: the configuration (a dict), the weights, the
    optimizer, the state, the random-number state, the process count, with --ema the average
    (a steps.WeightAverage: its weights and its update count), and
    `policy` ({"amp", "channels_last"} as resolved: a resumed run keeps them, whatever a probe
    would pick now), `identity` (the versions of the run's data, data/identity.py's
    data_identity: a resume checks them)."""
    checkpoint = {
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": vars(state).copy(),
        "rng": {"torch": torch.get_rng_state()},
        "world_size": world_size,
    }
    if average is not None:
        checkpoint["average"] = average.model.state_dict()
        checkpoint["average_updates"] = int(average.updates)  # once per epoch: a host read is fine
    if policy is not None:
        checkpoint["policy"] = policy
    if plan is not None:  # --time-limit's plan (train/timing.py): a resume keeps what was left
        checkpoint["plan"] = plan
    checkpoint.update(identity or {})
    return checkpoint


def write_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write `checkpoint` (from make_checkpoint) atomically, with this format's version."""
    buf = io.BytesIO()
    torch.save(dict(checkpoint, version=CHECKPOINT_VERSION), buf)
    write_bytes(path, buf.getvalue())
