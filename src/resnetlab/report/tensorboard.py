"""`--tensorboard`: TensorBoard event files in the run folder, so `tensorboard --logdir runs`
shows every run. An optional extra: `pip install 'resnetlab[tensorboard]'`.

What is logged (rank 0 only, never inside a step: at the trainer's sync points and epoch ends):
    train/running_loss, train/running_acc, train/lr   at each sync point (every SYNC_EVERY steps),
                                                      against the global step
    epoch/<metric>                                    metrics.csv's columns, against the epoch
    kept/test_acc, kept/test_loss                     the kept weights' test figures, at the end
    images/confusion, images/mistakes                 confusion.png and mistakes.png, at the end
    hparams                                           the configuration (HParams tab), at the start
"""

from __future__ import annotations

import json
from pathlib import Path

from resnetlab.errors import UsageError
from resnetlab.report.observer import Observer
from resnetlab.rundir import CONFUSION_PNG, EPOCH_METRICS, MISTAKES_PNG


def require_tensorboard() -> None:
    """A one-line UsageError when the `tensorboard` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError(
            "--tensorboard needs the tensorboard package: pip install 'resnetlab[tensorboard]'"
        ) from None


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)  # None, lists and dicts: as their JSON text


class TensorBoard(Observer):
    """--tensorboard: one SummaryWriter on the run folder, on rank 0 (`enabled`); the package is
    required on every rank, so all processes fail alike before any training. A resumed run appends
    a new event file; TensorBoard merges a folder's files, and steps continue where the checkpoint
    left off."""

    def __init__(self, folder: str | Path, config: dict, *, resumed: bool, enabled: bool) -> None:
        require_tensorboard()
        self.writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        self.folder = Path(folder)
        if not resumed:  # the HParams tab: the configuration, and the scalars it shows beside it
            from torch.utils.tensorboard.summary import hparams

            metrics = {"epoch/test_acc": 0.0, "epoch/val_acc": 0.0, "kept/test_acc": 0.0}
            for summary in hparams({k: _hparam_value(v) for k, v in config.items()}, metrics):
                self.writer.file_writer.add_summary(summary)

    def on_progress(self, state, step: int, total: int, stats: dict) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/running_loss", stats["loss"], state.global_step)
            self.writer.add_scalar("train/running_acc", stats["acc"], state.global_step)
            self.writer.add_scalar("train/lr", stats["lr"], state.global_step)

    def on_epoch_end(self, state, row: dict, is_best: bool) -> None:
        if self.writer is not None:
            for key in EPOCH_METRICS:
                if key in row:
                    self.writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
            self.writer.flush()

    def on_interrupt(self, state) -> None:
        self.close()

    def on_failure(self, error: BaseException) -> None:
        self.close()

    def on_finish(self, summary: dict, final: dict, test_set) -> None:
        """The kept weights' figures and the run's PNGs (written before: missing ones are skipped)."""
        if self.writer is None:
            return
        step = summary.get("epochs", 0)
        for key in ("test_acc", "test_loss"):
            if f"kept_{key}" in summary:
                self.writer.add_scalar(f"kept/{key}", summary[f"kept_{key}"], step)
        for name, png in (("confusion", CONFUSION_PNG), ("mistakes", MISTAKES_PNG)):
            path = self.folder / png
            if path.exists():
                self.writer.add_image(f"images/{name}", _read_png(path), step, dataformats="HWC")
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _read_png(path: str | Path):
    """A PNG as a uint8 [H, W, 3] array (matplotlib reads PNGs without pyplot)."""
    import numpy as np
    from matplotlib.image import imread

    img = imread(str(path))  # float [H, W, 3 or 4] in [0, 1]
    return (np.clip(img[..., :3], 0, 1) * 255).round().astype(np.uint8)
