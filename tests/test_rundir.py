"""The run folder's one module (resnetlab/rundir.py): what it writes reads back the same, a damaged
file reads as empty, and no other module spells the run files' names or the metric columns."""

import ast
import json
from pathlib import Path

import pytest

from resnetlab import rundir
from resnetlab.train.run import RunDir

SRC = Path(__file__).resolve().parents[1] / "src" / "resnetlab"


def test_metrics_read_back_as_written_with_empty_cells_left_out(tmp_path):
    rows = [
        {"epoch": 1, "train_loss": 2.3025851, "train_acc": 0.1, "lr": 0.1, "examples": 512},
        {"epoch": 2, "train_loss": 1.5, "train_acc": 0.45, "val_acc": 0.4, "lr": 0.05},
    ]
    rundir.write_metrics(tmp_path, rows)
    lines = (tmp_path / rundir.METRICS_FILE).read_text().splitlines()
    assert lines[0].split(",") == list(rundir.METRIC_COLUMNS)  # no "skipped", no "examples"
    back = rundir.read_metrics(tmp_path)
    assert back == [
        {"epoch": 1, "train_loss": float(f"{2.3025851:.6g}"), "train_acc": 0.1, "lr": 0.1},
        {"epoch": 2, "train_loss": 1.5, "train_acc": 0.45, "val_acc": 0.4, "lr": 0.05},
    ]
    assert type(back[0]["epoch"]) is int
    assert rundir.count_epochs(tmp_path) == 2


def test_skipped_images_get_their_column_only_when_an_epoch_counts_them(tmp_path):
    rundir.write_metrics(tmp_path, [{"epoch": 1, "train_acc": 0.5, "skipped": 3}])
    header = (tmp_path / rundir.METRICS_FILE).read_text().splitlines()[0].split(",")
    assert header == [*rundir.METRIC_COLUMNS, "skipped"]
    assert rundir.read_metrics(tmp_path)[0]["skipped"] == 3.0


def test_the_trainers_run_folder_writes_through_the_module(tmp_path):
    """RunDir (train/run.py) writes the same bytes as the module's writers: one format."""
    rows = [{"epoch": 1, "train_loss": 0.5, "train_acc": 0.75, "lr": 0.1}]
    config, summary = {"config": {"model": "resnet20"}, "amp": False}, {"epochs": 1}
    run = RunDir(tmp_path / "run")
    run.write_metrics(rows)
    run.write_config(config)
    run.write_summary(summary)
    rundir.write_metrics(tmp_path / "ref", rows)
    rundir.write_config(tmp_path / "ref", config)
    rundir.write_summary(tmp_path / "ref", summary)
    for name in (rundir.METRICS_FILE, rundir.CONFIG_FILE, rundir.SUMMARY_FILE):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert rundir.read_config(tmp_path / "run") == config
    assert rundir.read_summary(tmp_path / "run") == summary
    assert rundir.is_run(tmp_path / "run") and not rundir.is_run(tmp_path)


@pytest.mark.parametrize("text", [None, "", "{not json", "[1, 2]", '"a string"'])
def test_a_missing_or_damaged_json_file_reads_as_empty(tmp_path, text):
    if text is not None:
        (tmp_path / rundir.SUMMARY_FILE).write_text(text)
    assert rundir.read_summary(tmp_path) == {}
    assert rundir.read_json(tmp_path / rundir.SUMMARY_FILE) == {}


def test_a_missing_metrics_file_reads_as_no_epochs(tmp_path):
    assert rundir.read_metrics(tmp_path) == [] and rundir.count_epochs(tmp_path) == 0


def test_events_append_and_a_torn_line_is_skipped(tmp_path):
    rundir.record_event(tmp_path, "start", epoch=0)
    with open(tmp_path / rundir.EVENTS_FILE, "a") as f:
        f.write('{"event": "interr')  # a line cut short (written by something else)
    rundir.record_event(tmp_path, "interrupt", epoch=1)
    assert [(e["event"], e["epoch"]) for e in rundir.read_events(tmp_path)] == [
        ("start", 0),
        ("interrupt", 1),
    ]
    assert json.loads((tmp_path / rundir.EVENTS_FILE).read_text().splitlines()[0])["time"]
    with pytest.raises(ValueError, match="unknown event"):
        rundir.record_event(tmp_path, "paused")


def test_kept_weights_default_to_the_last_epochs_for_older_runs():
    assert rundir.kept_weights({}) == rundir.MODEL_WEIGHTS
    assert rundir.kept_weights({"kept_weights": rundir.BEST_WEIGHTS}) == rundir.BEST_WEIGHTS


def _constants(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def test_no_other_module_spells_the_run_files_or_the_metric_columns():
    """One home: a reader that names config.json, metrics.csv, events.jsonl or summary.json itself,
    or lists the metric columns again, would drift from the writer unseen."""
    names = {rundir.CONFIG_FILE, rundir.METRICS_FILE, rundir.EVENTS_FILE, rundir.SUMMARY_FILE}
    columns = set(rundir.EPOCH_METRICS)
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "rundir.py":
            continue
        tree = ast.parse(path.read_text())
        found += [f"{path.name}:{c.lineno} {c.value}" for c in _constants(tree) if c.value in names]
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                listed = {e.value for e in node.elts if isinstance(e, ast.Constant)} & columns
                if len(listed) > len(columns) // 2:
                    found.append(f"{path.name}:{node.lineno} the metric columns")
    assert found == []
