"""The batched loader: the dataset sits on the device as uint8, each batch is cut from a seeded
permutation and turned into float32 by whole-tensor operations (airbench's data path, made
device-agnostic and shardable).

Resize, random crop and horizontal flip are all linear maps of an image's rows and columns, so a
batch is transformed as `A_b @ X_b @ B_b^T`: `A_b` (H' x H) holds the bilinear, antialiased resize
weights of the rows, shifted for the crop; `B_b` (W' x W) those of the columns, shifted and
mirrored. Two matrix products per batch replace interpolate + pad + gather + flip and cost less
than that chain on the CPU (benchmarks/loader.py prints the comparison; BENCHMARKS.md). The
weights are F.interpolate's own (found by resizing an identity), so the result equals
F.interpolate(..., antialias=True) to float rounding (on CUDA with TF32 matmuls enabled, to TF32
precision). An image is resized to `resize` x `resize`, or to the (height, width) pair given.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from resnetlab.data.augment import (
    Augment,
    check_augment,
    draw_erasing,
    erase,
    image_ops,
    stream_seed,
)
from resnetlab.data.datasets import Dataset
from resnetlab.data.eval_view import crop_offsets, resized_size
from resnetlab.errors import UsageError

EVAL_BATCH_MIN = (
    256  # evaluation keeps no activations for backward: a larger batch costs little memory
)


IDENTITY_LIMIT = (
    2048  # pixels: longer axes get their weights from the filter's formula, not an identity
)


@functools.lru_cache(maxsize=16)
def resize_weights(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in]: row o holds the weights F.interpolate(bilinear, antialias=True) gives output
    pixel o along one axis (the filter is separable). Found by resizing the identity; an axis longer
    than IDENTITY_LIMIT (a 50,000-pixel-wide image given to `predict`) would need an identity of
    n_in^2 doubles (20 GB), so its weights come from the formula PyTorch's kernel uses
    (`_antialias_weights`, equal to the identity's bit for bit where both were tried)."""
    if n_in > IDENTITY_LIMIT:
        return _antialias_weights(n_in, n_out).float()
    # The resized axis is paired with a dummy axis of 4: interpolate mishandles a dummy axis of 1 here.
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 4)
    out = F.interpolate(
        basis, size=(n_out, 4), mode="bilinear", antialias=True, align_corners=False
    )
    return out[:, 0, :, 0].T.float().contiguous()


