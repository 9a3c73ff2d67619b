"""`--mlflow URI` against a real MLflow tracking server (PyPI's mlflow, a SQLite backend, served
artifacts; .ci/mlflow starts it on 127.0.0.1: RESNETLAB_TEST_MLFLOW_URI), read back with MLflow's
own client: what a run logs, Ctrl-C and --resume on one MLflow run, only rank 0 writing, a server
that cannot be reached (one line, before anything is made) or that fails mid-run (a warning)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from resnetlab import cli

MLFLOW_ENV = "RESNETLAB_TEST_MLFLOW_URI"
TINY = [
    "--model",
    "resnet20",
    "--model-kwargs",
    '{"width": 8}',
    "--subset",
    "512",
    "--batch-size",
    "64",
    "--epochs",
    "2",
    "--val-split",
    "0",
    "--seed",
    "3",
]  # fmt: skip  (8 steps an epoch)


@pytest.fixture
def server(monkeypatch) -> str:
    """The tracking server's URI; each test logs to an experiment of its own."""
    pytest.importorskip("mlflow", reason="needs the mlflow package: pip install -e '.[test]'")
    uri = os.environ.get(MLFLOW_ENV)
    if not uri:
        pytest.skip(
            f'{MLFLOW_ENV} is not set: start a throw-away MLflow server with `eval "$(.ci/mlflow)"` '
            "(CI does)"
        )
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{uuid.uuid4().hex}")
    return uri


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str) -> list:
    """The runs of this test's experiment."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _run_id(folder: Path) -> str:
    return json.loads((folder / "mlflow.json").read_text())["run_id"]


@pytest.mark.needs_fashion_mnist
def test_a_run_logs_its_configuration_epochs_summary_report_and_kept_weights(
    server, tmp_path, train_tiny
):
    out = tmp_path / "logged"
    summary = train_tiny(out, epochs=2, val_split=128, mlflow=server)
    client = _client(server)
    (run,) = _runs(server)
    assert run.info.run_id == _run_id(out) and run.info.run_name == out.name
    assert run.info.status == "FINISHED"
    config = json.loads((out / "config.json").read_text())["config"]
    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    del expected["mlflow"]  # where it was logged, not what was trained
    assert run.data.params == expected
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows], rel=1e-5)
    assert run.data.metrics["summary/kept_test_acc"] == pytest.approx(summary["kept_test_acc"])
    assert run.data.metrics["summary/best_epoch"] == summary["best_epoch"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"report.html", "summary.json", "best.safetensors"}
    copy = client.download_artifacts(run.info.run_id, "best.safetensors", str(tmp_path))
    assert Path(copy).read_bytes() == (out / "best.safetensors").read_bytes()


@pytest.mark.needs_fashion_mnist
def test_ctrl_c_and_resume_continue_one_mlflow_run(server, tmp_path, monkeypatch, ctrl_c_at):
    run = tmp_path / "run"
    experiment = os.environ["MLFLOW_EXPERIMENT_NAME"]
    ctrl_c_at(9)  # read 8 times in epoch 1's steps, then at its end: stopped after epoch 1
    assert cli.main(["train", *TINY, "--mlflow", server, "--out", str(run)]) == 130
    client = _client(server)
    run_id = _run_id(run)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1]
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert _run_id(run) == run_id and [r.info.run_id for r in _runs(server)] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [m.value for m in client.get_metric_history(run_id, "train_loss")] == pytest.approx(
        [float(r["train_loss"]) for r in rows], rel=1e-5
    )


@pytest.mark.needs_fashion_mnist
def test_two_processes_log_one_mlflow_run(server, tmp_path):
    """`--nproc 2`: rank 1 trains beside rank 0 but logs nothing (else a second MLflow run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")  # loopback only
    out = tmp_path / "run"
    flags = [*TINY, "--subset", "256", "--epochs", "1", "--mlflow", server, "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--nproc", "2", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = _runs(server)
    assert run.info.run_id == _run_id(out) and run.info.status == "FINISHED"
    assert [m.step for m in _client(server).get_metric_history(run.info.run_id, "lr")] == [1]


def test_a_resume_whose_mlflow_run_was_deleted_starts_one_with_the_epochs_so_far(server, tmp_path):
    from resnetlab.report.mlflow_sink import MLflow
    from resnetlab.train.engine import TrainState
    from resnetlab.train.run import RunDir

    run = RunDir(tmp_path)
    MLflow(server, run, TrainState(), {"lr": 0.1})
    first = _run_id(tmp_path)
    _client(server).delete_run(first)
    row = {"epoch": 1, "train_loss": 2.5}
    MLflow(server, run, TrainState(epoch=1, history=[row]), {"lr": 0.1})  # the resumed process
    second = _run_id(tmp_path)
    assert second != first and [r.info.run_id for r in _runs(server)] == [second]
    history = _client(server).get_metric_history(second, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.needs_fashion_mnist
def test_an_unreachable_server_is_one_line_before_anything_is_made(tmp_path, capsys):
    pytest.importorskip("mlflow", reason="needs the mlflow package: pip install -e '.[test]'")
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    out = tmp_path / "r"
    assert cli.main(["train", *TINY, "--mlflow", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot be reached" in err and uri in err
    assert not out.exists()  # refused before data, a run folder or training


def test_without_the_package_mlflow_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    out = tmp_path / "r"
    assert cli.main(["train", *TINY, "--mlflow", "http://127.0.0.1:1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'resnetlab[mlflow]'" in err
    assert not out.exists()


def test_only_rank_0_writes(server, tmp_path):
    """Another rank's sink (its run folder disabled) creates no MLflow run and logs nothing."""
    from resnetlab.report.mlflow_sink import MLflow
    from resnetlab.train.engine import TrainState
    from resnetlab.train.run import RunDir

    row = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}
    for rank, folder in ((1, tmp_path / "rank1"), (0, tmp_path / "rank0")):
        folder.mkdir()
        sink = MLflow(server, RunDir(folder, enabled=rank == 0), TrainState(), {"lr": 0.1})
        sink.on_epoch_end(TrainState(epoch=1), row, False)
        sink.on_finish({"epochs": 1}, {}, None)
        if rank == 1:
            assert _runs(server) == [] and not (folder / "mlflow.json").exists()
    (run,) = _runs(server)  # rank 0's, the control: the same calls do log there
    assert run.info.run_id == _run_id(tmp_path / "rank0") and run.data.metrics["train_loss"] == 1.0


@pytest.mark.needs_fashion_mnist
def test_a_server_failing_mid_run_costs_a_warning_not_the_run(server, tmp_path, capsys):
    """The MLflow run deleted on the server after epoch 1 (a real failure of the next calls): the
    training finishes, its folder complete, with one warning."""
    from resnetlab.report.observer import Observer
    from resnetlab.train import make_config, train

    out = tmp_path / "run"

    class DeleteTheMlflowRun(Observer):  # a caller's observer hears each epoch before MLflow
        def on_epoch_end(self, state, row, is_best):
            if row["epoch"] == 1:
                _client(server).delete_run(_run_id(out))

    cfg = make_config(
        "quick", model="resnet20", model_kwargs={"width": 8}, subset=256, batch_size=64,
        epochs=2, val_split=0, seed=3, mlflow=server,
    )  # fmt: skip
    summary = train(cfg, out=out, verbose=False, observers=[DeleteTheMlflowRun()])
    assert summary["epochs"] == 2 and (out / "report.html").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "resnetlab: warning: MLflow logging stopped"
    )
