"""The run folder's files: their names, metrics.csv's columns, and config.json, metrics.csv,
events.jsonl and summary.json read and written here alone (every write atomic, through fileio).

Training writes a run folder (train/run.py's RunDir adds the lock, the checkpoint and the
weights); everything after it reads the folder through this module: report.html, `resnetlab runs`
and compare, eval, explain, the sweep and the degradation experiment. A missing file reads as
empty ({} or []), and so does a JSON file that is damaged, so a listing or a report of a
half-written run still works. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

from resnetlab.fileio import write_csv, write_json, write_text

CONFIG_FILE = "config.json"  # {"config": the TrainConfig's settings, then the environment}
METRICS_FILE = "metrics.csv"  # one row an epoch, METRIC_COLUMNS
EVENTS_FILE = "events.jsonl"  # what happened when: one JSON object a line, EVENT_KINDS
SUMMARY_FILE = "summary.json"  # written at the end: its presence means the run finished
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_WEIGHTS = "model.safetensors"  # the last epoch's weights
BEST_WEIGHTS = "best.safetensors"  # the best epoch's on validation (kept when there is a split)
CURVES_PNG = "curves.png"
CONFUSION_PNG, CONFUSION_CSV = "confusion.png", "confusion.csv"
MISTAKES_PNG, MISTAKES_CSV = "mistakes.png", "mistakes.csv"
MISTAKES_CAM = "mistakes_gradcam.png"  # the report's Grad-CAM row (inference/explain.py)
REPORT_FILE = "report.html"  # the last file a run writes
PRUNED_FILE = "pruned.json"  # a sweep stopped this trial early (sweep/study.py)
MLFLOW_RUN = "mlflow.json"  # --mlflow: the MLflow run a resume continues (report/mlflow_sink.py)
LOCK_FILE = ".lock"  # held (fcntl.flock) by the process training in the folder

RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE)  # a run is here
# Everything resnetlab writes into a run folder (training, `eval`, `export`, `report`,
# --tensorboard): what --overwrite removes before the new run starts. Nothing else is touched.
OWN_FILES = (
    *RUN_FILES,
    EVENTS_FILE,
    MODEL_WEIGHTS,
    BEST_WEIGHTS,
    "model.onnx",
    "best.onnx",
    CURVES_PNG,
    CONFUSION_PNG,
    CONFUSION_CSV,
    MISTAKES_PNG,
    MISTAKES_CSV,
    REPORT_FILE,
    MLFLOW_RUN,
)
OWN_PATTERNS = ("events.out.tfevents.*",)  # --tensorboard's event files
EVAL_DIR, EVAL_FILES = "eval", (MISTAKES_PNG, MISTAKES_CSV, CONFUSION_CSV)  # `resnetlab eval`

METRIC_COLUMNS = (
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
)
EPOCH_METRICS = METRIC_COLUMNS[1:]  # the figures of an epoch (its number aside)
SKIPPED_COLUMN = "skipped"  # streamed data: the images that did not decode, per epoch

EVENT_KINDS = (
    "start",
    "resume",
    "capture_fallback",
    "plan_shortened",
    "interrupt",
    "failed",
    "finish",
)


def is_run(folder: str | Path) -> bool:
    """A run folder is a folder holding config.json."""
    return Path(folder, CONFIG_FILE).is_file()


def kept_weights(summary: dict) -> str:
    """The name of the weights a finished run kept (its summary says; runs before it said: the last)."""
    return summary.get("kept_weights", MODEL_WEIGHTS)


# --- config.json and summary.json --------------------------------------------------------------


def read_json(path: str | Path) -> dict:
    """The JSON object in `path`; {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_config(folder: str | Path) -> dict:
    """config.json: {"config": the settings, "device", "amp", "versions", ...}; {} if none."""
    return read_json(Path(folder, CONFIG_FILE))


def read_summary(folder: str | Path) -> dict:
    """summary.json ({} while the run has not finished)."""
    return read_json(Path(folder, SUMMARY_FILE))


def write_config(folder: str | Path, config: dict) -> None:
    write_json(Path(folder, CONFIG_FILE), config)


def write_summary(folder: str | Path, summary: dict) -> None:
    write_json(Path(folder, SUMMARY_FILE), summary)


# --- metrics.csv -------------------------------------------------------------------------------


def write_metrics(folder: str | Path, rows: list[dict]) -> None:
    """metrics.csv, one row an epoch (rewritten whole each epoch: a few rows)."""
    skipped = [SKIPPED_COLUMN] if any(SKIPPED_COLUMN in r for r in rows) else []
    write_csv(Path(folder, METRICS_FILE), rows, [*METRIC_COLUMNS, *skipped])


def read_metrics(folder: str | Path) -> list[dict]:
    """metrics.csv's rows, epoch an int and the rest floats, empty cells left out; [] if none."""
    path = Path(folder, METRICS_FILE)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in r.items() if v not in ("", None)}
            for r in csv.DictReader(f)
        ]


def count_epochs(folder: str | Path) -> int:
    """How many epochs metrics.csv records (0 without one); its values are not parsed, so a
    listing of runs survives a damaged row."""
    try:
        with open(Path(folder, METRICS_FILE), newline="", encoding="utf-8") as f:
            return sum(1 for _ in csv.DictReader(f))
    except OSError:
        return 0


# --- events.jsonl ------------------------------------------------------------------------------
# Rewritten whole through fileio on each event (a few lines; a handful of events a run), so a
# crash leaves the previous complete file, never half a line.


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_event(folder: str | Path, event: str, **fields) -> dict:
    """Append {"event", "time", **fields} to folder/events.jsonl; returns the record."""
    if event not in EVENT_KINDS:
        raise ValueError(f"unknown event {event!r}; one of {EVENT_KINDS}")
    path = Path(folder) / EVENTS_FILE
    record = {"event": event, "time": now_iso(), **fields}
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(path, old + json.dumps(record, default=str) + "\n")
    return record


def read_events(folder: str | Path) -> list[dict]:
    """The events of a run, oldest first ([] when it has none); unreadable lines are skipped."""
    path = Path(folder) / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events