def _antialias_weights(n_in: int, n_out: int) -> torch.Tensor:
    """F.interpolate's bilinear antialiased weights computed as its CPU kernel does (a triangle
    filter widened by the downscaling factor, each row normalised), float64 [n_out, n_in]."""
    scale = n_in / n_out
    support, invscale = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        center = scale * (o + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        x = ((torch.arange(lo, hi, dtype=torch.float64) - center + 0.5) * invscale).abs()
        f = (1 - x).clamp(min=0)
        weights[o, lo:hi] = f / f.sum() if f.sum() != 0 else f
    return weights


def _all_shifts(weights: torch.Tensor, pad: int) -> torch.Tensor:
    """[2 * pad + 1, n_out, n_in]: entry s is `weights` with its rows moved by s - pad (a crop of
    the zero-padded output); rows that fall outside are zero."""
    n_out, n_in = weights.shape
    padded = torch.cat([weights.new_zeros(pad, n_in), weights, weights.new_zeros(pad, n_in)])
    return padded.unfold(0, n_out, 1).transpose(1, 2).contiguous()


def check_batching(batch_size: int, shuffle: bool, rank: int, world_size: int) -> None:
    """Raise UsageError for a bad batch size, rank or world size, or a batch the ranks cannot share."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a whole number >= 1, not {batch_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} of {world_size} processes: need 0 <= rank < world_size")
    if shuffle and batch_size % world_size:
        raise UsageError(f"the global batch {batch_size} must divide by the {world_size} processes")


def _check_resize(resize: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """`resize` as a (height, width) pair (None: none); a UsageError unless whole pixels >= 1."""
    sizes = (resize, resize) if isinstance(resize, int) else resize
    if sizes is not None and (
        not isinstance(sizes, (tuple, list))  # a float: a TypeError from len() before
        or len(sizes) != 2
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes)
    ):
        raise UsageError(
            f"resize must be a whole number of pixels >= 1 (or a pair of them), not {resize!r}"
        )
    return sizes


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


def _check_crop(crop: int | None, size: tuple[int, int]) -> None:
    """Raise UsageError unless the centre crop is absent, or whole pixels within `size`."""
    if crop is not None and (
        isinstance(crop, bool) or not isinstance(crop, int) or not 1 <= crop <= min(size)
    ):
        raise UsageError(
            f"a centre crop of {crop!r} pixels does not fit images of {size[0]} x {size[1]}; "
            f"pass at most {min(size)} (or resize them larger)"
        )


def shorter_side(size: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) with the shorter side resized to `size`, the aspect ratio kept as
    torchvision's Resize(size) keeps it (the evaluation view's arithmetic, data/eval_view.py)."""
    return resized_size(height, width, size)


def _check_epoch_sizes(epoch_sizes: Sequence[int] | None, shuffle: bool) -> None:
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
    start and end of this rank's share within it); see Loader for the rules. The streaming
    loader (data/stream.py) shares them."""
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


class Loader:
    """Batches (x float32 [b, C, H', W'] on `device`, y int64 [b]) of a dataset.

    `batch_size` is the global batch. Training (`shuffle=True`): epoch e is the permutation of
    generator (seed, e); global batch i is perm[i*B:(i+1)*B] and rank r takes its r-th contiguous
    share; augmentation parameters are drawn for the whole global batch, then sliced, so w ranks
    together see exactly what one rank sees. A final partial global batch smaller than
    `world_size` is dropped (every rank must get a sample). Evaluation (`shuffle=False`): rank r
    takes the r-th contiguous block of the dataset, in batches of ceil(B / world_size): the ranks
    cover every example once. Call `set_epoch` before each epoch; iterating twice gives the same batches.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        resize: int | tuple[int, int] | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        augment: Augment | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        epoch_sizes: Sequence[int] | None = None,
        crop: int | None = None,
    ) -> None:
        check_batching(batch_size, shuffle, rank, world_size)
        sizes = _check_resize(resize)
        _check_crop(crop, sizes or tuple(dataset.images.shape[2:]))
        augment = check_augment(augment, shuffle)
        if augment.resized_crop:
            raise UsageError(
                "random-resized crops need the full-resolution images that streamed data keeps: "
                "add --stream (or pack the set with `resnetlab data pack`)"
            )
        channels, height, width = dataset.images.shape[1:]
        mean, std = check_normalize(normalize, channels, dataset.name)
        _check_epoch_sizes(epoch_sizes, shuffle)

        self.dataset, self.batch_size, self.shuffle, self.augment = (
            dataset,
            batch_size,
            shuffle,
            augment,
        )
        self._image_ops = image_ops(augment)  # data/augment.py: per-image ops, on the host
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.device = torch.device(device)
        self.channels_last, self.crop = channels_last, crop
        self.epoch = 0
        self.epoch_sizes = list(epoch_sizes) if epoch_sizes is not None else None
        self._set_normalization(mean, std, normalize is not None)
        self._geometries: dict[tuple[int, int], tuple] = {}
        self._use_size(tuple(sizes) if resize else (height, width))
        self._images, self._labels = self._place(dataset)
        self._plan = self._make_plan(len(dataset))

    def _set_normalization(
        self, mean: Sequence[float], std: Sequence[float], normalized: bool
    ) -> None:
        """Keep the per-channel divisor and shift that turn uint8 pixels into normalized floats."""
        self._divisor = torch.tensor([255 * s for s in std], device=self.device).view(-1, 1, 1)
        self._shift = (
            torch.tensor([m / s for m, s in zip(mean, std)], device=self.device).view(-1, 1, 1)
            if normalized
            else None
        )
        self._folded = (
            len(set(std)) == 1
        )  # one divisor serves all channels: resampling folds it into its weights
        self._row_divisor = 255 * std[0] if self._folded else 1.0

    def _use_size(self, out_size: tuple[int, int]) -> None:
        """Make batches of `out_size` (height, width): the resampling weights of that size, made
        once per size and kept."""
        if out_size not in self._geometries:
            height, width = self.dataset.images.shape[2:]
            same = out_size == (height, width)
            rows = (torch.eye(height) if same else resize_weights(height, out_size[0])).to(
                self.device
            ) / self._row_divisor
            cols = (torch.eye(width) if same else resize_weights(width, out_size[1])).to(
                self.device
            )
            if self.crop:  # the centre crop: the middle rows of each matrix (torchvision's offsets)
                top, left = crop_offsets(*out_size, self.crop)
                rows, cols = rows[top : top + self.crop], cols[left : left + self.crop]
                same = False
            # Every crop offset (and its mirror image) of the weights, made once: a batch picks its
            # samples' matrices with one index_select instead of building them.
            pad = self.augment.crop_padding
            col_shifts = _all_shifts(cols, pad)
            self._geometries[out_size] = (
                rows,
                cols,
                not same,
                _all_shifts(rows, pad),  # [2p+1, H', H]
                torch.cat([col_shifts, col_shifts.flip(1)]) if self.augment.flip else col_shifts,
            )
        self.out_size = (self.crop, self.crop) if self.crop else out_size
        self._rows, self._cols, self._geometry, self._row_table, self._col_table = self._geometries[
            out_size
        ]

    def _place(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels on the device once; in host memory if the device is full."""
        try:
            return dataset.images.to(self.device), dataset.labels.to(self.device)
        except torch.OutOfMemoryError:
            return dataset.images, dataset.labels

    def _make_plan(self, n: int) -> list[tuple[int, int, int, int]]:
        return batch_plan(
            n, self.batch_size, self.shuffle, self.drop_last, self.rank, self.world_size
        )

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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, "order"))
            order = torch.randperm(len(self.dataset), generator=gen)
        epoch_params = self._epoch_params(order) if self.augment.active else None
        order = order.to(self._images.device) if order is not None else None
        for i, (start, _m, s0, s1) in enumerate(self._plan):
            params = epoch_params[i] if epoch_params else None
            if order is None:
                raw, y = (
                    self._images[start + s0 : start + s1],
                    self._labels[start + s0 : start + s1],
                )
            else:  # index_select: a tenth of the time of x[index] for uint8 images
                index = order[start + s0 : start + s1]
                raw, y = self._images.index_select(0, index), self._labels.index_select(0, index)
            yield (
                self._transform(raw.to(self.device, non_blocking=True), params),
                y.to(self.device, non_blocking=True),
            )

    def _epoch_params(self, order: torch.Tensor) -> list[dict]:
        """Every batch's augmentation parameters for this epoch (`order`: its permutation of the
        dataset), drawn in batch order, then moved to the device in one copy per kind: a copy per
        batch would make the host wait for the device at every step (a host-to-device copy from
        pageable memory synchronizes)."""
        gen = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, "augment"))
        draws = [self._draw(gen, m, s0, s1) for _, m, s0, s1 in self._plan]
        if not draws:
            return []
        if self.augment.alternate_flip:  # each image's own random start, then every other epoch
            start = torch.Generator().manual_seed(stream_seed(self.seed, 0, "flip"))
            flips = (torch.rand(len(self.dataset), generator=start) < 0.5)[order] ^ bool(
                self.epoch % 2
            )
            for draw, (begin, _, s0, s1) in zip(draws, self._plan):
                draw["flip"] = flips[begin + s0 : begin + s1]
        for op in self._image_ops:  # each image's parameters, from a stream of the op's own
            stream = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, op.name))
            for draw, (_, m, s0, s1) in zip(draws, self._plan):
                values = [op.draw(self.augment, stream) for _ in range(m)]
                draw[op.name] = torch.tensor(values, dtype=torch.float64).reshape(m, op.size).T
                draw[op.name] = draw[op.name][:, s0:s1]
        sizes = [s1 - s0 for _, _, s0, s1 in self._plan]
        batches: list[dict] = [{} for _ in draws]
        on_host = {op.name for op in self._image_ops}  # applied to the images on the host
        for key in draws[0]:
            whole = torch.cat([d[key] for d in draws], dim=-1)
            whole = whole if key in on_host else whole.to(self.device)
            for batch, part in zip(batches, whole.split(sizes, dim=-1)):
                batch[key] = part
        return batches

    def _draw(self, gen: torch.Generator, m: int, s0: int, s1: int) -> dict:
        """Augmentation parameters for a whole global batch of m (so every rank draws the same
        stream), sliced to this rank's share; drawn on the CPU, and left there, so any device
        gives the same."""
        aug, (h, w) = self.augment, self.out_size
        p = {}
        if aug.crop_padding:
            p["crop"] = torch.randint(0, 2 * aug.crop_padding + 1, (2, m), generator=gen)[:, s0:s1]
        if aug.flip and not aug.alternate_flip:  # alternating flips are set by _epoch_params
            p["flip"] = (torch.rand(m, generator=gen) < 0.5)[s0:s1]
        if aug.erasing:
            p["erase"] = draw_erasing(gen, m, h, w, aug.erasing)[:, s0:s1]
        return p

    def _transform(self, raw: torch.Tensor, params: dict | None) -> torch.Tensor:
        params = params or {}
        for op in self._image_ops:
            if op.name in params:
                images = zip(raw, params[op.name].T.tolist())
                raw = torch.stack([op.apply(image, tuple(p)) for image, p in images])
        if self._geometry or "crop" in params or "flip" in params:
            x = self._resample(raw.float(), params)
            if not self._folded:
                x.div_(self._divisor)
        else:
            x = (
                raw / self._divisor
            )  # uint8 -> float32 in [0, 1] (exactly ToTensor's x / 255), / std: one pass
        if self._shift is not None:
            x.sub_(self._shift)
        if "erase" in params:
            x = erase(x, params["erase"])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _resample(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """x -> A @ x @ B^T: resize, crop and flip as two matrix products (see the module docstring)."""
        rows, cols = self._rows, self._cols  # [H', H], [W', W]
        pad = self.augment.crop_padding
        if "crop" in params:
            rows = self._row_table.index_select(0, params["crop"][0])
        if "crop" in params or "flip" in params:
            col_index = (
                params["crop"][1]
                if "crop" in params
                else torch.full_like(params["flip"], pad, dtype=torch.long)
            )
            if "flip" in params:  # the mirrored matrices follow the 2p+1 plain ones in the table
                col_index = col_index + params["flip"].long() * (2 * pad + 1)
            cols = self._col_table.index_select(0, col_index)
        rows = (
            rows[:, None] if rows.ndim == 3 else rows
        )  # [(b, 1,) H', H]: the same for every channel
        cols_t = (cols[:, None] if cols.ndim == 3 else cols).transpose(-1, -2)  # [(b, 1,) W, W']
        (h, w), (h_out, w_out) = x.shape[-2:], self.out_size
        if (
            h_out * h * w + h_out * w * w_out <= h * w * w_out + h_out * h * w_out
        ):  # the cheaper order
            return torch.matmul(torch.matmul(rows, x), cols_t)
        return torch.matmul(rows, torch.matmul(x, cols_t))


def eval_batch_size(batch_size: int) -> int:
    """The batch of evaluation loaders for a training batch of `batch_size`."""
    return max(batch_size, EVAL_BATCH_MIN)


class Loaders(NamedTuple):
    train: Loader | None
    val: Loader | None
    test: Loader | None


def make_loaders(
    train: Dataset | None = None,
    val: Dataset | None = None,
    test: Dataset | None = None,
    *,
    batch_size: int,
    augment: Augment | None = None,
    seed: int = 0,
    drop_last: bool = False,
    epoch_sizes: Sequence[int] | None = None,
    eval_resize: int | None = None,
    eval_crop: int | None = None,
    **common,
) -> Loaders:
    """The loaders of a run: `train` shuffled and augmented (dropping its last, smaller batch when
    `drop_last`; at `epoch_sizes` when given: progressive resizing), `val` and `test` in order at
    `eval_batch_size(batch_size)`. `common` (resize, normalize, device, channels_last, rank,
    world_size) is what they all share. `val` and `test` are resized to `eval_resize` on their
    shorter side (default: `resize`), then centre-cropped to `eval_crop` when given."""
    eval_batch = eval_batch_size(batch_size)
    evaluation = dict(common)
    if eval_resize is not None:
        height, width = next(d for d in (train, val, test) if d is not None).images.shape[2:]
        evaluation["resize"] = shorter_side(eval_resize, height, width)
    evaluation["crop"] = eval_crop
    training = dict(augment=augment, seed=seed, drop_last=drop_last, epoch_sizes=epoch_sizes)
    return loaders_of(
        Loader, (train, val, test), (batch_size, eval_batch), {**training, **common}, evaluation
    )


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
