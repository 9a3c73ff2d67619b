"""The seam: `setup.build(cfg)` gives every caller the same parts, and inference sees its input
through the loader's own transform."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from resnetlab.bench.runners import ResnetlabRunner
from resnetlab.bench.variants import parse_variant
from resnetlab.data import Dataset, Loader, eval_batch_size, make_loaders
from resnetlab.inference.images import preprocess
from resnetlab.train import make_config
from resnetlab.train.setup import build, load_splits

TINY = dict(
    model="resnet20",
    model_kwargs={"width": 8},
    subset=300,
    batch_size=64,
    epochs=1,
    val_split=44,
    device="cpu",
)


def tiny_dataset(n=6, size=(1, 12, 10)) -> Dataset:
    images = torch.randint(
        0, 256, (n, *size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return Dataset("tiny", images, torch.arange(n) % 3, ["a", "b", "c"])


def test_make_loaders_shares_settings_and_the_evaluation_batch_rule():
    ds = tiny_dataset()
    loaders = make_loaders(ds, ds, ds, batch_size=4, resize=8, seed=1)
    assert (loaders.train.batch_size, loaders.val.batch_size, loaders.test.batch_size) == (
        4,
        eval_batch_size(4),
        256,
    )
    assert loaders.train.shuffle and not loaders.test.shuffle
    assert all(x.shape[-2:] == (8, 8) for x, _ in loaders.test)
    assert eval_batch_size(512) == 512
    assert make_loaders(test=ds, batch_size=4).train is None


def test_loader_resizes_to_a_height_width_pair():
    ds = tiny_dataset()
    x, _ = next(iter(Loader(ds, 6, shuffle=False, resize=(7, 5))))
    assert x.shape == (6, 1, 7, 5)
    square, _ = next(iter(Loader(ds, 6, shuffle=False, resize=9)))
    pair, _ = next(iter(Loader(ds, 6, shuffle=False, resize=(9, 9))))
    assert torch.equal(square, pair)


def test_preprocess_is_the_loaders_transform():
    ds = tiny_dataset(n=2, size=(1, 28, 28))
    meta = {"input_size": [1, 20, 20], "resize": 20, "normalize": {"mean": [0.3], "std": [0.4]}}
    batch = preprocess(list(ds.images), meta)
    expected, _ = next(iter(Loader(ds, 2, shuffle=False, resize=20, normalize=([0.3], [0.4]))))
    assert torch.equal(batch, expected)
    other = preprocess(
        [torch.zeros(1, 50, 31, dtype=torch.uint8)], meta
    )  # any size comes out at the model's
    assert other.shape == (1, 1, 20, 20)


@pytest.mark.needs_fashion_mnist
def test_build_gives_ready_parts():
    cfg = make_config("quick", **TINY)
    parts = build(cfg)
    assert (
        parts.device == torch.device("cpu") and parts.model is parts.raw_model is parts.eval_model
    )
    assert (
        len(parts.splits.train) == 256
        and len(parts.splits.val) == 44
        and len(parts.splits.test) == 300
    )
    assert parts.loaders.train.batch_size == 64 and parts.loaders.test.batch_size == 256
    assert parts.meta["input_size"] == [1, 28, 28] and parts.meta["classes"] == parts.classes
    assert parts.describe()["config"] == cfg.to_dict()
    compiled = build(make_config("quick", **dict(TINY, compile=True)))
    assert compiled.eval_model is compiled.raw_model and compiled.model is not compiled.raw_model
    assert compiled.loaders.train.drop_last  # one batch shape, one compilation


@pytest.mark.needs_fashion_mnist
def test_bench_measures_the_trainers_parts():
    cfg = dataclasses.replace(
        make_config(
            "d2l",
            model="resnet20",
            batch_size=32,
            epochs=1,
            seed=0,
            lr=0.05,
            device="cpu",
            amp=False,
            channels_last=True,
            compile=False,
        ),
        resize=None,
    )
    splits = load_splits(make_config("d2l", subset=200, resize=None))
    runner = ResnetlabRunner(
        parse_variant("fp32"), "resnet20", splits, 32, None, 1, torch.device("cpu"), 0
    )
    assert runner.cfg.resize is None and runner.train_batches[0][0].shape[-2:] == (
        28,
        28,
    )  # the dataset's size
    parts = build(cfg, splits=splits)
    ours, theirs = runner.model.state_dict(), parts.raw_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert runner.eval_batch_size == parts.loaders.test.batch_size
    assert all(g["foreach"] for g in runner.optimizer.param_groups)
    plain = ResnetlabRunner(
        parse_variant("fp32-noforeach"), "resnet20", splits, 32, None, 1, torch.device("cpu"), 0
    )
    assert not any(g["foreach"] for g in plain.optimizer.param_groups)


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("val_split", [0, 44])
def test_kept_weights_are_evaluated_once(tmp_path, monkeypatch, val_split):
    """No work done twice: the kept weights' test figures (and mistakes) come from their epoch's
    evaluation; without a validation split the run ends with no evaluation of its own."""
    from resnetlab.inference import evaluation
    from resnetlab.train import train

    calls = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = make_config(
        "quick", **dict(TINY, epochs=2, val_split=val_split, epoch_test=True, tta="none")
    )
    summary = train(cfg, out=tmp_path / "run", verbose=False)
    splits = 2 if val_split else 1
    assert len(calls) == 2 * splits, "one evaluation per split and epoch, none after"
    last = [row for row in csv.DictReader((tmp_path / "run" / "metrics.csv").open())]
    kept_epoch = summary.get("best_epoch", 2)
    assert summary["kept_test_acc"] == pytest.approx(
        float(last[kept_epoch - 1]["test_acc"]), abs=1e-6
    )
    assert (tmp_path / "run" / "mistakes.csv").exists() and (
        tmp_path / "run" / "report.html"
    ).exists()


@pytest.mark.needs_fashion_mnist
def test_the_quick_presets_test_set_is_evaluated_at_the_end_only(tmp_path, monkeypatch):
    """The preset's own way (--no-epoch-test, --tta flip): validation each epoch; at the end the last
    weights plain, the kept ones plain when they differ, and the kept ones through the views."""
    from resnetlab.inference import evaluation
    from resnetlab.train import train

    calls = []
    real = evaluation.evaluate
    monkeypatch.setattr(
        evaluation, "evaluate", lambda *a, **k: calls.append(len(a[1].dataset)) or real(*a, **k)
    )
    summary = train(
        make_config("quick", **dict(TINY, epochs=2, val_split=44)),
        out=tmp_path / "run",
        verbose=False,
    )
    tests = (
        1 + (summary["best_epoch"] != 2) + 1
    )  # the last plain, the kept plain if another, the kept with TTA
    assert calls == [44, 44] + [300] * tests  # 44 validation images; the subset's 300 test images
    assert summary["tta"] == "flip" and 0 <= summary["kept_test_acc_no_tta"] <= 1
