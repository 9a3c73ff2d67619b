"""Every TrainConfig field is a `resnetlab train` flag; --config starts from a saved configuration.

Training itself is replaced by a stub that records the configuration it was given, so these
tests check the command line alone (no data needed)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from resnetlab import cli
from resnetlab.errors import UsageError
from resnetlab.train import TrainConfig, make_config
from resnetlab.train import trainer as trainer_module


@pytest.fixture
def captured(monkeypatch):
    """Run `resnetlab train ...` without training: the TrainConfig it resolves lands in the list."""
    seen = []

    def fake_train(cfg=None, **kwargs):
        seen.append((cfg, kwargs))
        return {"ok": True}

    monkeypatch.setattr(trainer_module, "train", fake_train)
    return seen


def test_every_field_is_a_flag_with_its_help():
    parser = cli.build_parser()
    train_parser = next(
        a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train"
    )[1]
    flags = {opt: action for action in train_parser._actions for opt in action.option_strings}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags, flag
        assert flags[flag].help.removesuffix(" (none: unset)") == f.metadata["help"]


def test_flags_reach_the_config(captured):
    assert (
        cli.main(
            [
                "train",
                "--preset",
                "d2l",
                "--weight-decay",
                "0.01",
                "--momentum",
                "0.5",
                "--nesterov",
                "--optimizer",
                "adamw",
                "--schedule",
                "cosine",
                "--warmup",
                "0.1",
                "--label-smoothing",
                "0.2",
                "--crop-padding",
                "2",
                "--flip",
                "--erasing",
                "0.3",
                "--no-normalize",
                "--model",
                "resnet20",
                "--model-kwargs",
                '{"width": 8}',
                "--init",
                "default",
            ]
        )
        == 0
    )
    cfg = captured[0][0]
    assert (
        cfg.preset,
        cfg.weight_decay,
        cfg.momentum,
        cfg.nesterov,
        cfg.optimizer,
        cfg.schedule,
    ) == ("d2l", 0.01, 0.5, True, "adamw", "cosine")
    assert (
        cfg.warmup,
        cfg.label_smoothing,
        cfg.crop_padding,
        cfg.flip,
        cfg.erasing,
        cfg.normalize,
    ) == (0.1, 0.2, 2, True, 0.3, False)
    assert cfg.model_kwargs == {"width": 8} and cfg.init == "default"
    assert cfg.resize == 96 and cfg.lr == 0.05  # what no flag changed is the preset's


def test_config_file_is_the_start_and_flags_override_it(tmp_path, captured):
    saved = make_config("best", epochs=7, seed=5)
    run_config = (
        tmp_path / "config.json"
    )  # as a run folder holds it: the configuration under "config"
    run_config.write_text(json.dumps({"config": saved.to_dict(), "device": "cpu"}))
    assert cli.main(["train", "--config", str(run_config), "--epochs", "3"]) == 0
    cfg = captured[0][0]
    assert cfg.to_dict() == dataclasses.replace(saved, epochs=3).to_dict()
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(saved.to_dict()))
    assert cli.main(["train", "--config", str(bare), "--model", "resnet56"]) == 0
    assert (
        captured[1][0].model == "resnet56" and captured[1][0].model_kwargs == {}
    )  # best's width was resnet20's


def test_the_word_none_unsets_an_optional_setting(tmp_path, captured):
    """A sweep's best.json holds its --subset: `--subset none` reruns it on the full data."""
    saved = tmp_path / "best.json"
    saved.write_text(json.dumps({"config": make_config("quick", subset=2000, resize=32).to_dict()}))
    assert cli.main(["train", "--config", str(saved), "--subset", "none", "--epochs", "3"]) == 0
    cfg = captured[0][0]
    assert cfg.subset is None and cfg.resize == 32 and cfg.epochs == 3
    assert cli.main(["train", "--config", str(saved), "--resize", "NONE"]) == 0
    assert captured[1][0].subset == 2000 and captured[1][0].resize is None
    assert cli.main(["train", "--config", str(saved)]) == 0  # not given: as saved
    assert (captured[2][0].subset, captured[2][0].resize) == (2000, 32)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"config": {"epochs": "ten"}}, "--epochs takes int, got 'ten'"),
        ({"config": {"lr": "fast"}}, "--lr takes float"),
        ({"config": {"amp": "yes"}}, "--amp takes bool or null"),
        ({"config": {"epochs": True}}, "--epochs takes int, got True"),
        ({"config": {"lr": 1e999}}, "--lr must be a finite number"),
        ({"config": {"optimizer": "lion"}}, "unknown optimizer 'lion'"),
        ({"epochz": 3}, "unknown configuration keys ['epochz']"),
        ([1, 2], "holds no configuration object"),
        ("not json", "is not a JSON configuration"),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(tmp_path, capsys, captured, content, message):
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not captured


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "/nonexistent/config.json"], "does not exist"),
        (["--config", "/tmp"], "is a folder"),
        (["--preset", "d2l", "--config", "CONFIG"], "not both"),
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--preset", "fastest"], "unknown preset 'fastest'"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, captured, argv, message):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(make_config("quick").to_dict()))
    assert cli.main(["train", *[str(config) if a == "CONFIG" else a for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "ten"],
        ["--model-kwargs", "[1]"],
        ["--optimizer", "lion"],
        ["--epochs", "none"],  # not optional: no word unsets it
        ["--subset", "few"],
    ],
)
def test_ill_typed_flags_exit_2(capsys, captured, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    assert exit_info.value.code == 2 and argv[0] in capsys.readouterr().err


def test_resume_takes_no_other_settings(capsys, captured):
    assert cli.main(["train", "--resume", "runs/x", "--weight-decay", "0.1"]) == 2
    assert "drop --weight-decay" in capsys.readouterr().err


def test_nproc_hands_every_given_flag_to_torchrun():
    parser = cli.build_parser()
    given = [
        "--nproc=2",
        "--model-kwargs",
        '{"width": 8}',
        "--no-amp",
        "--weight-decay",
        "0.001",
        "--np",  # an abbreviation argparse accepts
        "2",
        "--preset",
        "best",
    ]
    parser.parse_args(["train", *given])
    argv = cli._without_nproc(given)
    assert not any(a.startswith("--np") for a in argv) and "2" not in argv
    again = parser.parse_args(["train", *argv])
    assert (again.model_kwargs, again.amp, again.weight_decay, again.preset) == (
        {"width": 8},
        False,
        0.001,
        "best",
    )


def test_python_callers_get_the_same_checks():
    with pytest.raises(UsageError, match="--batch-size takes int"):
        TrainConfig(batch_size=2.5)
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
