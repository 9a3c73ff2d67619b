"""find_mistakes on a model whose answers are known, the CSV/PNG writers, and `resnetlab eval`'s mistakes."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from resnetlab import cli
from resnetlab.data import Loader
from resnetlab.data.datasets import Dataset
from resnetlab.inference.eval_run import find_mistakes
from resnetlab.report.mistakes import (
    plot_mistakes,
    read_confusion_csv,
    read_mistakes_csv,
    write_analysis,
)

CLASSES = ["a", "b", "c"]


class Lookup(torch.nn.Module):
    """Image i (its first pixel holds i) gets the logits of row i of a fixed table."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[(x[:, 0, 0, 0] * 255).round().long()]


@pytest.fixture
def known():
    """10 images; the table makes 4 of them wrong, with known confidences."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    probs = torch.full((10, 3), 0.05)
    for i, y in enumerate(labels.tolist()):
        probs[i, y] = 0.9  # right, confidently
    wrong = {
        3: (2, 0.6),
        5: (0, 0.95),
        7: (2, 0.7),
        8: (1, 0.5),
    }  # index: (predicted class, its probability)
    for i, (pred, p) in wrong.items():
        probs[i] = (1 - p) / 2
        probs[i, pred] = p
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(10, dtype=torch.uint8)
    ds = Dataset("known", images, labels, CLASSES)
    return ds, Lookup(probs.log()), wrong


def test_find_mistakes_ranks_the_wrong_answers_by_confidence(known):
    ds, model, wrong = known
    loader = Loader(ds, 3, shuffle=False)  # four batches, the last one short
    m = find_mistakes(model, loader, "cpu", classes=CLASSES, k=3)
    assert [r["index"] for r in m.items] == [5, 7, 3]  # 0.95, 0.7, 0.6; index 8 (0.5) is fourth
    assert [r["predicted"] for r in m.items] == ["a", "c", "c"]
    assert [r["true"] for r in m.items] == ["c", "b", "a"]
    assert [r["probability"] for r in m.items] == pytest.approx([0.95, 0.7, 0.6])
    assert (m.count, m.wrong, m.acc) == (10, 4, 0.6)
    from resnetlab.inference.evaluation import evaluate

    assert m.loss == pytest.approx(evaluate(model, loader, torch.device("cpu"))["loss"], rel=1e-12)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for i, y in enumerate(ds.labels.tolist()):
        expected[y, wrong[i][0] if i in wrong else y] += 1
    assert torch.equal(m.confusion, expected)
    # more asked than there are: every mistake, still most confident first; none asked: none
    assert [
        r["index"] for r in find_mistakes(model, loader, "cpu", classes=CLASSES, k=50).items
    ] == [5, 7, 3, 8]
    assert find_mistakes(model, loader, "cpu", classes=CLASSES, k=0).items == []


def test_writers_round_trip_and_the_grid_is_readable(known, tmp_path):
    ds, model, _ = known
    m = find_mistakes(model, Loader(ds, 4, shuffle=False), "cpu", classes=CLASSES, k=32)
    written = write_analysis(tmp_path, m, ds.images, title="known")
    assert {p.name for p in written} == {"mistakes.csv", "confusion.csv", "mistakes.png"}
    rows = list(csv.DictReader((tmp_path / "mistakes.csv").open()))
    assert list(rows[0]) == ["index", "true", "predicted", "probability"]
    assert [
        (r["index"], r["true"], r["predicted"])
        for r in read_mistakes_csv(tmp_path / "mistakes.csv")
    ] == [(r["index"], r["true"], r["predicted"]) for r in m.items]
    assert read_confusion_csv(tmp_path / "confusion.csv") == (CLASSES, m.confusion.tolist())

    from PIL import Image

    with Image.open(
        tmp_path / "mistakes.png"
    ) as img:  # four cells in one row, each over 150 px wide
        assert img.width >= 4 * 150 and img.height >= 150
    plot_mistakes(m.items * 8, ds.images, tmp_path / "grid.png")  # 32 cells: 8 columns, 4 rows
    with Image.open(tmp_path / "grid.png") as img:
        assert img.width >= 8 * 150 and img.height >= 4 * 180


@pytest.mark.needs_fashion_mnist
def test_finished_run_writes_its_mistakes_from_the_kept_weights(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    items = read_mistakes_csv(finished_run / "mistakes.csv")
    classes, confusion = read_confusion_csv(finished_run / "confusion.csv")
    correct = sum(confusion[i][i] for i in range(len(classes)))
    total = sum(map(sum, confusion))
    assert total == summary["test_count"] == 512
    assert (
        abs(correct / total - summary["kept_test_acc"]) <= 2 / 512
    )  # the same weights as the final evaluation
    assert len(items) == min(32, total - correct)
    assert all(r["true"] != r["predicted"] and 0 < r["probability"] <= 1 for r in items)
    probs = [r["probability"] for r in items]
    assert probs == sorted(probs, reverse=True)
    assert (finished_run / "mistakes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.needs_fashion_mnist
def test_eval_writes_mistakes_beside_the_weights_or_into_out(
    finished_run, run_copy, tmp_path, capsys
):
    assert cli.main(["eval", str(run_copy), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # a plain eval of a run whose own figure had views goes to eval/no-tta/ (issue 31, item 16)
    run_tta = json.loads((run_copy / "config.json").read_text())["config"]["tta"]
    eval_dir = run_copy / "eval" / ("no-tta" if run_tta != "none" else "")
    assert r["mistakes_dir"] == str(eval_dir).rstrip("/") and r["mistakes_shown"] == 32
    classes, confusion = read_confusion_csv(eval_dir / "confusion.csv")
    # the run's own test set (its --subset of 512): the indices mean what the run's do
    assert confusion == r["confusion"] and sum(map(sum, confusion)) == 512
    assert r["wrong"] == 512 - sum(confusion[i][i] for i in range(10))
    assert (
        len(read_mistakes_csv(eval_dir / "mistakes.csv")) == 32
        and (eval_dir / "mistakes.png").exists()
    )
    # the training run's own files (its 512-image test subset) are left alone
    assert (run_copy / "mistakes.csv").read_bytes() == (finished_run / "mistakes.csv").read_bytes()
    # one pass gives the mistakes and the figures: the same as evaluation without mistakes
    from resnetlab.inference.eval_run import evaluate_run

    plain = evaluate_run(run_copy, mistakes=0)
    assert "mistakes_dir" not in plain
    assert (plain["acc"], plain["confusion"]) == (r["acc"], r["confusion"])
    assert plain["loss"] == pytest.approx(r["loss"], rel=1e-9)

    out = tmp_path / "elsewhere"
    assert (
        cli.main(
            ["eval", str(run_copy / "model.safetensors"), "--out", str(out), "--mistakes", "5"]
        )
        == 0
    )
    assert "5 most confident in" in capsys.readouterr().out
    assert len(read_mistakes_csv(out / "mistakes.csv")) == 5
    assert cli.main(["eval", str(run_copy), "--mistakes", "-1"]) == 2
    assert "--mistakes must be zero or positive" in capsys.readouterr().err


def test_mistakes_skip_the_unreadable_images_and_keep_their_test_indices():
    """Streamed evaluation leaves out images that do not decode: the per-example results hold
    the others, in order; each mistake keeps its index in the whole test set."""
    from resnetlab.report.mistakes import mistakes_from_evaluation

    labels = torch.tensor([0, 1, 2, 0, 1])
    result = {  # image 1 unreadable: results for images 0, 2, 3, 4
        "top_prob": torch.tensor([0.9, 0.8, 0.7, 0.6]),
        "pred": torch.tensor([0, 0, 0, 0]),  # images 2 and 4 wrong
        "loss": 1.0,
        "confusion": torch.zeros(3, 3, dtype=torch.int64),
        "unreadable": [1],
    }
    m = mistakes_from_evaluation(result, labels, CLASSES, describe=lambda i: f"img{i}.jpg")
    assert [(r["index"], r["true"]) for r in m.items] == [(2, "c"), (4, "b")]
    assert (m.count, m.wrong) == (4, 2)
    assert m.unreadable == [{"index": 1, "true": "b", "file": "img1.jpg"}]
