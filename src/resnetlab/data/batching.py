"""What the two loaders share, in one place: the in-memory Loader (data/loader.py) and the
StreamLoader (data/stream.py) both derive from `PlannedLoader`, so how a global batch is split
across processes (`batch_plan`), how each share's loss is weighted (`loss_weight`), which side an
epoch's batches have (`epoch_sizes`) and how uint8 pixels become normalised floats on the device
are written once, and the run's (train, val, test) triple of either kind is made by `loaders_of`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from resnetlab.data.augment import erase
from resnetlab.errors import UsageError


def check_batching(batch_size: int, shuffle: bool, rank: int, world_size: int) -> None:
    """Raise UsageError for a bad batch size, rank or world size, or a batch the ranks cannot share."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a whole number >= 1, not {batch_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} of {world_size} processes: need 0 <= rank < world_size")
    if shuffle and batch_size % world_size:
        raise UsageError(f"the global batch {batch_size} must divide by the {world_size} processes")


def check_normalize(
    normalize: tuple[Sequence[float], Sequence[float]] | None, channels: int, name: str
) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std) per channel (none: 0 and 1); a UsageError for a wrong count or a std <= 0."""
    mean, std = normalize if normalize is not None else ([0.0] * channels, [1.0] * channels)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise UsageError(
            f"normalize needs {channels} means and {channels} positive stds for {name}, "
            f"got {list(mean)} and {list(std)}"
        )
    return mean, std


def check_epoch_sizes(epoch_sizes: Sequence[int] | None, shuffle: bool) -> None:
    """Raise UsageError unless sizes by epoch are absent, or whole pixels >= 1 for training."""
    if epoch_sizes is not None and (
        not shuffle
        or not epoch_sizes
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in epoch_sizes)
    ):
        raise UsageError(
            f"sizes by epoch are for training loaders and must be whole numbers of pixels >= 1, "
            f"not {epoch_sizes!r}"
        )


def batch_plan(
    n: int, batch_size: int, shuffle: bool, drop_last: bool, rank: int, world_size: int
) -> list[tuple[int, int, int, int]]:
    """Per batch of rank `rank`: (start of its global batch in the order, global batch size,
    start and end of this rank's share within it); the rules are PlannedLoader's."""
    b, w, r = batch_size, world_size, rank
    plan = []
    if shuffle:
        for start in range(0, n, b):
            m = min(b, n - start)
            if m < w or (drop_last and m < b):
                continue
            plan.append((start, m, r * m // w, (r + 1) * m // w))
    else:
        lo, hi = r * n // w, (r + 1) * n // w
        per_rank = math.ceil(b / w)
        for start in range(lo, hi, per_rank):
            m = min(per_rank, hi - start)
            if drop_last and m < per_rank:
                continue
            plan.append((start, m, 0, m))
    return plan


class PlannedLoader:
    """A loader of `dataset` (anything with a length) in global batches of `batch_size`.

    Training (`shuffle=True`): global batch i is the i-th run of B samples of the epoch's order and
    rank r takes its r-th contiguous share, so w ranks together see exactly what one rank sees; a
    final partial global batch smaller than `world_size` is dropped (every rank must get a
    sample), and so is any partial one with `drop_last`. Evaluation (`shuffle=False`): rank r takes
    the r-th contiguous block of the dataset, in batches of ceil(B / world_size): the ranks cover
    every example once. Call `set_epoch` before each epoch; with `epoch_sizes`, epoch e's batches
    are epoch_sizes[e] pixels a side (past the list, its last). Pixels are divided by 255 * std and
    shifted by mean / std on the device (`normalize`: (mean, std) per channel; none: x / 255).

    Made in two steps: the constructor takes what decides the batches (the plan's arguments, as
    `batch_plan` takes them, and the sizes by epoch); the subclass then sets `device` and
    `channels_last` and calls `_set_normalization`. It makes batches of the size `_use_size`
    gives it, and turns its uint8 pixels into floats with `_to_float` and `_finish`.
    """

    device: torch.device
    channels_last: bool

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        rank: int,
        world_size: int,
        epoch_sizes: Sequence[int] | None,
    ) -> None:
        check_batching(batch_size, shuffle, rank, world_size)
        check_epoch_sizes(epoch_sizes, shuffle)
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.epoch_sizes = list(epoch_sizes) if epoch_sizes is not None else None
        self._plan = batch_plan(len(dataset), batch_size, shuffle, drop_last, rank, world_size)

    def _set_normalization(
        self, normalize: tuple[Sequence[float], Sequence[float]] | None, channels: int
    ) -> tuple[Sequence[float], Sequence[float]]:
        """Check `normalize` for images of `channels` and keep, on `device`, the per-channel
        divisor and shift that turn uint8 pixels into normalized floats (no shift when not
        normalized: subtracting zeros changes nothing); the (mean, std) taken."""
        mean, std = check_normalize(normalize, channels, self.dataset.name)
        self._divisor = torch.tensor([255 * s for s in std], device=self.device).view(-1, 1, 1)
        self._shift = (
            torch.tensor([m / s for m, s in zip(mean, std)], device=self.device).view(-1, 1, 1)
            if normalize is not None
            else None
        )
        return mean, std

    def _use_size(self, out_size: tuple[int, int]) -> None:
        """Make batches of `out_size` (height, width) from now on."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.epoch_sizes is not None:  # progressive resizing: past the list, its last size
            size = self.epoch_sizes[min(epoch, len(self.epoch_sizes) - 1)]
            self._use_size((size, size))

    def __len__(self) -> int:
        return len(self._plan)

    def loss_weight(self, i: int) -> float:
        """What batch `i`'s mean loss on this rank is multiplied by so that DDP's gradient average
        over the ranks is the global batch's mean: (this rank's share) * world_size / (global batch
        size); 1.0 for a batch split evenly (every full batch), other values for an epoch's last,
        partial batch, whose share may differ by one example between ranks."""
        _, m, s0, s1 = self._plan[i]
        return (s1 - s0) * self.world_size / m

    @property
    def num_examples(self) -> int:
        return sum(s1 - s0 for _, _, s0, s1 in self._plan)

    def _to_float(self, raw: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 divided by 255 * std, in one pass (exactly ToTensor's x / 255 when not
        normalized); `raw` already on the device."""
        return raw / self._divisor

    def _finish(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Float pixels divided by 255 * std -> the batch: shifted by mean / std, random-erasing
        `boxes` (data/augment.py's draw_erasing rows) set to 0 after normalisation, in the
        memory format asked for."""
        if self._shift is not None:
            x.sub_(self._shift)
        if boxes is not None:
            x = erase(x, boxes)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class Loaders(NamedTuple):
    train: PlannedLoader | None
    val: PlannedLoader | None
    test: PlannedLoader | None


def loaders_of(make, splits, batches, training: dict, evaluation: dict) -> Loaders:
    """Loaders made by `make` (Loader, or data/stream.py's StreamLoader) of the (train, val,
    test) `splits` (None: no loader): the first shuffled, at the first of `batches`, with
    `training`'s arguments, the others in order at the second, with `evaluation`'s."""
    train, val, test = splits
    batch, eval_batch = batches

    def evaluated(split):
        return None if split is None else make(split, eval_batch, shuffle=False, **evaluation)

    train_loader = None if train is None else make(train, batch, shuffle=True, **training)
    return Loaders(train_loader, evaluated(val), evaluated(test))
