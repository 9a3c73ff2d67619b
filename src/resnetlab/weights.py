"""Weights for sharing, in the safetensors format, with resnetlab's metadata to rebuild the model.

The `safetensors` package (a required dependency) reads and writes the format; this module adds
what resnetlab needs around it: the file is written atomically (temporary name, then rename), the
metadata (model name, classes, input size, normalisation) travels as JSON under the key
"resnetlab" of the file's `__metadata__`, and a truncated, corrupt or foreign file is one
CheckpointError, never a traceback. Nothing is unpickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_bytes
from safetensors.torch import save as _save_bytes

from resnetlab.errors import CheckpointError, first_line
from resnetlab.fileio import write_bytes

METADATA_KEY = "resnetlab"


def save_weights(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """Write `tensors` (a state_dict) and JSON-able `metadata` atomically as a .safetensors file."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header = {METADATA_KEY: json.dumps(metadata)} if metadata is not None else None
    try:
        data = _save_bytes(cpu, metadata=header)
    except RuntimeError:  # tensors sharing memory (tied weights): the format wants each on its own
        data = _save_bytes({name: t.clone() for name, t in cpu.items()}, metadata=header)
    write_bytes(path, data)


def identify_file(path: str | Path, head: bytes) -> str | None:
    """What a file that is not safetensors is, from its first bytes (and its name), said with what
    to pass instead; None when it may be safetensors (its parser then judges)."""
    path = Path(path)
    if len(head) >= 9 and head[8:9] == b"{":
        return None  # safetensors: an 8-byte header length, then the JSON header
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80\x02"):
        what = (
            "a training checkpoint (written by torch.save; it holds the optimizer and the "
            "training state)"
            if path.name == "checkpoint.pt"
            else "a PyTorch file written by torch.save, not a safetensors weights file"
        )
        return (
            f"{path} is {what}; pass the run folder ({path.parent}) or its .safetensors weights "
            "(best.safetensors or model.safetensors)"
        )
    if path.suffix == ".onnx" or (head[:1] == b"\x08" and b"onnx" in head.lower()):
        return (
            f"{path} is an ONNX model (made by `resnetlab export`): `resnetlab predict` and "
            "`resnetlab eval` run it with onnxruntime; the other commands take the run folder "
            f"({path.parent}) or its .safetensors weights"
        )
    return None


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a .safetensors file: (state_dict, resnetlab metadata or {})."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"weights file {path} does not exist; pass a run folder or a .safetensors file"
        ) from None
    except OSError as e:  # a folder, an unreadable file
        raise CheckpointError(f"cannot read weights file {path}: {e.strerror or e}") from None
    other = identify_file(path, raw[:256])
    if other is not None:  # another kind of file: say which, and what to pass
        raise CheckpointError(other)
    try:
        tensors = _load_bytes(raw)  # checks the header length, offsets and sizes before allocating
        (n,) = struct.unpack("<Q", raw[:8])
        if n > len(raw) - 8:
            raise ValueError(
                f"the header claims {n:,} bytes but the file has {len(raw) - 8:,} after the length"
            )
        header = json.loads(raw[8 : 8 + n])
        meta = json.loads((header.get("__metadata__") or {}).get(METADATA_KEY, "{}"))
        if not isinstance(meta, dict):
            raise ValueError(
                f"its {METADATA_KEY!r} metadata is a {type(meta).__name__}, not a JSON object"
            )
    except (
        SafetensorError,
        struct.error,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        AttributeError,
    ) as e:
        why = " ".join(
            first_line(e, 400).split()
        )  # one line, even when a tensor's name holds a newline
        raise CheckpointError(
            f"{path} is not a valid safetensors weights file ({why}); it may be truncated: re-export it or use another"
        ) from None
    return tensors, meta
