"""Datasets: the real Fashion-MNIST from Debian's package, the Dataset API, info, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_fashion

from resnetlab.cli import main
from resnetlab.data import (
    Dataset,
    get_dataset_info,
    list_datasets,
    load_dataset,
    sources,
    split_dataset,
)
from resnetlab.errors import UsageError


@needs_fashion
def test_fashion_mnist_from_the_system_folder_then_the_cache(isolated_cache, monkeypatch):
    train = load_dataset()  # the default dataset, found in /usr/share/datasets/fashion-mnist
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    pixels = train.images.double() / 255
    info = get_dataset_info("fashion-mnist")
    assert abs(pixels.mean() - info.mean[0]) < 1e-4 and abs(pixels.std() - info.std[0]) < 1e-4
    assert (
        isolated_cache / "fashion-mnist" / "train-images-idx3-ubyte"
    ).stat().st_size == 47_040_016

    test = load_dataset("Fashion_MNIST", train=False)
    assert len(test) == 10000 and torch.bincount(test.labels).tolist() == [1000] * 10

    monkeypatch.setattr(
        sources, "_check_bytes", lambda *a, **k: pytest.fail("hashed a verified file again")
    )
    again = load_dataset("fashion-mnist")  # the decompressed, stamped copy: no gunzip, no md5
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def test_info_and_names():
    assert list_datasets() == ["fashion-mnist", "mnist", "cifar10", "cifar100"]
    info = get_dataset_info("cifar100")
    assert (info.channels, info.image_size, info.num_classes, len(info.classes)) == (
        3,
        (32, 32),
        100,
        100,
    )
    assert len(info.mean) == len(info.std) == 3
    with pytest.raises(UsageError, match="unknown dataset 'cifar1000'; did you mean cifar100"):
        get_dataset_info("cifar1000")


def _numbers(n: int = 30) -> Dataset:
    return Dataset(
        "numbers", torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n), ["x"]
    )


def test_take_subset_and_split_are_seeded_and_disjoint():
    ds = _numbers()
    assert torch.equal(ds.take(10, seed=4).labels, ds.take(10, seed=4).labels)
    assert not torch.equal(ds.take(10, seed=4).labels, ds.take(10, seed=5).labels)
    assert ds.subset([3, 1]).images.view(-1).tolist() == [3, 1]
    train, val = split_dataset(ds, 8, seed=2)
    assert (len(train), len(val)) == (22, 8)
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(30))
    assert torch.equal(split_dataset(ds, 8, seed=2)[1].labels, val.labels)
    assert not torch.equal(split_dataset(ds, 8, seed=3)[1].labels, val.labels)
    with pytest.raises(UsageError, match="cannot take 31 examples from numbers, which has 30"):
        ds.take(31)
    with pytest.raises(UsageError, match="needs 0 < size < 30"):
        split_dataset(ds, 30)
    with pytest.raises(UsageError, match="uint8"):
        Dataset("bad", torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.int64), [])


def test_cli_data_list_and_fetch(tiny, tmp_path, capsys):
    root = tiny.write(tmp_path / "d" / "tiny")
    assert main(["data", "list", "--data-dir", str(tmp_path / "d"), "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["tiny"]["splits"]["train"]["status"] == "ok"
    assert listed["mnist"]["splits"]["train"]["status"] == "missing"
    assert main(["data", "list", "--data-dir", str(tmp_path / "d")]) == 0
    table = capsys.readouterr().out
    assert f"tiny           train  ok       md5    40        {root} (--data-dir)" in table
    (root / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03")
    assert main(["data", "list", "--data-dir", str(tmp_path / "d")]) == 0
    assert (
        "t10k-images-idx3-ubyte: expected 784 bytes, found 4 (truncated); delete it"
        in capsys.readouterr().out
    )
    assert main(["data", "fetch", "tiny", "--data-dir", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("resnetlab: error: tiny: training files not found") and err.count("\n") == 1
    )
    assert main(["data", "fetch", "imagefolder:/x"]) == 2
