"""`resnetlab train --init-from`: start from weights trained elsewhere, adapted to the data."""

from __future__ import annotations

import json

import pytest
import torch

from resnetlab import cli
from resnetlab.errors import Interrupted
from resnetlab.models import create_model
from resnetlab.train import make_config, train
from resnetlab.train.setup import build_model


def rgb_checkpoint(path, width=8):
    """A resnet20 trained elsewhere on 3-channel images with 100 classes (CIFAR-100's shape)."""
    torch.manual_seed(7)
    torch.save(
        create_model("resnet20", num_classes=100, in_chans=3, width=width).state_dict(), path
    )
    return torch.load(path, weights_only=True)


def test_build_model_starts_from_the_checkpoint(tmp_path):
    saved = rgb_checkpoint(tmp_path / "c100.pth")
    cfg = make_config(
        "quick", model="resnet20", model_kwargs={"width": 8}, init_from=str(tmp_path / "c100.pth")
    )
    notes = []
    model = build_model(cfg, in_chans=1, num_classes=10, say=notes.append)
    assert torch.equal(model.conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer3[2].bn2.running_var, saved["layer3.2.bn2.running_var"])
    assert model.fc.weight.shape == (10, 32)
    assert [n.split(" ")[0] for n in notes] == ["first", "classifier"]


@pytest.mark.needs_fashion_mnist
def test_cli_train_init_from_says_what_it_adapted(tmp_path, capsys):
    rgb_checkpoint(tmp_path / "c100.pth", width=16)  # the quick preset's resnet20 on a CPU
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--model",
            "resnet20",
            "--subset",
            "128",
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "--val-split",
            "0",
            "--init-from",
            str(tmp_path / "c100.pth"),
            "--out",
            str(out),
        ]
    )
    printed, err = capsys.readouterr()  # once: a second read would find nothing left
    assert code == 0, err
    assert (
        "--init-from: classifier fc re-initialised for 10 classes (the checkpoint has 100)"
        in printed
    )
    assert "--init-from: first convolution conv1 adapted from 3 to 1 input channel(s)" in printed
    assert json.loads((out / "config.json").read_text())["config"]["init_from"] == str(
        tmp_path / "c100.pth"
    )


@pytest.mark.needs_fashion_mnist
def test_cli_train_init_from_a_wrong_file_is_one_line(tmp_path, capsys):
    torch.save(create_model("resnet32").state_dict(), tmp_path / "r32.pth")
    code = cli.main(
        [
            "train",
            "--model",
            "resnet20",
            "--subset",
            "64",
            "--epochs",
            "1",
            "--val-split",
            "0",
            "--init-from",
            str(tmp_path / "r32.pth"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("resnetlab: error: ") and "unexpected key(s): layer1.3" in err


@pytest.mark.needs_fashion_mnist
def test_resume_does_not_need_the_init_file(tmp_path, monkeypatch, ctrl_c_at):
    rgb_checkpoint(tmp_path / "c100.pth")
    cfg = make_config(
        "quick",
        model="resnet20",
        model_kwargs={"width": 8},
        subset=256,
        batch_size=64,
        epochs=1,
        val_split=0,
        init_from=str(tmp_path / "c100.pth"),
    )

    ctrl_c_at(2)  # Ctrl-C during the second step

    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "run", verbose=False)
    monkeypatch.undo()
    (
        tmp_path / "c100.pth"
    ).unlink()  # the weights it started from are gone: the checkpoint has them
    summary = train(resume=tmp_path / "run", verbose=False)
    assert summary["epochs"] == 1
