"""The run folder: config.json, metrics.csv, summary.json, checkpoint.pt, weights, plots.

Every file is written through resnetlab.fileio (temporary name, then rename), so a crash at any
moment leaves the previous complete file. Checkpoints hold tensors and plain Python types only:
`torch.load(path, weights_only=True)` reads them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from datetime import datetime
from pathlib import Path

import torch

from resnetlab.errors import CheckpointError, UsageError, WriteError, first_line
from resnetlab.fileio import write_bytes, write_csv, write_json
from resnetlab.models import create_model
from resnetlab.train.engine import TrainState
from resnetlab.weights import load_weights, save_weights

CHECKPOINT_VERSION = 1
METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "examples_per_sec",
    "epoch_seconds",
]
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "checkpoint.pt")
LOCK_FILE = ".lock"  # held (fcntl.flock) by the process training in the folder; the kernel drops it when that process ends
_LOCK_SCOPES: list[list[RunDir]] = []  # see RunDir.locks_released_at_exit


def default_run_path(preset: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}"


class RunDir:
    """One training run's folder. `enabled=False` (non-zero ranks) makes every write a no-op."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._lock = None

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False, enabled: bool = True) -> RunDir:
        run = cls(path, enabled)
        if enabled:
            if run.path.exists() and not run.path.is_dir():
                raise UsageError(f"--out {run.path} is a file; give a folder")
            held = [f for f in RUN_FILES if (run.path / f).exists()]
            if held and not overwrite:
                run.lock()  # a live run is named as such, not as a finished one
                run.release()
                raise UsageError(
                    f"--out {run.path} already holds a run ({', '.join(held)}); "
                    f"continue it with --resume {run.path}, or pass --overwrite to replace it"
                )
            try:
                run.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError.of(e, run.path) from None
            run.lock()
        return run

    @classmethod
    def open(cls, path: str | Path, *, enabled: bool = True) -> RunDir:
        """The folder of a run to continue (--resume), locked for this process."""
        run = cls(path, enabled)
        if enabled:
            run.lock()
        return run

    # --- one process at a time ---------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder for this process, or refuse with one line if a live process has it.
        An flock, not a pid file: a killed process's lock goes with it, nothing is left stuck."""
        import fcntl  # POSIX only: deferred so that the rest of the package imports elsewhere

        if self._lock is not None or not self.path.is_dir():
            return
        try:
            f = open(self.path / LOCK_FILE, "a+")
        except OSError as e:
            raise WriteError.of(e, self.path / LOCK_FILE) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WriteError.of(e, self.path / LOCK_FILE) from None
            raise UsageError(
                f"{self.path} is in use by another training process{f' (pid {holder})' if holder else ''}; "
                "wait for it to end (or stop it), or give another --out"
            ) from None
        with contextlib.suppress(OSError):
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            for stale in self.path.glob(
                ".*.tmp"
            ):  # half-written by a process that was killed: ours now
                stale.unlink()
        self._lock = f
        if _LOCK_SCOPES:
            _LOCK_SCOPES[-1].append(self)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    @staticmethod
    @contextlib.contextmanager
    def locks_released_at_exit():
        """Run folders locked inside this block are released when it ends (the trainer wraps a
        run in it, so a Python caller may resume the same folder afterwards in the same process)."""
        _LOCK_SCOPES.append([])
        try:
            yield
        finally:
            for run in _LOCK_SCOPES.pop():
                run.release()

    def file(self, name: str) -> Path:
        if self.enabled and self._lock is not None and not self.path.is_dir():
            # atomic writes would quietly make a new, empty folder: stop instead
            raise WriteError(
                f"run folder {self.path} was removed during the run; nothing more can be saved there"
            )
        return self.path / name

    # --- plain files ---------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        if self.enabled:
            write_json(self.file("config.json"), config)

    def write_summary(self, summary: dict) -> None:
        if self.enabled:
            write_json(self.file("summary.json"), summary)

    def write_metrics(self, rows: list[dict]) -> None:
        if self.enabled:
            write_csv(self.file("metrics.csv"), rows, METRIC_COLUMNS)

    # --- checkpoint ----------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict) -> None:
        if self.enabled:
            buf = io.BytesIO()
            torch.save(dict(checkpoint, version=CHECKPOINT_VERSION), buf)
            write_bytes(self.file("checkpoint.pt"), buf.getvalue())

    # --- weights -------------------------------------------------------------------------
    def save_weights(self, name: str, state_dict: dict, metadata: dict) -> None:
        if self.enabled:
            save_weights(self.file(name), state_dict, metadata)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
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
    if not ckpt["model"] or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        return "its model holds no tensors, or other things"
    average = ckpt.get("average")
    if average is not None and not (
        isinstance(average, dict)
        and average
        and all(isinstance(v, torch.Tensor) for v in average.values())
    ):
        return "its weight average holds no tensors, or other things"
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
        ("best_val_acc", (int, float)),
        ("history", list),
        ("partial", list),
    ):
        value = state.get(name, 0 if kind is int else [] if kind is list else 0.0)
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"its state's {name} is {value!r}"
    if min(state.get("epoch", 0), state.get("step_in_epoch", 0), state.get("global_step", 0)) < 0:
        return "its state counts negative steps"
    epochs = ckpt["config"].get("epochs")
    if isinstance(epochs, int) and state.get("epoch", 0) > epochs:
        return f"its state is past the run's end (epoch {state.get('epoch')} of {epochs})"
    if not all(isinstance(row, dict) for row in state.get("history", [])):
        return "its metrics history is not a list of rows"
    if len(state.get("history", [])) != state.get("epoch", 0):
        return f"its metrics history has {len(state.get('history', []))} rows for {state.get('epoch', 0)} epochs"
    return None


def restore_checkpoint(checkpoint: dict, model, optimizer, where, *, average=None) -> TrainState:
    """Load a checkpoint (from load_checkpoint) into the model and optimizer the trainer built from
    its configuration, and into `average` (the --ema copy) when given; the TrainState to continue
    from. The torch RNG continues where it was."""
    if average is not None and "average" not in checkpoint:
        raise CheckpointError(
            f"{where}: the checkpoint holds no moving average of the weights, but its configuration "
            "asks for one (--ema); it is damaged or was edited"
        )
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if average is not None:
            average.load_state_dict(checkpoint["average"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{where}: the checkpoint's weights do not fit the model its configuration builds ({first})"
        ) from None
    state = TrainState(**checkpoint["state"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    return state


def resolve_weights(source: str | Path) -> Path:
    """A run folder (its best.safetensors if any, else model.safetensors) or a .safetensors path."""
    source = Path(source)
    if source.is_dir():
        for name in ("best.safetensors", "model.safetensors"):
            if (source / name).exists():
                return source / name
        raise CheckpointError(
            f"{source} holds no model.safetensors; train it to the end or pass a weights file"
        )
    if not source.exists():
        raise CheckpointError(f"{source} does not exist; pass a run folder or a .safetensors file")
    return source


def load_model(source: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a trained model from a run folder or weights file: (model in eval mode, metadata)."""
    path = resolve_weights(source)
    state_dict, meta = load_weights(path)
    if "model" not in meta:
        raise CheckpointError(
            f"{path} has no resnetlab metadata (model name, classes); it was not saved by resnetlab"
        )
    model = create_model(
        meta["model"],
        num_classes=meta["num_classes"],
        in_chans=meta["in_chans"],
        **meta.get("model_kwargs", {}),
    )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not fit model {meta['model']}: {str(e).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta
