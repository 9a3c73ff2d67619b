"""weights.py: safetensors files through the `safetensors` package, atomically, with resnetlab's
metadata, and a one-line CheckpointError for every bad file."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch

from resnetlab.errors import CheckpointError
from resnetlab.weights import load_weights, save_weights

TENSORS = {
    "a.weight": torch.arange(12, dtype=torch.float32).view(3, 4),
    "a.bias": torch.ones(3, dtype=torch.float16),
    "n": torch.tensor(7),
    "empty": torch.zeros(0, 5),
    "b": torch.tensor([True, False]),
}


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    meta = {
        "model": "resnet20",
        "classes": ["a", "b"],
        "input_size": [1, 28, 28],
        "normalize": None,
    }
    save_weights(tmp_path / "w.safetensors", TENSORS, meta)
    tensors, back = load_weights(tmp_path / "w.safetensors")
    assert back == meta and tensors.keys() == TENSORS.keys()
    assert all(
        tensors[k].dtype == v.dtype and torch.equal(tensors[k], v) for k, v in TENSORS.items()
    )
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"], "no temporary file is left"
    # the reference library reads the same file, metadata under "resnetlab" in __metadata__
    with safetensors.safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["resnetlab"]) == meta


def test_channels_last_and_views_are_written_in_plain_layout(tmp_path):
    w = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    save_weights(tmp_path / "w.safetensors", {"w": w, "row": torch.randn(5, 5)[1]})
    tensors, meta = load_weights(tmp_path / "w.safetensors")
    assert meta == {} and torch.equal(tensors["w"], w) and tensors["row"].shape == (5,)


def test_tied_weights_are_written_each_on_its_own(tmp_path):
    shared = torch.randn(4, 4)
    save_weights(tmp_path / "w.safetensors", {"a": shared, "b": shared, "c": shared[1]})
    tensors, _ = load_weights(tmp_path / "w.safetensors")
    assert (
        torch.equal(tensors["a"], shared)
        and torch.equal(tensors["b"], shared)
        and torch.equal(tensors["c"], shared[1])
    )


def test_files_written_by_the_library_load(tmp_path):
    safetensors.torch.save_file(TENSORS, str(tmp_path / "x.safetensors"))
    tensors, meta = load_weights(tmp_path / "x.safetensors")
    assert meta == {} and torch.equal(tensors["a.weight"], TENSORS["a.weight"])


@pytest.mark.parametrize(
    "damage", ["truncated", "empty", "garbage", "huge_header", "bad_json", "foreign_meta"]
)
def test_bad_files_are_one_line_checkpoint_errors(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    save_weights(path, TENSORS, {"model": "resnet20"})
    raw = path.read_bytes()
    if damage == "truncated":
        raw = raw[: len(raw) - 10]
    elif damage == "empty":
        raw = b""
    elif damage == "garbage":
        raw = b"PK\x03\x04 this is a zip, not weights"
    elif damage == "huge_header":  # a header length of 2**62 bytes must not be allocated
        raw = struct.pack("<Q", 2**62) + raw[8:]
    elif damage == "bad_json":
        raw = raw[:8] + b"[" + raw[9:]
    elif damage == "foreign_meta":
        head = json.dumps({"__metadata__": {"resnetlab": "[1, 2]"}}).encode()
        head += b" " * (-len(head) % 8)
        raw = struct.pack("<Q", len(head)) + head
    path.write_bytes(raw)
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="folder"):
        load_weights(tmp_path)
