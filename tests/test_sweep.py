"""`resnetlab sweep` (resnetlab.sweep): the space's parser, one-line errors, a real sweep on
Fashion-MNIST (pruning, trials.csv, best.json, report.html, continuing it), and --jobs on SQLite.
The shared-storage tests (PostgreSQL, SIGKILL) are in tests/test_sweep_postgres.py."""

from __future__ import annotations

import csv
import json
import socket
import warnings
from pathlib import Path

import pytest
from sweep_tools import TINY, tiny_flags, trial_numbers

from resnetlab.cli import main
from resnetlab.errors import UsageError
from resnetlab.sweep.space import parse_space
from resnetlab.sweep.storage import parse_storage

needs_fashion_mnist = pytest.mark.needs_fashion_mnist

pytest.importorskip("optuna", reason="needs the sweep extra: pip install 'resnetlab[sweep]'")


def test_space_forms():
    space = parse_space(
        [
            "lr=log:0.02:1",
            "weight-decay=float:0:1e-3",
            "epochs=int:2:8:2",
            "model=choice:resnet20,resnet32",
            "subset=choice:none,1000",
            "flip=choice:true,false",
        ]
    )
    assert list(space) == ["lr", "weight_decay", "epochs", "model", "subset", "flip"]
    assert (space["lr"].kind, space["lr"].low, space["lr"].high) == ("log", 0.02, 1.0)
    assert space["epochs"].grid() == [2, 4, 6, 8]
    assert space["subset"].choices == (None, 1000)
    assert space["flip"].choices == (True, False)
    assert parse_space({"lr": "log:0.02:1"})["lr"].spec() == "lr=log:0.02:1.0"


