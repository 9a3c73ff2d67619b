"""The run folder: config.json, metrics.csv, summary.json, checkpoint.pt, weights, plots.

Every file is written through resnetlab.fileio (temporary name, then rename), so a crash at any
moment leaves the previous complete file. Checkpoints hold tensors and plain Python types only:
`torch.load(path, weights_only=True)` reads them.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import torch

from resnetlab.errors import CheckpointError, UsageError, first_line
from resnetlab.fileio import write_bytes, write_csv, write_json
from resnetlab.models import create_model
from resnetlab.weights import load_weights, save_weights

CHECKPOINT_VERSION = 1
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                  "lr", "examples_per_sec", "epoch_seconds"]
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "checkpoint.pt")


def default_run_path(preset: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}"


class RunDir:
    """One training run's folder. `enabled=False` (non-zero ranks) makes every write a no-op."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    @classmethod
    def open(cls, path: str | Path, *, enabled: bool = True) -> "RunDir":
        """The folder of a run being resumed (load_checkpoint has found its checkpoint)."""
        return cls(path, enabled)

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False, enabled: bool = True) -> "RunDir":
        run = cls(path, enabled)
        if enabled:
            if run.path.exists() and not run.path.is_dir():
                raise UsageError(f"--out {run.path} is a file; give a folder")
            held = [f for f in RUN_FILES if (run.path / f).exists()]
            if held and not overwrite:
                raise UsageError(
                    f"--out {run.path} already holds a run ({', '.join(held)}); "
                    f"continue it with --resume {run.path}, or pass --overwrite to replace it"
                )
            run.path.mkdir(parents=True, exist_ok=True)
        return run

    def file(self, name: str) -> Path:
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
        raise CheckpointError(f"no checkpoint at {path}; --resume takes the folder of a run that saved at least one epoch")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle: torch raises many types
        raise CheckpointError(f"{path} is not a readable resnetlab checkpoint ({first_line(e)}); it may be truncated or foreign") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a resnetlab checkpoint (version {CHECKPOINT_VERSION}); it was written by another program")
    return ckpt


def resolve_weights(source: str | Path) -> Path:
    """A run folder (its best.safetensors if any, else model.safetensors) or a .safetensors path."""
    source = Path(source)
    if source.is_dir():
        for name in ("best.safetensors", "model.safetensors"):
            if (source / name).exists():
                return source / name
        raise CheckpointError(f"{source} holds no model.safetensors; train it to the end or pass a weights file")
    if not source.exists():
        raise CheckpointError(f"{source} does not exist; pass a run folder or a .safetensors file")
    return source


def load_model(source: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a trained model from a run folder or weights file: (model in eval mode, metadata)."""
    path = resolve_weights(source)
    state_dict, meta = load_weights(path)
    if "model" not in meta:
        raise CheckpointError(f"{path} has no resnetlab metadata (model name, classes); it was not saved by resnetlab")
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"], **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit model {meta['model']}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), meta
