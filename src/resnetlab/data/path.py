"""The data path of a run, chosen here: held in memory (data/loader.py) or streamed from disk
(data/stream.py). `DataSettings` is what the choice needs (the training configuration's data
fields, read by name, so data/ never imports the trainer); from it come the splits
(`load_splits`), the normalisation, the evaluation view and the loaders (`make_data_loaders`),
whichever path the data takes:

    settings = DataSettings.of(cfg)
    splits = load_splits(settings)
    loaders = make_data_loaders(settings, splits, normalization(settings, splits), device=device)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from resnetlab.data.augment import Augment
from resnetlab.data.batching import Loaders
from resnetlab.data.datasets import (
    Dataset,
    get_dataset_info,
    load_dataset,
    split_dataset,
)
from resnetlab.data.eval_view import EvalView, default_view
from resnetlab.data.loader import Loader, eval_batch_size, make_loaders
from resnetlab.data.mixing import MixedLoader
from resnetlab.data.order import DEFAULT_WINDOW
from resnetlab.data.shards import open_stream
from resnetlab.data.stream import StreamLoader, make_stream_loaders
from resnetlab.errors import UsageError

Norm = tuple[list[float], list[float]]


class Splits(NamedTuple):
    train: (
        Dataset  # or, with streamed data, StreamSplit (data/shards.py): the same questions answered
    )
    val: Dataset | None
    test: Dataset


@dataclass(frozen=True)
class DataSettings:
    """The settings that choose and shape the data path; each field is named as the training
    configuration's setting (train/config.py) it comes from, so `of(cfg)` reads them by name."""

    data: str = "fashion-mnist"
    data_dir: str | None = None
    streamed: bool = False  # the config's --stream, or shards: data
    subset: int | None = None
    val_split: int = 0
    seed: int = 0
    normalize: bool = False
    resize: int | None = None
    eval_resize: int | None = None
    eval_crop: int | None = None
    batch_size: int = 256
    workers: int = 2
    cache: str | None = None
    cache_size: str = "20G"
    shard_order: str = "random"
    shard_window: int = DEFAULT_WINDOW
    mixup: float = 0.0
    cutmix: float = 0.0
    # the augmentations (data/augment.py; Augment.of reads them from the same configuration)
    augment: Augment = Augment()
    random_resized_crop: bool = False

    @classmethod
    def of(cls, config) -> DataSettings:
        """The settings of `config` (a TrainConfig, or any object with these attributes)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "augment"]
        values = {name: getattr(config, name) for name in names}
        return cls(**values, augment=Augment.of(config, streamed=values["streamed"]))


def load_splits(
    settings: DataSettings,
    say: Callable[[str], None] | None = None,
    share: tuple[int, int] = (0, 1),
) -> Splits:
    """(train, val or None, test) datasets as the settings ask: subset, then validation split
    (see `val_examples`: under --subset it shrinks to fit, and `say` hears so). `share`: the
    shards this process checks, of streamed data (shards.open_shards)."""
    s = settings
    # --subset: a seeded random subset of each split (smoke tests, quick looks)
    if s.streamed:  # listed and checked, not read: the workers read while training
        remote = {"cache": s.cache, "cache_size": s.cache_size}  # for shards:URL
        train_set = open_stream(s.data, True, share, **remote)
        test_set = open_stream(s.data, False, share, **remote)
        if s.subset is not None:
            train_set = train_set.take(min(s.subset, len(train_set)), seed=s.seed)
            test_set = test_set.take(min(s.subset, len(test_set)), seed=s.seed)
    else:
        train_set = load_dataset(s.data, True, s.data_dir, subset=s.subset, seed=s.seed)
        test_set = load_dataset(s.data, False, s.data_dir, subset=s.subset, seed=s.seed)
    val_set = None
    held = val_examples(s, len(train_set))
    if held != s.val_split and say is not None:
        say(
            f"--val-split {s.val_split} is more than a subset of {len(train_set)} leaves: "
            f"{held} held out instead"
        )
    if held:
        train_set, val_set = split_dataset(train_set, held, seed=s.seed)
    splits = Splits(train_set, val_set, test_set)
    if s.streamed:  # the test images a run's report draws, shown as the run evaluates them
        splits = splits._replace(test=dataclasses.replace(test_set, view=stream_view(s, splits)))
    return splits


def val_examples(settings: DataSettings, train_examples: int) -> int:
    """How many of `train_examples` training examples are held out for validation: --val-split,
    except under --subset, where a split of more than half the subset's training examples (a
    preset's 5,000 on a small subset) shrinks to a tenth of them (at least 1); a split that fits
    is kept as given. Without --subset a split that leaves no training data is refused."""
    held = settings.val_split
    if held and settings.subset is not None and held > train_examples // 2:
        held = max(1, train_examples // 10)
    if held and held >= train_examples:
        raise UsageError(
            f"val_split (--val-split) {held} leaves no training data ({train_examples} examples); "
            "pass a smaller one, or 0"
        )
    return held


def normalization(settings: DataSettings, splits: Splits | None = None) -> Norm | None:
    """(mean, std) per channel of the dataset, or None when the settings do not normalise;
    streamed data's are its manifest's (or measured on a sample of an image folder)."""
    if not settings.normalize:
        return None
    if settings.streamed and splits is not None:
        return list(splits.train.mean), list(splits.train.std)
    info = get_dataset_info(settings.data)
    return list(info.mean), list(info.std)


def stream_view(settings: DataSettings, splits: Splits) -> EvalView:
    """The evaluation view of a streamed run (what make_stream_loaders evaluates through)."""
    s = settings
    return default_view(
        s.resize or splits.train.side, s.eval_resize, s.eval_crop, s.random_resized_crop
    )


def whitening_images(
    settings: DataSettings, train: Dataset, count: int, norm: Norm | None
) -> Iterator[torch.Tensor]:
    """The first `count` training images as the model sees them (resized, normalized by `norm`;
    not augmented), in batches, on the CPU (streamed data: their evaluation views at the
    training size, decoded by the workers)."""
    first = train.subset(range(min(count, len(train))))
    if settings.streamed:
        side = settings.resize or train.side
        view = EvalView(side, side)
        loader = StreamLoader(
            first, 500, shuffle=False, view=view, normalize=norm, workers=settings.workers
        )
        return (x for x, _ in loader)
    loader = Loader(first, 500, shuffle=False, resize=settings.resize, normalize=norm)
    return (x for x, _ in loader)


def make_data_loaders(
    settings: DataSettings,
    splits: Splits,
    norm: Norm | None,
    *,
    device: torch.device,
    channels_last: bool = False,
    drop_last: bool = False,
    epoch_sizes: Sequence[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Loaders:
    """The train, val and test loaders: this process's share of each batch, on the device, held
    in memory or streamed as the settings say, with Mixup/CutMix on the training batches.
    `drop_last`: the training loader drops its last, smaller batch (a compiled or captured
    step takes one shape); `epoch_sizes`: each epoch's training side (progressive resizing)."""
    s = settings
    common = dict(
        batch_size=s.batch_size,
        eval_resize=s.eval_resize,
        eval_crop=s.eval_crop,
        seed=s.seed,
        drop_last=drop_last,
        epoch_sizes=epoch_sizes,
        normalize=norm,
        device=device,
        channels_last=channels_last,
        rank=rank,
        world_size=world_size,
        augment=s.augment,
    )
    if s.streamed:  # workers decode, the same batches per process (data/stream.py)
        loaders = make_stream_loaders(
            *splits,
            eval_batch=eval_batch_size(s.batch_size),
            size=s.resize,
            workers=s.workers,
            shard_order=s.shard_order,
            shard_window=s.shard_window,
            **common,
        )
    else:
        # several processes keep the last batch too: Loader's plan splits it unevenly (each rank
        # at least one example; a last batch of fewer examples than processes is dropped)
        loaders = make_loaders(*splits, resize=s.resize, **common)
    if len(loaders.train) == 0:
        raise UsageError(
            f"{len(splits.train)} training examples make no full batch of {s.batch_size}; lower --batch-size"
        )
    return _mixed(loaders, s, len(splits.train.classes))


def _mixed(loaders: Loaders, settings: DataSettings, num_classes: int) -> Loaders:
    """Mixup/CutMix on the training batches, outside the step (a captured step replays as is)."""
    if not (settings.mixup or settings.cutmix):
        return loaders
    mixed = MixedLoader(
        loaders.train,
        mixup=settings.mixup,
        cutmix=settings.cutmix,
        num_classes=num_classes,
        seed=settings.seed,
    )
    return loaders._replace(train=mixed)
