"""The run folder: config.json, metrics.csv, summary.json, checkpoint.pt, weights, plots, and the
lock that keeps one training process in it (what a checkpoint holds: train/checkpoint.py).

Every file is written through resnetlab.fileio (temporary name, then rename), so a crash at any
moment leaves the previous complete file. Checkpoints hold tensors and plain Python types only:
`torch.load(path, weights_only=True)` reads them.
"""

from __future__ import annotations

import contextlib
import errno
import os
from datetime import datetime
from pathlib import Path

from resnetlab.errors import UsageError, WriteError
from resnetlab.fileio import write_csv, write_json
from resnetlab.train.checkpoint import write_checkpoint
from resnetlab.weights import save_weights

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
# Everything resnetlab writes into a run folder (training, `eval`, `export`, `report`,
# --tensorboard): what --overwrite removes before the new run starts. Nothing else is touched.
OWN_FILES = (
    *RUN_FILES,
    "events.jsonl",
    "model.safetensors",
    "best.safetensors",
    "model.onnx",
    "best.onnx",
    "curves.png",
    "confusion.png",
    "confusion.csv",
    "mistakes.png",
    "mistakes.csv",
    "report.html",
    "mlflow.json",  # --mlflow: the MLflow run a resume continues
)
OWN_PATTERNS = ("events.out.tfevents.*",)  # --tensorboard's event files
EVAL_DIR, EVAL_FILES = "eval", ("mistakes.png", "mistakes.csv", "confusion.csv")  # `resnetlab eval`
LOCK_FILE = ".lock"  # held (fcntl.flock) by the process training in the folder; the kernel drops it when that process ends
_LOCK_SCOPES: list[list[RunDir]] = []  # see RunDir.locks_released_at_exit


def default_run_path(preset: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}"


def _occupied(path: Path, held: list[str]) -> str:
    """Why --out is refused, and what to do: --resume only for a run that can continue."""
    if (path / "summary.json").exists():
        return (
            f"--out {path} already holds a finished run ({', '.join(held)}); "
            "pass --overwrite to replace it, or give another --out"
        )
    return (
        f"--out {path} already holds an unfinished run ({', '.join(held)}); "
        f"continue it with --resume {path}, or pass --overwrite to replace it"
    )


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
                raise UsageError(_occupied(run.path, held))
            try:
                run.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError.of(e, run.path) from None
            run.lock()
            if overwrite:  # the replaced run's history and files go; a user's own files stay
                run.remove_own_files()
        return run

    def remove_own_files(self) -> None:
        """Remove what resnetlab wrote here (OWN_FILES, OWN_PATTERNS, eval/'s files and eval/ when
        that leaves it empty), so that nothing of a replaced run is mistaken for the new one's."""
        own = [self.path / name for name in OWN_FILES]
        own += [f for pattern in OWN_PATTERNS for f in self.path.glob(pattern)]
        own += [self.path / EVAL_DIR / name for name in EVAL_FILES]
        try:
            for f in own:
                if f.is_file() or f.is_symlink():
                    f.unlink()
            evals = self.path / EVAL_DIR
            if evals.is_dir() and not any(evals.iterdir()):
                evals.rmdir()
        except OSError as e:
            where = e.filename or self.path
            raise WriteError(
                f"--overwrite cannot remove {where}: {e.strerror or e}", e.errno, str(where)
            ) from None

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
            # the pid goes first (while the lock is still ours): a finished run's .lock is empty.
            # The file itself stays: removing it could let a second process lock a new file while
            # a third still holds the old one (README: The run folder)
            with contextlib.suppress(OSError):
                self._lock.truncate(0)
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
            # streamed data adds the images that did not decode, per epoch
            skipped = ["skipped"] if any("skipped" in r for r in rows) else []
            write_csv(self.file("metrics.csv"), rows, METRIC_COLUMNS + skipped)

    # --- checkpoint ----------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict) -> None:
        if self.enabled:
            write_checkpoint(self.file("checkpoint.pt"), checkpoint)

    # --- weights -------------------------------------------------------------------------
    def save_weights(self, name: str, state_dict: dict, metadata: dict) -> None:
        if self.enabled:
            save_weights(self.file(name), state_dict, metadata)
