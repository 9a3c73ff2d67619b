"""The streaming loader: batches decoded in DataLoader worker processes from a split that stays
on disk (data/shards.py), with the interface of the in-memory Loader (iteration yielding float
images and labels on the device, set_epoch, len, loss_weight, num_examples), so the engine and
everything above it do not know which one they have.

Determinism: epoch e's order is the permutation of (seed, e) and each sample's crop, flip and
`extra_transform` draw from a generator seeded by (seed, e, sample index), so a batch is the
same whatever the number of workers and whichever worker makes it; resuming at an epoch boundary
replays exactly, and so does resuming inside an epoch (after Ctrl-C): `skip_next` passes over
the batches done without reading them. Batches are split across processes as the in-memory
Loader splits them (data/batching.py, both loaders' base): each process reads a disjoint share
of every epoch, evaluation sees every example once, without padding; the global batches do not
depend on the number of processes, so a run resumes with another one (train/checkpoint.py:
elastic resume).

Faults: a training image that does not decode is replaced in its batch by another sample of
the epoch, drawn from (seed, epoch, index), so every batch keeps its size (a captured CUDA step
takes one shape); an evaluation image that does not decode is left out. Either way its index is
recorded (`bad_indices`, per pass). A file that cannot be read, or a worker that dies, ends the
iteration with one DataError line.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, default_collate

from resnetlab.data import decode
from resnetlab.data.augment import (
    Augment,
    ImageOps,
    alternate_flip,
    check_augment,
    draw_erasing,
    image_ops,
    sample_generator,
    stream_seed,
)
from resnetlab.data.batching import PlannedLoader, loaders_of
from resnetlab.data.eval_view import EvalView, default_view
from resnetlab.data.order import DEFAULT_WINDOW, epoch_order
from resnetlab.data.shards import StreamSplit
from resnetlab.errors import DataError, UsageError

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
IMAGENET_AUGMENT = Augment(flip=True, resized_crop=True)  # StreamLoader's training default
REPLACEMENT_TRIES = 8  # other samples tried in place of a training image that does not decode


class StreamDataset(torch.utils.data.Dataset):
    """What a worker does for one sample: read, decode, crop and flip as `augment` says (train)
    or show its evaluation `view` (eval), then `extra_transform(image uint8 [C, H, W], generator)`
    (train only). Indexed by (epoch, sample index, side); returns (image or None, label, error
    or None)."""

    def __init__(
        self,
        split: StreamSplit,
        *,
        train: bool,
        seed: int = 0,
        view: EvalView | None = None,
        extra_transform: Transform | None = None,
        augment: Augment = IMAGENET_AUGMENT,
    ) -> None:
        self.split, self.train, self.seed, self.augment = split, train, seed, augment
        self.view, self.extra_transform = view, extra_transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int, int]):
        """(image or None, label, read error or None, the index of the sample that did not
        decode, or None)."""
        epoch, i, side = key
        label = int(self.split.labels[i])
        try:
            data = self.split.read(i)
        except DataError as e:  # a file gone: reported by the main process as one line
            return None, label, str(e), None
        try:
            if self.train:
                x = self._train_view(data, epoch, i, side)
            else:
                x = (self.view or default_view(side)).read(data, self.split.channels)
        except decode.BadImage:
            return self._in_place_of(epoch, i, side, label)
        return x, label, None, None

    def _in_place_of(self, epoch: int, i: int, side: int, label: int):
        """What a batch gets for sample i, which did not decode: in evaluation nothing (left out;
        its index reported); in training another sample of the epoch (`replacements`), so every
        batch keeps its size (a captured CUDA step takes one shape)."""
        if not self.train:
            return None, label, None, i
        for j, gen in replacements(self.seed, epoch, i, len(self.split)):
            try:
                x = self._train_view(self.split.read(j), epoch, j, side, gen)
            except DataError as e:
                return None, label, str(e), i
            except decode.BadImage:
                continue
            return x, int(self.split.labels[j]), None, i
        return None, label, None, i

    def _train_view(
        self, data: bytes, epoch: int, i: int, side: int, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        aug = self.augment
        if aug.alternate_flip:
            flip = alternate_flip(self.seed, epoch, i)
        else:
            flip = None if aug.flip else False
        return decode.train_view(
            data,
            self.split.channels,
            side,
            sample_generator(self.seed, epoch, i) if gen is None else gen,
            self.extra_transform,
            resized_crop=aug.resized_crop,
            crop_padding=aug.crop_padding,
            flip=flip,
        )


def replacements(
    seed: int, epoch: int, index: int, n: int
) -> Iterator[tuple[int, torch.Generator]]:
    """The samples tried in turn in place of training sample `index` when it does not decode in
    `epoch`, each with the generator of its view: up to REPLACEMENT_TRIES other samples of the
    epoch, a pure function of (seed, epoch, index) like everything else in a batch. The view's
    generator is not the replacement's own, so the epoch does not hold the same view twice."""
    if n < 2:
        return
    gen = torch.Generator().manual_seed(stream_seed(seed, epoch, f"replace/{index}"))
    for _ in range(REPLACEMENT_TRIES):
        j = int(torch.randint(n - 1, (1,), generator=gen))
        yield j + (j >= index), gen


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, list[int], str | None]:
    """(images uint8 [b, C, H, W], labels int64 [b], the indices of the samples that did not
    decode (left out, or replaced in training), the first read error)."""
    good = [(x, y) for x, y, _, _ in samples if x is not None]
    error = next((e for _, _, e, _ in samples if e is not None), None)
    bad = [i for _, _, _, i in samples if i is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad, error
    xs, ys = zip(*good)
    # default_collate stacks straight into shared memory inside a worker: no copy on the way back
    return default_collate(list(xs)), torch.tensor(ys, dtype=torch.int64), bad, error


class _Batches:
    """The DataLoader's batch sampler: this epoch's batches of keys, swapped in by the loader,
    so persistent workers serve every epoch."""

    def __init__(self) -> None:
        self.batches: Iterator[list[tuple[int, int, int]]] = iter(())
        self.count = 0

    def __iter__(self):
        return self.batches

    def __len__(self) -> int:
        return self.count


class StreamLoader(PlannedLoader):
    """Batches (x float32 [b, C, side, side] on `device`, y int64 [b]) of a StreamSplit.

    `batch_size` is the global batch, split across processes, weighted and normalised as
    PlannedLoader (data/batching.py) says, as the in-memory Loader's.
    Training (`shuffle=True`) augments as `augment` says (default: random-resized crops of `size`
    with flips; its `erasing` boxes are drawn per global batch from (seed, epoch, batch) and
    applied on the device after normalisation, the rest in the workers); evaluation shows each
    image through `view` (data/eval_view.py; default: default_view(size), Resize(round(size /
    0.875)) + CenterCrop(size)), its batches of side `view.crop`.
    `workers` DataLoader processes decode (0: in this process); batches are pinned when the
    device is CUDA and copied without blocking; normalisation happens on the device.
    `bad_indices`: the dataset indices of the images of the last pass that did not decode
    (replaced in training, left out in evaluation), in the order met; `skipped` their number.
    """

    def __init__(
        self,
        split: StreamSplit,
        batch_size: int,
        *,
        shuffle: bool,
        size: int | None = None,
        view: EvalView | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 2,
        epoch_sizes: Sequence[int] | None = None,
        extra_transform: Transform | None = None,
        prefetch: int = 4,
        augment: Augment | None = None,
        shard_order: str = "random",
        shard_window: int = DEFAULT_WINDOW,
    ) -> None:
        self.augment = IMAGENET_AUGMENT if augment is None else check_augment(augment, shuffle)
        ops = tuple(image_ops(self.augment))
        if ops and extra_transform is None:  # in the workers, after the crop
            extra_transform = ImageOps(self.augment, ops)
        if not isinstance(workers, int) or workers < 0:
            raise UsageError(f"workers must be a whole number >= 0, not {workers!r}")
        super().__init__(split, batch_size, shuffle, drop_last, rank, world_size, epoch_sizes)
        self.seed, self.device, self.channels_last = seed, torch.device(device), channels_last
        self._set_normalization(normalize, split.channels)
        self.side = size or split.side
        self.view = None if shuffle else view or default_view(self.side)
        if self.view is not None:  # evaluation's batches are the view's crops
            self.side = self.view.crop
        self.out_size = (self.side, self.side)
        self.shard_order, self.shard_window = shard_order, shard_window  # data/order.py
        epoch_order(split.entries[:0, 0], seed, 0, shard_order, shard_window)  # checked now
        self._skip = 0
        self.bad_indices: list[int] = []
        self._sampler = _Batches()
        self._loader = DataLoader(
            StreamDataset(
                split,
                train=shuffle,
                seed=seed,
                view=self.view,
                extra_transform=extra_transform,
                augment=self.augment,
            ),
            batch_sampler=self._sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            # training keeps its workers between epochs; evaluation's end with each pass
            persistent_workers=workers > 0 and shuffle,
            prefetch_factor=prefetch if workers > 0 else None,
        )

    @property
    def skipped(self) -> int:
        """Images of the last pass that did not decode (this process's share)."""
        return len(self.bad_indices)

    def _use_size(self, out_size: tuple[int, int]) -> None:
        """Read the next epochs' images at `out_size` (square: (side, side))."""
        self.side, self.out_size = out_size[0], out_size

    def epoch_keys(self) -> Iterator[list[tuple[int, int, int]]]:
        """This process's batches of (epoch, sample index, side) for the current epoch, made as
        the DataLoader asks for them: a list of the whole epoch's keys would cost ~150 MB on
        ImageNet; the order is one int64 tensor."""
        n, e, side = len(self.dataset), self.epoch, self.side
        if self.shuffle:
            files = self.dataset.entries[:, 0]
            order = epoch_order(files, self.seed, e, self.shard_order, self.shard_window)
        else:
            order = torch.arange(n)
        for start, _, s0, s1 in self._plan:
            yield [(e, i, side) for i in order[start + s0 : start + s1].tolist()]

    def skip_next(self, n: int) -> None:
        """The next pass yields its first `n` batches as (None, None), unread: training resumed
        inside an epoch passes over the batches it had done (train/engine.py), and every later
        batch is the same without them (each sample's generator is its own). A wrapper that
        draws per batch (data/mixing.py) still makes the skipped batches' draws, at `out_size`."""
        self._skip = n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip, self._skip = min(self._skip, len(self._plan)), 0
        for _ in range(skip):
            yield None, None
        for i, (raw, y) in enumerate(self.host_batches(skip), start=skip):
            boxes = self._erasing(i, len(y)) if self.shuffle and self.augment.erasing else None
            x = self._finish(self._to_float(raw.to(self.device, non_blocking=True)), boxes)
            yield x, y.to(self.device, non_blocking=True)

    def _erasing(self, i: int, n: int) -> torch.Tensor:
        """Batch i's random-erasing boxes: drawn for the whole global batch from (seed, epoch,
        i), this process's share taken (its first n when images were left out)."""
        _, m, s0, s1 = self._plan[i]
        gen = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, f"erase/{i}"))
        boxes = draw_erasing(gen, m, self.side, self.side, self.augment.erasing)
        return boxes[:, s0:s1][:, :n].to(self.device)

    def host_batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches from batch `start` on, as the workers make them: uint8
        [b, C, side, side] and labels, on the host (pinned when the device is CUDA)."""
        self._sampler.batches = self.dataset.reading(
            itertools.islice(self.epoch_keys(), start, None)
        )
        self._sampler.count = len(self._plan) - start
        self.bad_indices = []
        batches = iter(self._loader)
        for i in range(start, len(self._plan)):
            try:
                raw, y, bad, error = next(batches)
            except StopIteration:
                break
            except RuntimeError as e:  # a worker killed (out of memory, a signal): one line
                raise DataError(
                    f"a data-loading worker failed ({_first_line(e)}); the last completed epoch's "
                    "checkpoint is intact: resume with --resume (fewer --workers use less memory)"
                ) from None
            if error is not None:
                raise DataError(error)
            self.bad_indices += bad
            if not len(y):
                raise DataError(
                    f"every image of batch {i + 1} failed to decode; check the data ({self.dataset.name})"
                )
            yield raw, y


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def make_stream_loaders(
    train: StreamSplit | None,
    val: StreamSplit | None,
    test: StreamSplit | None,
    *,
    batch_size: int,
    eval_batch: int,
    size: int | None = None,
    eval_resize: int | None = None,
    eval_crop: int | None = None,
    **common,
):
    """The streamed train, val and test loaders of a run (a data.Loaders triple); `common`
    (normalize, seed, device, channels_last, rank, world_size, workers) is what they share."""
    seed = common.pop("seed", 0)
    drop_last = common.pop("drop_last", False)
    epoch_sizes = common.pop("epoch_sizes", None)
    extra = common.pop("extra_transform", None)
    augment = common.pop("augment", None) or IMAGENET_AUGMENT
    order = {k: common.pop(k) for k in ("shard_order", "shard_window") if k in common}
    side = size or (train or test).side
    view = default_view(side, eval_resize, eval_crop, augment.resized_crop)

    training = dict(
        size=side,
        seed=seed,
        drop_last=drop_last,
        epoch_sizes=epoch_sizes,
        extra_transform=extra,
        augment=augment,
    )
    return loaders_of(
        StreamLoader,
        (train, val, test),
        (batch_size, eval_batch),
        {**training, **order, **common},
        {"view": view, **common},
    )


__all__ = [
    "IMAGENET_AUGMENT",
    "StreamDataset",
    "StreamLoader",
    "alternate_flip",
    "collate",
    "make_stream_loaders",
    "sample_generator",
]
