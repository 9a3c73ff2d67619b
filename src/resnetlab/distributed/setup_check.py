"""Refusing mixed setups: before any work, the processes compare configuration, data and versions."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from resnetlab.distributed.group import DistInfo, shared
from resnetlab.errors import UsageError
from resnetlab.version import __version__


def fingerprint(dataset) -> str | None:
    """A short digest of a dataset: its size, image shape, classes, every label and a sample of pixels."""
    if dataset is None:
        return None
    h = hashlib.blake2b(digest_size=12)
    h.update(repr((len(dataset), tuple(dataset.images.shape), list(dataset.classes))).encode())
    h.update(dataset.labels.contiguous().numpy().tobytes())
    if getattr(dataset, "digest", None):  # its files' version (data/identity.py)
        h.update(dataset.digest.encode())
    if not isinstance(dataset.images, torch.Tensor):  # streamed: decoded only when trained on
        return h.hexdigest()
    flat = dataset.images.reshape(-1)
    step = max(
        1, flat.numel() // (1 << 22)
    )  # ~4 MB of pixels: enough to tell two versions apart, fast on ImageNet
    h.update(flat[::step].contiguous().numpy().tobytes())
    return h.hexdigest()


def describe_setup(config: dict, datasets: dict, **resolved) -> dict:
    """What must be the same on every process: the configuration (less where the data lives),
    what `auto` settings resolved to, the data and the versions."""
    return {
        "config": {k: v for k, v in config.items() if k != "data_dir"},
        **resolved,
        "data": {split: fingerprint(ds) for split, ds in datasets.items()},
        "versions": {"resnetlab": __version__, "torch": torch.__version__},
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "config.model_kwargs":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def describe_mismatch(setups: list[dict]) -> str | None:
    """One line naming what differs between the processes' setups, or None when they agree."""
    flat = [_flatten(s) for s in setups]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    diffs = []
    for key in keys:
        values = [f.get(key) for f in flat]
        other = next((r for r, v in enumerate(values) if v != values[0]), None)
        if other is not None:
            name = key.removeprefix("config.")
            diffs.append(f"{name} is {values[0]!r} on rank 0 but {values[other]!r} on rank {other}")
    if not diffs:
        return None
    more = f" (and {len(diffs) - 3} more differences)" if len(diffs) > 3 else ""
    return (
        f"the {len(setups)} processes were not started alike: {'; '.join(diffs[:3])}{more}; "
        f"start every process with the same flags, data and resnetlab/torch versions"
    )


def check_same_setup(info: DistInfo, setup: dict) -> None:
    """Refuse to train when the processes differ in configuration, data or versions."""
    if not info.enabled:
        return
    setups = [None] * info.world_size
    dist.all_gather_object(setups, setup)
    problem = describe_mismatch(setups)
    if problem:
        raise shared(UsageError(problem))
