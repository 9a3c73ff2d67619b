"""`resnetlab compare` (png, html, json; the degradation experiment's run folders) and `resnetlab runs`."""

from __future__ import annotations

import json
import os
import re

import pytest

from resnetlab import cli
from resnetlab.errors import UsageError
from resnetlab.report.compare import compare_runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny runs that differ in two settings: the learning rate and the number of epochs."""
    from resnetlab.train import make_config, train

    root = tmp_path_factory.mktemp("runs")
    tiny = dict(
        model="resnet20",
        model_kwargs={"width": 8},
        subset=512,
        batch_size=64,
        seed=3,
        val_split=0,
        epoch_test=True,
    )
    train(make_config("quick", **tiny, epochs=1, lr=0.4), out=root / "slow", verbose=False)
    train(make_config("quick", **tiny, epochs=2, lr=0.2), out=root / "fast", verbose=False)
    return root


@pytest.mark.needs_fashion_mnist
def test_compare_writes_figure_table_and_differing_settings(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        cli.main(["compare", str(two_runs / "slow"), str(two_runs / "fast"), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "slow: resnet20 on fashion-mnist, 1 epoch, finished" in printed
        and "written into" in printed
    )
    data = json.loads((out / "compare.json").read_text())
    assert data["differing_settings"] == {"epochs": [1, 2], "lr": [0.4, 0.2]}
    for run in data["runs"]:
        summary = json.loads((two_runs / run["label"] / "summary.json").read_text())
        assert (
            run["kept_test_acc"] == summary["kept_test_acc"] and run["epochs"] == summary["epochs"]
        )
        assert len(run["metrics"]) == summary["epochs"]
    page = (out / "compare.html").read_text()
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"]
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for sid in ("curves", "figures", "settings"):
        assert f'<section id="{sid}">' in page
    assert (
        "<code>lr</code>" in page and "<code>seed</code>" not in page
    )  # only the settings that differ
    from PIL import Image

    with Image.open(out / "compare.png") as img:
        assert img.width > 1000


@pytest.mark.needs_fashion_mnist
def test_compare_draws_one_colour_per_run_train_dashed(two_runs, tmp_path, monkeypatch):
    import resnetlab.report.compare as compare
    from resnetlab.report.compare import compare_data, plot_comparison

    figures = []
    monkeypatch.setattr(compare, "save_png", lambda fig, path: figures.append(fig))
    plot_comparison(compare_data([two_runs / "slow", two_runs / "fast"]), tmp_path / "x.png")
    ax_loss, ax_acc = figures[0].axes
    for ax in (ax_loss, ax_acc):
        styles = {(ln.get_label(), ln.get_color(), ln.get_linestyle()) for ln in ax.get_lines()}
        assert styles == {
            ("slow train", "C0", "--"),
            ("slow test", "C0", "-"),
            ("fast train", "C1", "--"),
            ("fast test", "C1", "-"),
        }
    fast_test = next(ln for ln in ax_acc.get_lines() if ln.get_label() == "fast test")
    fast_rows = json.loads((two_runs / "fast" / "summary.json").read_text())
    assert list(fast_test.get_xdata()) == [1, 2] and fast_test.get_ydata()[-1] == pytest.approx(
        fast_rows["test_acc"], abs=1e-5
    )


@pytest.mark.needs_fashion_mnist
def test_compare_refuses_bad_input(two_runs, tmp_path, capsys):
    assert cli.main(["compare", str(two_runs / "slow")]) == 2
    assert "two or more run folders" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(two_runs / "slow"), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.needs_fashion_mnist
def test_compare_works_on_the_degradation_experiments_run_folders(tmp_path):
    from resnetlab.experiments.degradation import run_degradation

    exp = tmp_path / "exp"
    run_degradation(exp, depths=(20, 32), width=4, subset=128, epochs=1, seed=0, verbose=False)
    nets = ["plain20", "resnet20", "plain32", "resnet32"]
    result = compare_runs([exp / n for n in nets], tmp_path / "cmp")
    assert [r["label"] for r in result["runs"]] == nets
    assert result["differing_settings"] == {"model": nets}  # one recipe: only the net differs
    assert (tmp_path / "cmp" / "compare.png").exists()
    from resnetlab.report.runs import list_runs

    rows = list_runs(exp)  # an experiment's folder lists its nets
    assert sorted(r["name"] for r in rows) == sorted(nets) and {r["state"] for r in rows} == {
        "finished"
    }
    # run folders made before the `tensorboard` setting existed are still reused, not "other settings"
    for net in nets:
        config = json.loads((exp / net / "config.json").read_text())
        del config["config"]["tensorboard"]
        (exp / net / "config.json").write_text(json.dumps(config))
    again = run_degradation(
        exp, depths=(20, 32), width=4, subset=128, epochs=1, seed=0, verbose=False
    )
    assert [n["action"] for n in again["nets"]] == ["reused"] * 4


@pytest.mark.needs_fashion_mnist
def test_runs_lists_newest_first_with_state(two_runs, tmp_path, capsys, train_tiny):
    import shutil

    from resnetlab.errors import TrainingError

    root = tmp_path / "runs"
    shutil.copytree(two_runs, root)
    with pytest.raises(TrainingError):
        train_tiny(root / "broken", epochs=2, lr=1e30)
    (root / "notes").mkdir()  # not a run: skipped
    assert cli.main(["runs", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["broken", "fast", "slow"]  # newest first
    assert [r["state"] for r in rows] == ["failed", "finished", "finished"]
    fast = rows[1]
    summary = json.loads((root / "fast" / "summary.json").read_text())
    assert (fast["model"], fast["data"], fast["preset"], fast["epochs"]) == (
        "resnet20",
        "fashion-mnist",
        "quick",
        2,
    )
    assert (
        fast["kept_test_acc"] == summary["kept_test_acc"]
        and fast["seconds"] == summary["total_seconds"]
    )
    # an interrupted run: a checkpoint, no summary, the last event an interrupt
    from resnetlab.report.events import record_event

    record_event(root / "fast", "interrupt", epoch=1)
    os.remove(root / "fast" / "summary.json")
    assert cli.main(["runs", str(root)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "run",
        "model",
        "data",
        "preset",
        "epochs",
        "test",
        "acc",
        "seconds",
        "state",
        "started",
    ]
    assert table[2].split()[0] == "fast" and "interrupted" in table[2] and "2/2" in table[2]
    assert cli.main(["runs", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(UsageError):
        compare_runs([root / "slow"], tmp_path / "c")


def test_a_packed_sets_run_compares_as_streamed():
    from resnetlab.report.compare import differing_settings

    packed = {"data": "shards:shards/photos", "stream": False}  # streamed without the flag
    folder = {"data": "imagefolder:photos", "stream": True}
    held = {"data": "imagefolder:photos", "stream": False}
    assert differing_settings([packed, folder]) == {
        "data": ["shards:shards/photos", "imagefolder:photos"]
    }
    assert differing_settings([packed, held])["stream"] == [True, False]
