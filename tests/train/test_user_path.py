"""What a new user meets (issue 31, items 1-5): a validation split that fits a subset, `eval`
reproducing the run's own figure, the run's whole wall time after a resume, `--overwrite`
replacing a run entirely, and `--resume` of a finished run refused."""

from __future__ import annotations

import csv
import json
import time

import pytest

from resnetlab import cli
from resnetlab.errors import Interrupted, UsageError
from resnetlab.train import make_config, train
from resnetlab.train.config import TrainConfig

pytestmark = pytest.mark.needs_fashion_mnist

# a narrow ResNet-20 on 300 training and 300 test images: a few seconds a run
TINY = dict(
    model="resnet20",
    model_kwargs={"width": 8},
    subset=300,
    batch_size=64,
    epochs=1,
    seed=3,
    val_split=0,
    tta="none",
)
TINY_FLAGS = [
    *("--model", "resnet20", "--model-kwargs", '{"width": 8}', "--subset", "300"),
    *("--batch-size", "64", "--epochs", "1", "--seed", "3", "--val-split", "0", "--tta", "none"),
]


# --- 1: a validation split shrinks to fit a subset ----------------------------------------------


def test_a_presets_val_split_shrinks_to_a_tenth_of_a_small_subset(tmp_path, capsys):
    # the quick preset holds out 5,000: a subset of 300 keeps 30 for validation, and says so
    summary = train(make_config("quick", **dict(TINY, val_split=5000)), out=tmp_path / "r")
    out = capsys.readouterr().out
    assert "--val-split 5000 is more than a subset of 300 leaves: 30 held out instead" in out
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["val_split"] == 30 and config["config"]["val_split"] == 5000
    assert summary["kept_weights"] == "best.safetensors"
    assert summary["examples_per_sec"] > 0 and len(summary) > 0
    rows = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))
    assert rows[0]["val_acc"] != ""


def test_val_split_rule_and_its_error_name_the_argument_and_the_flag():
    from resnetlab.train.setup import val_examples

    cfg = lambda **kw: make_config("quick", **kw)  # noqa: E731
    assert val_examples(cfg(subset=300, val_split=5000), 300) == 30
    assert val_examples(cfg(subset=300, val_split=150), 300) == 150  # fits (half): kept
    assert val_examples(cfg(subset=300, val_split=151), 300) == 30  # more than half: a tenth
    assert val_examples(cfg(subset=5, val_split=3), 5) == 1  # at least one
    assert val_examples(cfg(subset=300, val_split=0), 300) == 0
    with pytest.raises(UsageError, match=r"val_split \(--val-split\) 60000 leaves no training"):
        val_examples(cfg(val_split=60000), 60000)  # no subset: the split is the user's, refused
    with pytest.raises(UsageError, match=r"val_split \(--val-split\) must be zero or positive"):
        TrainConfig(val_split=-1)


# --- 2: eval reproduces the run's own test figure ----------------------------------------------


@pytest.fixture(scope="module")
def amp_tta_run(tmp_path_factory):
    """bf16 autocast (--amp runs on any CPU), channels_last, flip TTA, a validation split, a subset."""
    out = tmp_path_factory.mktemp("amp") / "run"
    flags = [*TINY_FLAGS, "--amp", "--channels-last", "--tta", "flip", "--val-split", "60"]
    assert cli.main(["train", *flags, "--out", str(out)]) == 0
    return out


