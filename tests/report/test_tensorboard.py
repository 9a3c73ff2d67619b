"""`--tensorboard`: the event files a run writes, read back with TensorBoard's own reader, and the
one-line error when the extra is missing."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from resnetlab import cli


@pytest.mark.needs_fashion_mnist
def test_tensorboard_event_files_hold_metrics_progress_images_and_config(tmp_path, train_tiny):
    pytest.importorskip(
        "tensorboard",
        reason="the tensorboard extra is not installed (pip install 'resnetlab[tensorboard]')",
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train_tiny(out, epochs=2, tensorboard=True)
    acc = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    metrics = list(csv.DictReader((out / "metrics.csv").open()))
    test_acc = acc.Scalars("epoch/test_acc")
    assert [e.step for e in test_acc] == [1, 2]
    assert [e.value for e in test_acc] == pytest.approx(
        [float(r["test_acc"]) for r in metrics], abs=1e-5
    )
    assert [e.value for e in acc.Scalars("epoch/lr")] == pytest.approx(
        [float(r["lr"]) for r in metrics], rel=1e-5
    )
    # 8 steps an epoch: the running loss and lr at each epoch's last step (a sync point), by global step
    assert [e.step for e in acc.Scalars("train/running_loss")] == [8, 16]
    assert [e.step for e in acc.Scalars("train/lr")] == [8, 16]
    assert set(tags["images"]) == {"images/confusion", "images/mistakes"}
    from PIL import Image

    with Image.open(out / "mistakes.png") as png:
        shot = acc.Images("images/mistakes")[0]
        assert (shot.width, shot.height) == png.size
    summary = json.loads((out / "summary.json").read_text())
    assert acc.Scalars("kept/test_acc")[0].value == pytest.approx(
        summary["kept_test_acc"], abs=1e-6
    )
    # the configuration as hyperparameters (the HParams tab)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert session.hparams["model"].string_value == "resnet20"
    lr = json.loads((out / "config.json").read_text())["config"]["lr"]
    assert session.hparams["lr"].number_value == pytest.approx(lr)
    assert session.hparams["model_kwargs"].string_value == '{"width": 8}'


@pytest.mark.needs_fashion_mnist
def test_tensorboard_flag_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", None
    )  # as if tensorboard were not installed
    code = cli.main(
        ["train", "--tensorboard", "--subset", "64", "--epochs", "1", "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and "pip install 'resnetlab[tensorboard]'" in err
        and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "r").exists()  # refused before anything was made

    from resnetlab.errors import UsageError
    from resnetlab.train import make_config, train

    with pytest.raises(
        UsageError, match="resnetlab\\[tensorboard\\]"
    ):  # the Python API says the same
        train(
            make_config("quick", subset=64, epochs=1, val_split=0, tensorboard=True),
            out=tmp_path / "p",
            verbose=False,
        )
    assert not (tmp_path / "p" / "config.json").exists()
