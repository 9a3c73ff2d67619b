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
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from resnetlab.data.augment import Augment, check_augment, draw_erasing, image_ops, stream_seed
from resnetlab.data.batching import Loaders, PlannedLoader, loaders_of
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


class Loader(PlannedLoader):
    """Batches (x float32 [b, C, H', W'] on `device`, y int64 [b]) of a dataset.

    `batch_size` is the global batch, split across processes, weighted and normalised as
    PlannedLoader (data/batching.py) says. Training (`shuffle=True`): epoch e's order is the
    permutation of generator (seed, e); augmentation parameters are drawn for the whole global
    batch, then sliced, so w ranks together see exactly what one rank sees. Iterating twice gives
    the same batches.
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
        sizes = _check_resize(resize)
        _check_crop(crop, sizes or tuple(dataset.images.shape[2:]))
        augment = check_augment(augment, shuffle)
        if augment.resized_crop:
            raise UsageError(
                "random-resized crops need the full-resolution images that streamed data keeps: "
                "add --stream (or pack the set with `resnetlab data pack`)"
            )
        channels, height, width = dataset.images.shape[1:]
        super().__init__(dataset, batch_size, shuffle, drop_last, rank, world_size, epoch_sizes)
        self.seed, self.device, self.channels_last = seed, torch.device(device), channels_last
        self._set_normalization(normalize, channels)
        self.augment, self.crop = augment, crop
        self._image_ops = image_ops(augment)  # data/augment.py: per-image ops, on the host
        self._geometries: dict[tuple[int, int], tuple] = {}
        self._use_size(tuple(sizes) if resize else (height, width))
        self._images, self._labels = self._place(dataset)

    def _set_normalization(
        self, normalize: tuple[Sequence[float], Sequence[float]] | None, channels: int
    ) -> tuple[Sequence[float], Sequence[float]]:
        mean, std = super()._set_normalization(normalize, channels)
        # One divisor serves all channels: resampling folds it into its weights.
        self._folded = len(set(std)) == 1
        self._row_divisor = 255 * std[0] if self._folded else 1.0
        return mean, std

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
            x = self._to_float(raw)
        return self._finish(x, params.get("erase"))

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