@pytest.mark.parametrize(
    "spec, says",
    [
        ("foo=log:1:2", "foo is not a train setting"),
        ("lr=log:0:1", "log: needs LOW > 0"),
        ("lr=log:1", "is malformed"),
        ("lr=float:2:1", "LOW < HIGH"),
        ("lr=log:a:b", "takes numbers"),
        ("lr=int:1:3", "lr takes float values"),
        ("epochs=float:1:3", "epochs takes int values"),
        ("lr", "is not name=kind:args"),
        ("lr=uniform:0:1", "is not name=kind:args"),
        ("model=choice:resnet20", "two or more values"),
        ("optimizer=choice:sgd,adam", "optimizer 'adam' is unknown"),
        ("epochs=choice:2,x", "--epochs takes int, not 'x'"),
        ("val_split=int:1:3", "not searched"),
        ("model_kwargs=choice:a,b", "cannot be searched"),
        ("final_test=choice:true,false", "never look at the test set"),
    ],
)
def test_bad_space_is_one_line(spec, says, tmp_path, capsys):
    assert main(["sweep", "--space", spec, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnetlab: error: --space") and says in err
    assert not (tmp_path / "s").exists()


def test_storage_password_is_hidden():
    s = parse_storage("postgresql://bob:s3cr%40t@db.example:5433/optuna?sslmode=require")
    assert s.shown == "postgresql://bob:***@db.example:5433/optuna?sslmode=require"
    assert "s3cr" not in s.scrub("failed for s3cr@t and s3cr%40t") and "psycopg" in s.url
    with pytest.raises(UsageError, match="not a database URL") as e:
        parse_storage("postgresql://bob:hunter2@db:notaport/x")
    assert "hunter2" not in str(e.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_database_is_one_line_without_password(tmp_path, capsys):
    port = _closed_port()
    url = f"postgresql://bob:pw-s3cret@127.0.0.1:{port}/sweeps"
    code = main(["sweep", "--space", "lr=log:0.1:1", "--storage", url, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"'sweeps' on 127.0.0.1:{port} as user 'bob'" in err and "check that" in err
    assert "pw-s3cret" not in err
    assert not (tmp_path / "sweep.json").exists()  # the folder is not claimed for that study


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--val-split", "0"], "holds out none; give --val-split N"),
        (["--epoch-test"], "never looks at the test set"),
        (["--final-test"], "drop --final-test"),
        (["--lr", "0.1"], "lr is both searched (--space) and fixed"),
        (["--sampler", "grid"], "the grid sampler needs every value listed"),
        (["--trials", "0"], "--trials must be positive"),
    ],
)
def test_bad_options_are_one_line(flags, says, tmp_path, capsys):
    code = main(["sweep", "--space", "lr=log:0.1:1", "--out", str(tmp_path / "s"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err


@needs_fashion_mnist
def test_sweep_prunes_writes_its_files_and_continues(tmp_path, capsys, monkeypatch):
    """Four trials from a grid of learning rates (three useful, four far too small), four epochs
    each: the median pruner stops a poor one before its last epoch (the grid's order is seeded;
    at 2 epochs the poor one was pruned only after its last, which issue 40 made complete); then the folder's
    files; then the same call with one trial more continues the study. No trial measures a test
    figure; the best one's kept weights are tested once, after the search."""
    import resnetlab
    from resnetlab.inference import eval_run

    tested = []
    evaluate_run = eval_run.evaluate_run

    def counted(source, **kwargs):
        tested.append(int(Path(source).parent.name.split("-")[1]))
        return evaluate_run(source, **kwargs)

    monkeypatch.setattr(eval_run, "evaluate_run", counted)
    out = tmp_path / "sw"
    rates = "0.3,0.2,0.15,1e-06,2e-06,3e-06,4e-06"
    kwargs = dict(TINY, epochs=4, out=out, sampler="grid", verbose=False)
    study = resnetlab.sweep({"lr": f"choice:{rates}"}, trials=4, **kwargs)
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and "PRUNED" in states and "COMPLETE" in states, states
    for t in study.trials:
        folder = out / f"trial-{t.number:04d}"
        assert (folder / "pruned.json").is_file() == (t.state.name == "PRUNED")
        assert (folder / "summary.json").is_file() == (t.state.name == "COMPLETE")
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == [s.lower() for s in states]
    assert {"lr", "epochs", "val_acc", "seconds"} <= set(rows[0])
    for r in rows:
        if r["state"] == "pruned":
            record = json.loads((out / r["run"] / "pruned.json").read_text())
            assert record["pruned_after_epoch"] == int(r["epochs"]) < 4
        else:
            assert r["epochs"] == "4"
    best = json.loads((out / "best.json").read_text())
    assert (
        best["sweep"]["value"] == study.best_value
        and best["config"]["lr"] == study.best_params["lr"]
    )
    assert "test" not in json.dumps(rows)  # trials.csv holds no test figure
    # no trial's run folder holds a test figure; the best one's kept weights, tested once
    for folder in out.glob("trial-*"):
        for name in ("summary.json", "events.jsonl", "pruned.json"):
            path = folder / name
            assert not path.exists() or "test_acc" not in path.read_text(), path
        assert not (folder / "confusion.csv").exists() and not (folder / "mistakes.csv").exists()
    assert tested == [study.best_trial.number]
    assert best["test"]["trial"] == study.best_trial.number
    assert 0 <= best["test"]["kept_test_acc"] <= 1 and best["test"]["test_count"] == 400
    assert best["config"]["final_test"] is True and best["config"]["epoch_test"] is False
    from resnetlab.train import make_config
    from resnetlab.train.config import read_config_file

    assert make_config(base=read_config_file(out / "best.json")).to_dict() == best["config"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "Content-Security-Policy" in page
    assert "<h1>sweep of lr</h1>" in page and "sweep sweep" not in page  # issue 40: the title
    assert f'href="trial-{study.best_trial.number:04d}/report.html"' in page
    assert "test accuracy of the best trial's kept weights, evaluated once" in page
    # `resnetlab runs` lists the trials (pruned ones as such); `compare` takes any of them
    assert main(["runs", str(tmp_path), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    listed = {Path(r["run"]).name: r["state"] for r in runs}
    assert sorted(listed.values()) == sorted(
        s.lower().replace("complete", "finished") for s in states
    )
    assert all(r["sweep"] == str(out) and r["kept_test_acc"] is None for r in runs)
    assert {r["test_evaluated"] for r in runs if r["state"] == "finished"} == {False}
    assert main(["runs", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "not tested" in text and f"sweep {out} (study 'sweep'): " in text
    acc = best["test"]["kept_test_acc"]
    assert f"best trial {study.best_trial.number}, val_acc " in text and f"{acc:.4f}" in text
    pair = [str(out / "trial-0000"), str(out / "trial-0003"), "--out", str(tmp_path / "cmp")]
    assert main(["compare", *pair, "--json"]) == 0
    capsys.readouterr()
    # the same sweep again, with one trial more: the study goes on from where it was
    first_best = study.best_trial.number
    study = resnetlab.sweep({"lr": f"choice:{rates}"}, trials=5, **kwargs)
    assert len(study.trials) == 5 and trial_numbers(out) == set(range(5))
    # the same best trial is not tested again; a new one is, once
    assert tested == [first_best] + ([] if study.best_trial.number == first_best else [4])


@needs_fashion_mnist
def test_jobs_split_the_trials_on_sqlite(tmp_path, capfd):
    """--jobs 2: two processes on the folder's SQLite file share the trials, none run twice."""
    out = tmp_path / "sw"
    args = [
        "sweep",
        "--space",
        "lr=log:0.05:0.5",
        "--trials",
        "4",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    assert main([*args, *tiny_flags(), "--pruner", "none"]) == 0
    text = capfd.readouterr().out
    ran = {}
    for line in text.splitlines():
        if line.startswith("[worker ") and " complete:" in line:
            worker, trial = line.split("]")[0][8:], int(line.split()[3])
            assert trial not in ran, f"trial {trial} ran twice"
            ran[trial] = worker
    assert sorted(ran) == [0, 1, 2, 3] and set(ran.values()) == {"1", "2"}, text
    assert trial_numbers(out) == {0, 1, 2, 3} and "4 complete trials" in text


def test_folder_of_another_study_is_refused(tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"study": "a", "storage": "sqlite:///x.db"}))
    code = main(["sweep", "--space", "lr=log:0.1:1", "--study", "b", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "belongs to the sweep of study 'a'" in err and "--study a" in err


def test_budget_spent_starts_no_trial(tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["sweep", "--space", "lr=log:0.1:1", "--budget", "1e-9", "--out", str(out), "--json"]
    assert main([*args, *tiny_flags()]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["trials"] == {} and outcome["best"] is None
    assert (out / "trials.csv").read_text().startswith("trial,state,lr,")
    assert (out / "report.html").is_file() and not (out / "best.json").exists()


def test_a_trial_that_ran_its_last_epoch_is_never_pruned(tmp_path):
    """Issue 40: a trial was reported pruned after its last epoch (the pruner asked at every
    epoch's end, the last one's too)."""
    import optuna

    from resnetlab.sweep.study import PRUNED_FILE, Objective, Plan

    class Trial:  # what the objective asks of an Optuna trial, with a pruner that always prunes
        number = 0

        def report(self, value, step):
            pass

        def set_user_attr(self, key, value):
            pass

        def should_prune(self):
            return True

    plan = Plan(out=str(tmp_path), specs=["lr=log:0.1:1"], base={}, trials=1, study="s",
                storage_url="sqlite://")  # fmt: skip
    objective, row = Objective(plan), {"epoch": 3, "val_acc": 0.5}
    objective._report(Trial(), tmp_path, row, [], 0.0, epochs=3)  # the last: not pruned
    assert not (tmp_path / PRUNED_FILE).exists()
    with pytest.raises(optuna.TrialPruned):
        objective._report(Trial(), tmp_path, dict(row, epoch=2), [], 0.0, epochs=3)
    assert (tmp_path / PRUNED_FILE).is_file()


@needs_fashion_mnist
def test_a_sweep_stopped_by_ctrl_c_in_trial_2_ends_with_its_trials_when_run_again(tmp_path):
    """Issue 40: SIGINT during trial 2 of 3 (the process's Ctrl-C): one line that says to run the
    same sweep command again (not `train --resume` of the trial's folder), exit 130; the same
    command then ends with 3 trials evaluated, trial 2 recorded `interrupted` with where it stopped
    and run again as a new trial, no trial `failed` without an error."""
    import signal
    import time

    from sweep_tools import load_study, start_worker

    from resnetlab.sweep.storage import default_storage_url

    out = tmp_path / "sw"
    args = ["--space", "lr=log:0.05:0.5", "--trials", "3", "--pruner", "none", "--out", str(out)]
    args += tiny_flags(epochs=3)
    worker = start_worker(args)
    deadline = time.monotonic() + 240
    # inside trial 2's training: its first epoch saved, its second under way
    while not (out / "trial-0002" / "checkpoint.pt").is_file() and worker.poll() is None:
        assert time.monotonic() < deadline, "trial 2 never started"
        time.sleep(0.05)
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err
    assert err.count("\n") == 1 and "run the same `resnetlab sweep` command again" in err, err
    assert "during trial 2" in err and "2 of 3 trials done" in err and "--resume" not in err, err
    again = start_worker(args)
    text, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    study = load_study(default_storage_url(out), "sweep")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows].count("complete") == 3
    stopped = [r for r in rows if r["state"] != "complete"]
    assert [(r["trial"], r["state"]) for r in stopped] == [("2", "interrupted")], rows
    assert not [r for r in rows if r["state"] == "failed" and not r["error"]]
    assert stopped[0]["error"].startswith("interrupted "), stopped
    retry = [r for r in rows if r["retry_of"] == "2"]
    assert len(retry) == 1 and retry[0]["lr"] == stopped[0]["lr"]


def test_parallel_coordinates_tick_labels_do_not_overlap():
    """Issue 40: Optuna's parallel-coordinates plot labels log axes' minor ticks (2x10^-4 ran into
    the next axis's name) and turns the names into the numbers; tidy_parallel fixes both. Every
    tick label's box, drawn, is checked against every other."""
    import random

    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    from resnetlab.sweep.outputs import tidy_parallel

    rng = random.Random(0)
    space = {
        "lr": FloatDistribution(0.01, 1, log=True),
        "weight_decay": FloatDistribution(1e-5, 1e-2, log=True),
        "label_smoothing": FloatDistribution(0, 0.2),
        "flip": CategoricalDistribution([True, False]),
    }
    study = optuna.create_study(direction="maximize")
    for _ in range(8):
        params = {
            "lr": 10 ** rng.uniform(-2, 0),
            "weight_decay": 10 ** rng.uniform(-5, -2),
            "label_smoothing": rng.uniform(0, 0.2),
            "flip": rng.random() < 0.5,
        }
        value = rng.uniform(0.06, 0.11)
        study.add_trial(optuna.create_trial(params=params, distributions=space, value=value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib views are 'experimental'
        fig = plot_parallel_coordinate(study).figure
    fig.set_size_inches(8, 4.5)  # as write_plots draws it
    tidy_parallel(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    names = fig.axes[0].get_xticklabels()  # the twin axes repeat them
    boxes = [
        (t.get_text(), t.get_window_extent(renderer))
        for t in [*names, *(t for a in fig.axes for t in a.get_yticklabels(which="both"))]
        if t.get_visible() and t.get_text()
    ]
    assert len(boxes) > 20
    overlaps = [
        (a, b)
        for i, (a, box) in enumerate(boxes)
        for b, other in boxes[i + 1 :]
        if box.overlaps(other)
    ]
    assert not overlaps, overlaps
    # every trial's line stands out from the white-to-grey page: the worst one is not white
    from matplotlib.collections import LineCollection

    (lines,) = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    palest = lines.to_rgba(lines.get_array())[:, :3].min(axis=1).max()  # its darkest channel
    assert palest < 0.8, palest
