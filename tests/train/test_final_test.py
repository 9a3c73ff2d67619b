"""`--no-final-test` (issue 28): a run that measures no test figure at all (a sweep's trials run
so). Its summary says the test set was not evaluated, and its report, `runs`, `compare` and
`report` cope without the figures, the confusion matrix and the mistakes."""

from __future__ import annotations

import csv
import json

import pytest

from resnetlab import cli
from resnetlab.report.html import esc
from resnetlab.report.runs import NO_TEST

# 300 training images (100 of them held out for validation), a width-4 ResNet-8: about a second
FLAGS = [
    "--model", "resnet8", "--model-kwargs", '{"width": 4}', "--subset", "400",
    "--val-split", "100", "--batch-size", "100", "--epochs", "1", "--tta", "flip",
    "--device", "cpu", "--no-epoch-test", "--no-final-test",
]  # fmt: skip


def test_no_final_test_needs_no_epoch_test(tmp_path, capsys):
    flags = [f for f in FLAGS if f != "--no-epoch-test"]
    code = cli.main(["train", *flags, "--epoch-test", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "add --no-epoch-test" in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.needs_fashion_mnist
def test_run_without_final_test_holds_no_test_figure(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli.main(["train", *FLAGS, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test not evaluated" in out and NO_TEST in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_evaluated"] is False and summary["kept_weights"] == "best.safetensors"
    # no test figure anywhere in the folder: summary and events; metrics.csv's columns empty
    for name in ("summary.json", "events.jsonl"):
        assert "test_acc" not in (run / name).read_text(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert rows and all(r["test_acc"] == r["test_loss"] == "" for r in rows)
    assert not {"confusion.png", "confusion.csv", "mistakes.csv"} & {p.name for p in run.iterdir()}
    assert (run / "curves.png").is_file()
    page = (run / "report.html").read_text()
    # the summary, the confusion matrix, per-class accuracy and the mistakes say why they are empty
    assert page.count(esc(NO_TEST)) == 4 and "after epoch 1, test not evaluated" in page
    # `report` draws the page again without testing; `runs` and `compare` list it
    assert cli.main(["report", str(run)]) == 0
    assert not (run / "mistakes.csv").exists()
    capsys.readouterr()
    assert cli.main(["runs", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["state"] == "finished" and row["kept_test_acc"] is None
    assert cli.main(["compare", str(run), str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert "test not evaluated, best val acc" in capsys.readouterr().out
