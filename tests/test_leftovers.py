"""Issue 31, item 16: leftovers and nits (lock file, compare's default folder, precision of the
closing lines, Dataset's repr, the lazy-layer message)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from resnetlab.errors import UsageError


def test_a_released_lock_holds_no_pid(tmp_path):
    from resnetlab.train.run import LOCK_FILE, RunDir

    run = RunDir.create(tmp_path / "run")
    assert (tmp_path / "run" / LOCK_FILE).read_text().strip().isdigit()  # held: the pid
    run.release()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""


def test_compare_says_it_wrote_into_its_default_folder(tmp_path, monkeypatch, capsys):
    from resnetlab import cli

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"config": {"epochs": 1}}))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", "a", "b"]) == 0
    out = capsys.readouterr().out
    (made,) = list((tmp_path / "runs").iterdir())
    assert f"written into runs/{made.name} (the default folder; --out DIR for another)" in out


def test_the_closing_lines_give_accuracies_to_4_decimals():
    from resnetlab.report.console import Console

    stream = io.StringIO()
    summary = dict(
        train_loss=1.0, train_acc=0.51234, test_acc=0.33951, examples_per_sec=10.0, device="cpu",
        kept_weights="model.safetensors", tta="flip", kept_test_acc=0.34012,
        kept_test_acc_no_tta=0.33951,
    )  # fmt: skip
    Console(stream, True, epochs=1, batch_size=64).on_finish(summary, {}, None)
    text = stream.getvalue()
    assert (
        "train acc 0.5123, test acc 0.3395" in text
        and "test acc 0.3401 with flip TTA (0.3395 without)" in text
    )


def test_a_dataset_repr_is_one_short_line():
    from resnetlab.data import Dataset

    ds = Dataset(
        "fashion-mnist",
        torch.zeros(600, 1, 28, 28, dtype=torch.uint8),
        torch.zeros(600, dtype=torch.int64),
        ["a"] * 10,
    )
    assert repr(ds) == "Dataset('fashion-mnist', 600 images of 1x28x28, 10 classes)"


def test_lazy_layers_get_a_message_that_says_what_to_do():
    from resnetlab.models.fuse import fuse_bn

    net = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(
        UsageError,
        match=r"run one forward pass first, e\.g\. `model\(torch\.zeros\(1, C, H, W\)\)`",
    ):
        fuse_bn(net)
