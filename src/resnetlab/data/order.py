"""The order a streamed training epoch reads its samples in, a pure function of (seed, epoch):
every process computes the same one and takes its share of each global batch (batching.batch_plan),
and a run resumed inside an epoch finds its place in it.

- "random": a permutation of all samples. The best mixing; each batch reads from anywhere in
  the set, which suits local SSDs and the page cache.
- "shards": the shards in a random order, taken `window` at a time, the samples of those shards
  shuffled together. A batch reads from `window` shards only, and each shard is read in one
  stretch of the epoch: what remote or slow storage needs (a cache holding `window` + a few
  shards, whole-shard fetches, sequential disks). Mixing is weaker: a batch holds only the
  classes of `window` shards, so it needs shards whose classes are mixed (a folder packed class
  by class gives shards of one or two classes: widen the window or pack shuffled).
"""

from __future__ import annotations

import numpy as np
import torch

from resnetlab.data.augment import stream_seed
from resnetlab.errors import UsageError

ORDERS = ("random", "shards")
DEFAULT_WINDOW = 4


def epoch_order(
    files: np.ndarray, seed: int, epoch: int, order: str = "random", window: int = DEFAULT_WINDOW
) -> torch.Tensor:
    """Sample indices (int64 [N]) in epoch `epoch`'s reading order; `files` is each sample's
    shard (its file index), which the "shards" order groups by."""
    n = len(files)
    if order == "random":
        gen = torch.Generator().manual_seed(stream_seed(seed, epoch, "order"))
        return torch.randperm(n, generator=gen)
    if order != "shards":
        raise UsageError(f"unknown shard order {order!r}; use {' or '.join(ORDERS)}")
    if not isinstance(window, int) or window < 1:
        raise UsageError(f"--shard-window must be a whole number >= 1, not {window!r}")
    gen = torch.Generator().manual_seed(stream_seed(seed, epoch, "shard-order"))
    shards, inverse = np.unique(np.asarray(files), return_inverse=True)
    rank = torch.randperm(len(shards), generator=gen).numpy()  # each shard's place
    group = rank[inverse] // window  # the window each sample is read in
    by_group = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[by_group], np.arange(group.max(initial=-1) + 2))
    parts = []
    for g in range(len(bounds) - 1):
        members = torch.from_numpy(by_group[bounds[g] : bounds[g + 1]])
        parts.append(members[torch.randperm(len(members), generator=gen)])
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


__all__ = ["DEFAULT_WINDOW", "ORDERS", "epoch_order"]
