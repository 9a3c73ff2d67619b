"""Parsing: IDX, CIFAR binary and Python (restricted unpickler), CIFAR archives, image folders."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import idx_bytes, md5

from resnetlab.data import catalog, formats, get_dataset_info, load_dataset
from resnetlab.errors import DataError, UsageError


def _buf(data: bytes) -> np.ndarray:
    return np.frombuffer(bytearray(data), dtype=np.uint8)


# --- IDX ------------------------------------------------------------------------------------


def test_idx_checks_magic_size_and_labels():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    got, labels = formats.read_idx_pair(
        _buf(idx_bytes(images)), "img", _buf(idx_bytes(np.array([1, 0]))), "lab", 2
    )
    assert (
        got.shape == (2, 1, 3, 3) and np.array_equal(got[:, 0], images) and labels.dtype == np.int64
    )
    with pytest.raises(
        DataError, match=r"img: expected IDX magic 00 00 08 03 .* found 00 00 08 01"
    ):
        formats.read_idx(_buf(idx_bytes(np.zeros(4))), "img", 3)
    with pytest.raises(
        DataError,
        match=r"img: expected 34 bytes for shape \[2, 3, 3\], found 30 bytes \(truncated\)",
    ):
        formats.read_idx(_buf(idx_bytes(images)[:30]), "img", 3)
    with pytest.raises(DataError, match=r"lab: expected labels below 2, found label 7"):
        formats.read_idx_pair(
            _buf(idx_bytes(images)), "img", _buf(idx_bytes(np.array([1, 7]))), "lab", 2
        )
    with pytest.raises(DataError, match=r"lab: expected 2 labels .* found 3"):
        formats.read_idx_pair(
            _buf(idx_bytes(images)), "img", _buf(idx_bytes(np.array([1, 0, 1]))), "lab", 2
        )


# --- CIFAR ----------------------------------------------------------------------------------

_RNG = np.random.default_rng(1)
_CIFAR_IMAGES = {
    "train": _RNG.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8),
    "test": _RNG.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
}
_CIFAR_LABELS = {"train": np.array([0, 9, 3, 3, 1, 5]), "test": np.array([2, 2, 8, 0])}


def _cifar_binary(split: str, rows: slice = slice(None)) -> bytes:
    images, labels = _CIFAR_IMAGES[split][rows], _CIFAR_LABELS[split][rows]
    return b"".join(bytes([int(label)]) + image.tobytes() for image, label in zip(images, labels))


def _cifar_pickle(split: str, rows: slice = slice(None)) -> bytes:
    entry = {
        b"batch_label": b"test",
        b"labels": [int(v) for v in _CIFAR_LABELS[split][rows]],
        b"data": _CIFAR_IMAGES[split][rows].reshape(-1, 3072),
    }
    return pickle.dumps(entry, protocol=2)


def _tiny_cifar10(
    monkeypatch, py: dict[str, bytes] | None = None, archive: bytes | None = None
) -> catalog.DatasetSpec:
    """cifar10 with the same layout of files, each holding a few images (two training batches)."""
    real = catalog.DATASETS["cifar10"]
    binary = catalog.Layout(
        "cifar10-bin",
        (
            catalog.FileSpec("cifar-10-batches-bin/data_batch_1.bin", None, 3 * 3073),
            catalog.FileSpec("cifar-10-batches-bin/data_batch_2.bin", None, 3 * 3073),
        ),
        (catalog.FileSpec("cifar-10-batches-bin/test_batch.bin", None, 4 * 3073),),
    )
    python = catalog.Layout(
        "cifar10-py",
        tuple(
            catalog.FileSpec(f"cifar-10-batches-py/{n}", md5(py[n]) if py else None, None)
            for n in ("data_batch_1", "data_batch_2")
        ),
        (
            catalog.FileSpec(
                "cifar-10-batches-py/test_batch", md5(py["test_batch"]) if py else None, None
            ),
        ),
    )
    provides = tuple(f.path for f in binary.train + binary.test)
    spec = replace(
        real,
        layouts=(binary, python),
        system_dirs=(),
        downloads=(catalog.Download("cifar-10-binary.tar.gz", md5(archive or b""), provides),),
    )
    monkeypatch.setitem(catalog.DATASETS, "cifar10", spec)
    return spec


def _assert_cifar(ds, split: str) -> None:
    assert torch.equal(ds.images, torch.from_numpy(_CIFAR_IMAGES[split]))
    assert ds.labels.tolist() == _CIFAR_LABELS[split].tolist() and ds.classes[0] == "airplane"


def _binary_files() -> dict[str, bytes]:
    return {
        "cifar-10-batches-bin/data_batch_1.bin": _cifar_binary("train", slice(0, 3)),
        "cifar-10-batches-bin/data_batch_2.bin": _cifar_binary("train", slice(3, 6)),
        "cifar-10-batches-bin/test_batch.bin": _cifar_binary("test"),
        "cifar-10-batches-bin/batches.meta.txt": b"airplane\n",
    }


def test_cifar_binary_folder(monkeypatch, tmp_path):
    _tiny_cifar10(monkeypatch)
    for name, data in _binary_files().items():
        (tmp_path / "cifar10" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cifar10" / name).write_bytes(data)
    _assert_cifar(load_dataset("cifar10", root=tmp_path), "train")
    _assert_cifar(load_dataset("CIFAR-10", train=False, root=tmp_path), "test")
    (tmp_path / "cifar10" / "cifar-10-batches-bin/test_batch.bin").write_bytes(
        _cifar_binary("test")[:-5]
    )
    with pytest.raises(
        DataError, match=r"test_batch.bin: expected 12,292 bytes, found 12,287 \(truncated\)"
    ):
        load_dataset("cifar10", train=False, root=tmp_path)


def test_cifar_archive_from_a_loopback_mirror(monkeypatch, http_root, isolated_cache):
    served, url = http_root
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for name, data in _binary_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (served / "cifar-10-binary.tar.gz").write_bytes(packed.getvalue())
    spec = _tiny_cifar10(monkeypatch, archive=packed.getvalue())
    monkeypatch.setitem(catalog.DATASETS, "cifar10", replace(spec, mirrors=(url,)))
    _assert_cifar(load_dataset("cifar10"), "train")
    _assert_cifar(load_dataset("cifar10", train=False), "test")
    unpacked = isolated_cache / "cifar10" / "cifar-10-batches-bin"
    assert sorted(os.listdir(unpacked)) == [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "test_batch.bin",
    ]
    assert not (
        isolated_cache / "cifar10" / "cifar-10-binary.tar.gz"
    ).exists()  # unpacked, then removed


def test_cifar_python_version_through_the_restricted_unpickler(monkeypatch, tmp_path):
    py = {
        "data_batch_1": _cifar_pickle("train", slice(0, 3)),
        "data_batch_2": _cifar_pickle("train", slice(3, 6)),
        "test_batch": _cifar_pickle("test"),
    }
    _tiny_cifar10(monkeypatch, py=py)
    for name, data in py.items():
        (tmp_path / "cifar-10-batches-py").mkdir(exist_ok=True)
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(data)
    _assert_cifar(load_dataset("cifar10", root=tmp_path), "train")
    _assert_cifar(load_dataset("cifar10", train=False, root=tmp_path), "test")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused():
    with pytest.raises(
        DataError,
        match=r"evil: expected a CIFAR Python batch .*refused to load (posix|os|nt)\.system",
    ):
        formats.read_cifar_python(_buf(pickle.dumps({"data": _Exploit()})), "evil", "labels", 10)
    with pytest.raises(DataError, match=r"odd: expected 'data' as uint8 \[N, 3072\]"):
        formats.read_cifar_python(
            _buf(pickle.dumps({"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]})),
            "odd",
            "labels",
            10,
        )


# --- image folders --------------------------------------------------------------------------


def _write_pngs(
    folder, classes: dict[str, int], size=(10, 12), mode="L", seed=0
) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for cls, count in classes.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(folder / cls / f"{i}.png")
            written.setdefault(cls, []).append(pixels)
    return written


def test_image_folder_with_train_and_test(tmp_path):
    train = _write_pngs(tmp_path / "train", {"cat": 2, "dog": 3}, mode="RGB")
    test = _write_pngs(tmp_path / "test", {"dog": 1}, mode="RGB", seed=1)
    name = f"imagefolder:{tmp_path}"
    ds = load_dataset(name)
    assert (
        ds.images.shape == (5, 3, 12, 10)
        and ds.classes == ["cat", "dog"]
        and ds.labels.tolist() == [0, 0, 1, 1, 1]
    )
    assert torch.equal(ds.images[2], torch.from_numpy(train["dog"][0]).permute(2, 0, 1))
    test_ds = load_dataset(name, train=False)
    assert test_ds.labels.tolist() == [1] and torch.equal(
        test_ds.images[0], torch.from_numpy(test["dog"][0]).permute(2, 0, 1)
    )
    info = get_dataset_info(name)
    pixels = np.concatenate([np.stack(v) for v in train.values()]).astype(np.float64) / 255
    assert (info.channels, info.image_size, info.classes) == (3, (12, 10), ["cat", "dog"])
    assert np.allclose(info.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-4)


def test_image_folder_without_a_test_split_and_odd_sizes(tmp_path):
    from PIL import Image

    _write_pngs(tmp_path, {"a": 2, "b": 1})
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(
        tmp_path / "b" / "big.png"
    )  # resized to the common 12x10
    ds = load_dataset(f"imagefolder:{tmp_path}")  # no test/: a tenth of each class held out,
    test_ds = load_dataset(f"imagefolder:{tmp_path}", train=False)  # at least one of two or more
    assert ds.images.shape == (2, 1, 12, 10) and test_ds.images.shape == (2, 1, 12, 10)
    assert sorted(test_ds.labels.tolist()) == [0, 1] and sorted(ds.labels.tolist()) == [0, 1]
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    # held in memory every file is read; the line names the paths that leave such a file out
    with pytest.raises(DataError, match=r"broken.png: expected an image.*leave such files out"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_unknown_names_suggest_close_matches(tmp_path):
    with pytest.raises(UsageError, match="did you mean fashion-mnist"):
        load_dataset("fashion-mnsit")
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