def test_eval_reproduces_the_runs_test_figures_exactly(amp_tta_run, capsys):
    summary = json.loads((amp_tta_run / "summary.json").read_text())
    assert cli.main(["eval", str(amp_tta_run), "--json", "--mistakes", "0"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["count"] == summary["test_count"] == 300  # the run's subset, not all 10,000
    assert plain["precision"] == "bf16" and "300" in plain["test_examples"]
    assert plain["acc"] == summary["kept_test_acc_no_tta"]
    assert plain["loss"] == summary["kept_test_loss_no_tta"]

    assert cli.main(["eval", str(amp_tta_run), "--tta", "flip"]) == 0
    text = capsys.readouterr().out
    assert "precision: bf16 (as the run)" in text and "the run's --subset 300" in text
    assert f"acc {summary['kept_test_acc']:.4f}" in text
    # the mistakes index the run's own test set: the same file as the run's (made with its TTA)
    eval_csv = (amp_tta_run / "eval" / "mistakes.csv").read_text()
    assert eval_csv == (amp_tta_run / "mistakes.csv").read_text()

    assert cli.main(["eval", str(amp_tta_run), "--tta", "flip", "--json", "--mistakes", "0"]) == 0
    flipped = json.loads(capsys.readouterr().out)
    assert (flipped["acc"], flipped["loss"]) == (
        summary["kept_test_acc"],
        summary["kept_test_loss"],
    )


def test_eval_flags_change_the_precision_and_the_test_examples(amp_tta_run, capsys):
    args = ["eval", str(amp_tta_run), "--json", "--mistakes", "0"]
    assert cli.main([*args, "--precision", "fp32", "--full-test"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["count"] == 10000 and r["test_examples"] == "all"
    assert r["precision"] == "fp32" and r["precision_source"] == "--precision fp32"


# --- 3: total_seconds counts every process of the run ------------------------------------------


def test_total_seconds_counts_the_process_before_a_resume(tmp_path, monkeypatch, ctrl_c_at):
    cfg = make_config("quick", **dict(TINY, epochs=2))
    ctrl_c_at(7)  # inside epoch 2 (5 steps an epoch)
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "r", verbose=False)
    monkeypatch.undo()
    time.sleep(0.5)  # not part of the run: between its processes
    summary = train(resume=tmp_path / "r", verbose=False)
    assert summary["total_seconds"] >= summary["train_seconds"] > 0


# --- 4: --overwrite replaces the run entirely --------------------------------------------------


def test_overwrite_starts_a_fresh_history_and_removes_the_old_runs_files(tmp_path, capsys):
    from resnetlab.report.events import read_events
    from resnetlab.report.runs import list_runs

    run = tmp_path / "runs" / "r"
    assert cli.main(["train", *TINY_FLAGS, "--out", str(run)]) == 0
    assert cli.main(["eval", str(run)]) == 0  # eval/ made from the old weights
    (run / "events.out.tfevents.1.host").write_text("old")  # as --tensorboard leaves
    (run / "notes.txt").write_text("mine")  # a user's own file
    (run / "eval" / "mine.txt").write_text("mine")
    assert cli.main(["train", *TINY_FLAGS, "--seed", "4", "--out", str(run), "--overwrite"]) == 0
    capsys.readouterr()
    events = [e["event"] for e in read_events(run)]
    assert events == ["start", "finish"]
    assert (
        not (run / "eval" / "mistakes.csv").exists()
        and not (run / "eval" / "mistakes.png").exists()
    )
    assert not (run / "events.out.tfevents.1.host").exists()
    assert (run / "notes.txt").read_text() == "mine" and (run / "eval" / "mine.txt").exists()
    assert [r["state"] for r in list_runs(tmp_path / "runs")] == ["finished"]
    assert "<p>2 events: 0 stop(s), 0 resume(s).</p>" in (run / "report.html").read_text()


def test_overwrite_removes_an_eval_folder_it_empties(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli.main(["train", *TINY_FLAGS, "--out", str(run)]) == 0
    assert cli.main(["eval", str(run)]) == 0
    assert (run / "eval").is_dir()
    assert cli.main(["train", *TINY_FLAGS, "--out", str(run), "--overwrite"]) == 0
    assert not (run / "eval").exists()


# --- 5: --resume of a finished run is refused ---------------------------------------------------


def test_resume_of_a_finished_run_is_refused_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli.main(["train", *TINY_FLAGS, "--out", str(run)]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert cli.main(["train", "--resume", str(run)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"resnetlab: error: {run} finished at epoch 1; train more with ")
    assert "--out" in err and len(err.strip().splitlines()) == 1 and out == ""
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before

    # the occupied --out of a finished run suggests --overwrite or another --out, not --resume
    assert cli.main(["train", *TINY_FLAGS, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--overwrite" in err
    assert "--resume" not in err


def test_occupied_out_of_an_interrupted_run_suggests_resume(tmp_path, capsys, ctrl_c_at):
    run = tmp_path / "r"
    ctrl_c_at(3)
    assert cli.main(["train", *TINY_FLAGS, "--out", str(run)]) == 130
    capsys.readouterr()
    assert cli.main(["train", *TINY_FLAGS, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds an unfinished run" in err and f"--resume {run}" in err


@pytest.mark.needs_fashion_mnist
def test_an_eval_with_other_settings_writes_its_own_folder(amp_tta_run, capsys):
    """Issue 31, item 16: an eval unlike the run's own figure (other views, all test examples, a
    forced precision) writes into eval/<what differs>/ and says so in its figure's title, so it
    never replaces another eval's files; the run's own settings keep eval/."""
    from resnetlab.inference.eval_run import eval_setting

    assert eval_setting(None, None, False, "run") == ""
    assert eval_setting("mnist", "flip", True, "fp32") == "mnist-tta-flip-full-test-fp32"
    assert cli.main(["eval", str(amp_tta_run), "--tta", "flip-shift", "--json"]) == 0
    shifted = json.loads(capsys.readouterr().out)
    assert shifted["mistakes_dir"] == str(amp_tta_run / "eval" / "tta-flip-shift")
    # the run's own figure was through flip TTA: a plain eval differs in its views too
    assert cli.main(["eval", str(amp_tta_run), "--precision", "fp32", "--json"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert fp32["mistakes_dir"] == str(amp_tta_run / "eval" / "no-tta-fp32")
    for folder in ("tta-flip-shift", "no-tta-fp32"):
        assert (amp_tta_run / "eval" / folder / "mistakes.csv").exists()
