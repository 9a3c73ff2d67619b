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
