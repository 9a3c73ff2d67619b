"""Weights for sharing, in the safetensors format, with resnetlab's metadata to rebuild the model.

The format is small enough to write here (8-byte little-endian header length, a JSON header, raw
little-endian tensor bytes), so sharing weights needs no extra dependency; files written here load
with the `safetensors` package and the reverse. Nothing is unpickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from resnetlab.errors import CheckpointError
from resnetlab.fileio import atomic_open

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}
METADATA_KEY = "resnetlab"


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write `tensors` (a state_dict) and JSON-able `metadata` atomically as a .safetensors file."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = {METADATA_KEY: json.dumps(metadata)}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a .safetensors file: (state_dict, resnetlab metadata or {})."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist; pass a run folder or a .safetensors file") from None
    except OSError as e:  # a folder, an unreadable file
        raise CheckpointError(f"cannot read weights file {path}: {e.strerror or e}") from None
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        if n > len(raw) - 8:
            raise ValueError(f"the header claims {n:,} bytes but the file has {len(raw) - 8:,} after the length")
        header = json.loads(raw[8 : 8 + n])
        base = 8 + n
        meta = json.loads(header.pop("__metadata__", {}).get(METADATA_KEY, "{}"))
        if not isinstance(meta, dict):
            raise ValueError(f"its resnetlab metadata is a {type(meta).__name__}, not an object")
        tensors = {}
        for name, info in header.items():
            start, end = info["data_offsets"]
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
                raise ValueError(f"tensor {name} has data offsets {start}, {end}")
            if base + end > len(raw):
                raise ValueError(f"tensor {name} ends at byte {base + end} but the file has {len(raw)}")
            dtype = _FROM_NAME[info["dtype"]]
            buf = bytearray(raw[base + start : base + end])
            t = torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
            tensors[name] = t.view(dtype).reshape(info["shape"])
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
        why = " ".join(str(e).split())  # one line, even when a tensor's name holds a newline
        raise CheckpointError(
            f"{path} is not a valid safetensors weights file ({why}); it may be truncated: re-export it or use another"
        ) from None
    return tensors, meta
