"""`resnetlab experiment degradation` on tiny settings: files, one recipe, reuse, errors.

One module-scoped run (4 narrow nets, 256 examples, 2 epochs) is shared by the tests; the
others reuse its finished run folders, so only the first test trains.
"""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest

from resnetlab.cli import main
from resnetlab.errors import UsageError
from resnetlab.experiments import degradation as deg

TINY = dict(depths=(20, 32), width=4, subset=256, epochs=2, seed=0)
TINY_FLAGS = [
    "--depths",
    "20",
    "32",
    "--width",
    "4",
    "--subset",
    "256",
    "--epochs",
    "2",
    "--seed",
    "0",
]
NETS = ["plain20", "resnet20", "plain32", "resnet32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("degradation") / "exp"
    result = deg.run_degradation(out, verbose=False, **TINY)
    return out, result


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.needs_fashion_mnist
def test_writes_run_folders_combined_csv_and_figures(tiny):
    out, result = tiny
    for net in NETS:
        for name in ("config.json", "metrics.csv", "summary.json", "model.safetensors"):
            assert (out / net / name).is_file(), f"{net}/{name} missing"
    rows = _read_csv(out / "degradation.csv")
    assert list(rows[0]) == ["net", "depth", "residual", "epoch", "train_err", "test_err"]
    assert [(r["net"], int(r["epoch"])) for r in rows] == [(n, e) for n in NETS for e in (1, 2)]
    for r in rows:  # the combined CSV is each run's own metrics, as errors
        metrics = {int(m["epoch"]): m for m in _read_csv(out / r["net"] / "metrics.csv")}[
            int(r["epoch"])
        ]
        assert float(r["train_err"]) == pytest.approx(1 - float(metrics["train_acc"]), abs=1e-5)
        assert float(r["test_err"]) == pytest.approx(1 - float(metrics["test_acc"]), abs=1e-5)
        assert r["residual"] == str(r["net"].startswith("resnet"))
    for png in ("degradation.png", "gradients.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "degradation.json").read_text())["nets"] == result["nets"]


@pytest.mark.needs_fashion_mnist
def test_every_net_gets_the_same_recipe(tiny):
    out, _ = tiny
    configs = {net: json.loads((out / net / "config.json").read_text())["config"] for net in NETS}
    for net, cfg in configs.items():
        assert cfg["model"] == net
        assert {k: v for k, v in cfg.items() if k != "model"} == {
            k: v for k, v in configs["plain20"].items() if k != "model"
        }
    cfg = configs["plain20"]
    assert cfg["model_kwargs"] == {"width": 4} and cfg["subset"] == 256 and cfg["epochs"] == 2
    assert cfg["label_smoothing"] == 0.0 and cfg["crop_padding"] == 0 and not cfg["flip"]


# The recipe docs/degradation.md describes, setting by setting: the degradation preset's own
# settings and the TrainConfig defaults it relies on (no augmentation, no label smoothing, ...),
# so that a change to either cannot change the experiment unseen.
DOCUMENTED_RECIPE = dict(
    preset="degradation",
    resize=None,
    normalize=True,
    crop_padding=0,
    random_resized_crop=False,
    flip=False,
    alternate_flip=False,
    erasing=0.0,
    trivial_augment=False,
    mixup=0.0,
    cutmix=0.0,
    val_split=0,
    label_smoothing=0.0,
    init="default",
    batch_size=128,
    optimizer="sgd",
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    schedule="onecycle",
    warmup=0.15,
    ema=0.0,
    tta="none",
    epoch_test=True,
    progressive_resize=0,
)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_net_trains_with_the_documented_recipe(device, monkeypatch):
    from resnetlab.train import presets

    # a GPU's preset settings (presets.DEVICE_SETTINGS) must not reach the experiment either
    monkeypatch.setattr(presets, "device_type", lambda requested=None: device)
    cfg = deg.degradation_config(
        deg.Net(56, False), data="fashion-mnist", epochs=3, width=8, subset=512, seed=1, lr=0.05
    ).to_dict()
    assert {k: cfg[k] for k in DOCUMENTED_RECIPE} == DOCUMENTED_RECIPE
    per_net = dict(
        model="plain56", model_kwargs={"width": 8}, epochs=3, subset=512, seed=1, lr=0.05
    )
    assert {k: cfg[k] for k in per_net} == per_net


@pytest.mark.needs_fashion_mnist
def test_final_errors_and_verdict_come_from_the_last_epoch(tiny):
    out, result = tiny
    rows = _read_csv(out / "degradation.csv")
    final = {f["net"]: f for f in result["nets"]}
    for net in NETS:
        last = [r for r in rows if r["net"] == net][-1]
        assert final[net]["train_err"] == pytest.approx(float(last["train_err"]), abs=1e-5)
        assert final[net]["test_err"] == pytest.approx(float(last["test_err"]), abs=1e-5)
    assert result["plain_degrades"] == (
        final["plain32"]["train_err"] > final["plain20"]["train_err"]
    )
    assert result["residual_no_worse"] == (
        final["resnet32"]["train_err"] <= final["resnet20"]["train_err"]
    )
    table = deg.format_table(result)
    assert all(net in table for net in NETS)
    assert ("degradation shown" in table) == result["plain_degrades"]


@pytest.mark.needs_fashion_mnist
def test_gradient_norms_cover_every_weighted_layer_of_the_deep_nets(tiny):
    out, _ = tiny
    rows = _read_csv(out / "gradients.csv")
    assert sorted({r["net"] for r in rows}) == ["plain32", "resnet32"]
    for net in ("plain32", "resnet32"):
        mine = [r for r in rows if r["net"] == net]
        assert len(mine) == 32  # depth counts the weighted layers: 31 convs and the classifier
        assert [int(r["layer"]) for r in mine] == list(range(1, 33))
        assert mine[0]["name"] == "conv1" and mine[-1]["name"] == "fc"
        assert all(math.isfinite(float(r["grad_norm"])) and float(r["grad_norm"]) > 0 for r in mine)


@pytest.mark.needs_fashion_mnist
def test_gradient_norms_are_reproducible():
    # the seed fixes both the initial weights and the batch, so a second call agrees exactly
    cfg = deg.degradation_config(
        deg.Net(20, residual=False),
        data="fashion-mnist",
        epochs=1,
        width=4,
        subset=256,
        seed=0,
        lr=0.1,
    )
    first, second = deg.gradient_norms_at_init(cfg), deg.gradient_norms_at_init(cfg)
    assert first == second and len(first) == 20


@pytest.mark.needs_fashion_mnist
def test_cli_json_reuses_finished_runs(tiny, capsys):
    out, result = tiny
    stamp = (out / "plain20" / "model.safetensors").stat().st_mtime_ns
    assert main(["experiment", "degradation", *TINY_FLAGS, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert [a["action"] for a in again["nets"]] == ["reused"] * 4
    assert [(a["net"], a["train_err"], a["test_err"]) for a in again["nets"]] == [
        (f["net"], f["train_err"], f["test_err"]) for f in result["nets"]
    ]
    assert (out / "plain20" / "model.safetensors").stat().st_mtime_ns == stamp
    assert "reusing the finished run" in captured.err


@pytest.mark.needs_fashion_mnist
def test_interrupted_run_is_resumed_and_plots_skipped_without_matplotlib(
    tiny, tmp_path, monkeypatch, capsys
):
    out, result = tiny
    copy = tmp_path / "exp"
    shutil.copytree(out, copy)
    (copy / "plain20" / "summary.json").unlink()  # as if stopped before the run finished
    for png in ("degradation.png", "gradients.png"):
        (copy / png).unlink()
    monkeypatch.setattr(deg, "have_matplotlib", lambda: False)
    again = deg.run_degradation(copy, **TINY)
    assert [a["action"] for a in again["nets"]] == ["resumed", "reused", "reused", "reused"]
    assert again["nets"][0]["train_err"] == result["nets"][0]["train_err"]
    assert (copy / "plain20" / "summary.json").is_file()
    assert not (copy / "degradation.png").exists() and not (copy / "gradients.png").exists()
    assert capsys.readouterr().out.count("degradation.png and gradients.png are skipped") == 1


@pytest.mark.needs_fashion_mnist
def test_other_settings_in_the_folder_are_refused(tiny):
    out, _ = tiny
    with pytest.raises(UsageError, match="--overwrite"):
        deg.run_degradation(out, verbose=False, **dict(TINY, epochs=3))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--depths", "10", "14"], "no plain10/resnet10 pair"),
        (["--depths", "20", "20"], "two different depths"),
        (["--width", "0"], "--width must be a positive integer"),
        (["--subset", "-5"], "--subset must be positive"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(flags, message, tmp_path, capsys):
    assert main(["experiment", "degradation", *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
