"""Issue 31, item 14: Ctrl-C is said once, not as an error, in the numbering --resume uses."""

from __future__ import annotations

import re

import pytest

from resnetlab import cli

TINY = [
    "--model", "resnet20", "--model-kwargs", '{"width": 8}', "--subset", "512",
    "--batch-size", "64", "--epochs", "2", "--val-split", "0", "--seed", "3",
]  # fmt: skip


@pytest.mark.needs_fashion_mnist
def test_ctrl_c_is_said_once_without_error_and_resume_agrees(
    tmp_path, monkeypatch, ctrl_c_at, capsys
):
    run = tmp_path / "run"
    ctrl_c_at(11)  # 8 steps an epoch: Ctrl-C in epoch 2, after its third step
    assert cli.main(["train", *TINY, "--out", str(run)]) == 130
    out, err = capsys.readouterr()
    said = out + err
    found = re.search(
        r"^resnetlab: interrupted at epoch (\d+), step (\d+): checkpoint saved; resume with: "
        rf"resnetlab train --resume {re.escape(str(run))}\n",
        err,
        re.M,
    )
    assert found and said.count("checkpoint saved") == 1, said
    epoch, step = found.groups()
    assert epoch == "2"  # the epoch under way, counted from 1
    assert "error" not in said
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert f"resuming {run}, stopped at epoch {epoch}, step {step}\n" in capsys.readouterr().out


def test_one_line_errors_are_written_whole(monkeypatch):
    """Several processes share stderr under --nproc: each line is one write, newline included."""
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr("sys.stderr", Recorder())
    assert cli.main(["models", "no-such-model*"]) == 2
    assert (
        len(writes) == 1 and writes[0].startswith("resnetlab: error:") and writes[0].endswith("\n")
    )
