"""data/stream.py without training runs or worker processes (fast enough for mutation testing):
one packed set of 10 training and 5 test images of 8 x 8 px, built once, read with workers=0.
What one sample is (its seeded training view, its evaluation view, its replacement when it does
not decode), how samples are collated, and what StreamLoader promises: each epoch's order and
batches, each process's share and loss weight, skipping inside an epoch, normalisation, the
images that did not decode counted per pass, and the one-line errors. The end-to-end tests with
worker processes and larger images are in test_stream.py."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from tiny_packed import write_tiny_folder

from resnetlab.data import Dataset, Loader, decode
from resnetlab.data.augment import (
    Augment,
    ImageOps,
    alternate_flip,
    draw_erasing,
    erase,
    image_ops,
    sample_generator,
    stream_seed,
)
from resnetlab.data.eval_view import EvalView, default_view
from resnetlab.data.order import epoch_order
from resnetlab.data.shards import StreamSplit, open_shards, pack_folder
from resnetlab.data.stream import (
    IMAGENET_AUGMENT,
    REPLACEMENT_TRIES,
    StreamDataset,
    StreamLoader,
    collate,
    make_stream_loaders,
    replacements,
)
from resnetlab.errors import DataError, UsageError


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    pack_folder(write_tiny_folder(root / "photos"), root / "packed", shard_bytes=4000)
    return root / "packed"


@pytest.fixture(scope="module")
def train_set(packed) -> StreamSplit:
    return open_shards(packed, True, verify=False)  # the shards' checks: test_shards.py


@pytest.fixture(scope="module")
def eval_set(packed) -> StreamSplit:
    return open_shards(packed, False, verify=False)


def faulty(split: StreamSplit, bad=(), gone=()) -> StreamSplit:
    """A copy of `split` whose samples in `bad` do not decode and whose samples in `gone` cannot
    be read."""
    copy = dataclasses.replace(split)

    def read(i, real=split.read):
        if i in gone:
            raise DataError(f"cannot read sample {i}")
        return b"not an image" if i in bad else real(i)

    copy.read = read
    return copy


def order_of(loader: StreamLoader) -> list[int]:
    return [i for keys in loader.epoch_keys() for _, i, _ in keys]


# --- one sample ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "augment, flip",
    [
        (IMAGENET_AUGMENT, lambda epoch, i: None),  # random, from the sample's generator
        (Augment(crop_padding=2), lambda epoch, i: False),
        (Augment(crop_padding=1, flip=True), lambda epoch, i: None),
        (Augment(flip=True, alternate_flip=True), lambda epoch, i: alternate_flip(3, epoch, i)),
    ],
    ids=["resized-crop", "padded-crop", "padded-crop-flip", "alternate-flip"],
)
def test_a_training_sample_is_its_seeded_view(train_set, augment, flip):
    ds = StreamDataset(train_set, train=True, seed=3, augment=augment)
    assert len(ds) == len(train_set) == 10
    for epoch in (0, 1):
        for i in range(len(train_set)):
            x, label, error, bad = ds[(epoch, i, 6)]
            want = decode.train_view(
                train_set.read(i),
                3,
                6,
                sample_generator(3, epoch, i),
                resized_crop=augment.resized_crop,
                crop_padding=augment.crop_padding,
                flip=flip(epoch, i),
            )
            assert x.shape == (3, 6, 6) and torch.equal(x, want), (epoch, i)
            assert label == int(train_set.labels[i]) and type(label) is int
            assert error is None and bad is None


def test_a_training_sample_s_defaults_and_its_extra_transform(train_set):
    assert IMAGENET_AUGMENT == Augment(flip=True, resized_crop=True)
    default = StreamDataset(train_set, train=True)
    imagenet = StreamDataset(train_set, train=True, seed=0, augment=IMAGENET_AUGMENT)
    assert all(torch.equal(default[(0, i, 8)][0], imagenet[(0, i, 8)][0]) for i in range(10))

    def noisy(image, gen):  # draws from the generator the view was cut with
        return image // 2 + torch.randint(0, 2, image.shape, generator=gen, dtype=torch.uint8)

    ds = StreamDataset(train_set, train=True, seed=1, extra_transform=noisy)
    for i in range(len(train_set)):
        want = decode.train_view(train_set.read(i), 3, 8, sample_generator(1, 0, i), noisy)
        assert torch.equal(ds[(0, i, 8)][0], want)


def test_an_evaluation_sample_is_its_view_and_nothing_else(eval_set):
    never = lambda image, gen: pytest.fail("evaluation ran the training transform")  # noqa: E731
    plain = StreamDataset(eval_set, train=False, extra_transform=never)
    view = EvalView(10, 6)
    cropped = StreamDataset(eval_set, train=False, view=view)
    for i in range(len(eval_set)):
        data = eval_set.read(i)
        x, label, error, bad = plain[(3, i, 7)]
        assert x.shape == (3, 7, 7) and torch.equal(x, default_view(7).read(data, 3))
        assert label == int(eval_set.labels[i]) and error is None and bad is None
        assert torch.equal(cropped[(0, i, 7)][0], view.read(data, 3))


def test_replacements_are_other_samples_drawn_from_seed_epoch_and_index():
    assert list(replacements(0, 0, 0, 1)) == [] and list(replacements(0, 0, 0, 0)) == []
    assert [j for j, _ in replacements(5, 2, 0, 2)] == [1] * REPLACEMENT_TRIES
    assert [j for j, _ in replacements(5, 2, 1, 2)] == [0] * REPLACEMENT_TRIES
    for index in range(6):  # never the sample itself; every other one can come
        drawn = [j for epoch in range(10) for j, _ in replacements(0, epoch, index, 6)]
        assert index not in drawn and set(drawn) == set(range(6)) - {index}
    first = [j for j, _ in replacements(0, 0, 3, 1000)]
    assert len(first) == REPLACEMENT_TRIES and len(set(first)) > 1
    assert first == [j for j, _ in replacements(0, 0, 3, 1000)]  # a pure function
    for seed, epoch, index in ((1, 0, 3), (0, 1, 3), (0, 0, 4)):
        assert [j for j, _ in replacements(seed, epoch, index, 1000)] != first


def first_replacement(split: StreamSplit, seed: int, epoch: int, index: int, side: int):
    """(j, view) of the first of `replacements` that decodes, cut with the generator it came with."""
    for j, gen in replacements(seed, epoch, index, len(split)):
        try:
            return j, decode.train_view(split.read(j), 3, side, gen)
        except decode.BadImage:
            continue
    return None, None


def test_a_training_sample_that_does_not_decode_is_replaced_by_a_drawn_other(train_set):
    split = faulty(train_set, bad={4})
    ds = StreamDataset(split, train=True, seed=2)
    x, label, error, bad = ds[(1, 4, 8)]
    j, want = first_replacement(split, 2, 1, 4, 8)
    assert j != 4 and torch.equal(x, want)
    assert label == int(split.labels[j]) and error is None and bad == 4
    assert not torch.equal(x, ds[(1, j, 8)][0])  # not the replacement's own view
    # a replacement that does not decode either is passed over
    tried = [j for j, _ in replacements(2, 1, 4, len(split))]
    worse = faulty(train_set, bad={4, tried[0]})
    x, label, error, bad = StreamDataset(worse, train=True, seed=2)[(1, 4, 8)]
    j, want = first_replacement(worse, 2, 1, 4, 8)
    assert j not in (4, tried[0]) and torch.equal(x, want)
    assert label == int(split.labels[j]) and error is None and bad == 4
    # nothing in place when every one tried fails (the batch is one short), its index reported
    hopeless = StreamDataset(faulty(train_set, bad=set(range(10))), train=True, seed=2)
    assert hopeless[(1, 4, 8)] == (None, int(split.labels[4]), None, 4)


def test_a_replacement_shows_its_own_alternating_flip_of_the_epoch(train_set):
    augment = Augment(flip=True, alternate_flip=True)
    for epoch in (0, 1):
        for index in range(len(train_set)):
            split = faulty(train_set, bad={index})
            ds = StreamDataset(split, train=True, seed=4, augment=augment)
            x, _, _, bad = ds[(epoch, index, 8)]
            j, gen = next(replacements(4, epoch, index, len(split)))
            flip = alternate_flip(4, epoch, j)
            want = decode.train_view(split.read(j), 3, 8, gen, resized_crop=False, flip=flip)
            assert torch.equal(x, want) and bad == index


def test_a_sample_whose_file_cannot_be_read_is_an_error_and_not_replaced(train_set):
    label = int(train_set.labels[4])
    gone = StreamDataset(faulty(train_set, gone={4}), train=True)
    assert gone[(0, 4, 8)] == (None, label, "cannot read sample 4", None)
    first = next(replacements(0, 0, 4, len(train_set)))[0]
    lost = StreamDataset(faulty(train_set, bad={4}, gone={first}), train=True)
    assert lost[(0, 4, 8)] == (None, label, f"cannot read sample {first}", 4)


def test_an_evaluation_sample_that_does_not_decode_is_left_out(eval_set):
    ds = StreamDataset(faulty(eval_set, bad={2}), train=False)
    assert ds[(0, 2, 8)] == (None, int(eval_set.labels[2]), None, 2)


def test_collate_stacks_the_good_samples_and_passes_on_the_bad_and_the_first_error():
    a, b = torch.zeros(3, 2, 2, dtype=torch.uint8), torch.ones(3, 2, 2, dtype=torch.uint8)
    samples = [
        (a, 2, None, None),
        (None, 1, None, 7),
        (b, 0, None, 3),
        (None, 1, "first", None),
        (None, 0, "second", None),
    ]
    x, y, bad, error = collate(samples)
    assert torch.equal(x, torch.stack([a, b])) and y.tolist() == [2, 0] and y.dtype == torch.int64
    assert bad == [7, 3] and error == "first"
    assert collate([(a, 1, None, None)])[2:] == ([], None)
    x, y, bad, error = collate([(None, 1, None, 5)])
    assert x.shape == (0,) and x.dtype == torch.uint8 and y.shape == (0,)
    assert y.dtype == torch.int64 and bad == [5] and error is None


# --- the loader ---------------------------------------------------------------------------------


def test_an_epoch_is_its_seeded_order_in_batches(train_set):
    loader = StreamLoader(train_set, 4, shuffle=True, size=6, seed=7, workers=0)
    loader.set_epoch(2)
    order = epoch_order(train_set.entries[:, 0], 7, 2).tolist()
    keys = list(loader.epoch_keys())
    assert keys == [[(2, i, 6) for i in order[s : s + 4]] for s in (0, 4, 8)]
    assert len(loader) == 3 and loader.num_examples == 10
    ds = StreamDataset(train_set, train=True, seed=7)
    batches = list(loader.host_batches())
    assert [len(y) for _, y in batches] == [4, 4, 2]
    for batch_keys, (raw, y) in zip(keys, batches, strict=True):
        assert torch.equal(raw, torch.stack([ds[k][0] for k in batch_keys]))
        assert y.tolist() == [int(train_set.labels[i]) for _, i, _ in batch_keys]
    loader.set_epoch(3)
    assert order_of(loader) != order and sorted(order_of(loader)) == list(range(10))
    short = StreamLoader(train_set, 4, shuffle=True, seed=7, workers=0, drop_last=True)
    short.set_epoch(2)
    assert [len(y) for _, y in short] == [4, 4] and order_of(short) == order[:8]


def test_evaluation_reads_each_process_s_block_in_order(eval_set):
    labels = eval_set.labels.tolist()
    for rank, blocks in ((0, [[0, 1]]), (1, [[2, 3], [4]])):
        loader = StreamLoader(eval_set, 4, shuffle=False, rank=rank, world_size=2, workers=0)
        assert [[i for _, i, _ in keys] for keys in loader.epoch_keys()] == blocks
        got = [y.tolist() for _, y in loader]
        assert got == [[labels[i] for i in block] for block in blocks]
        assert loader.num_examples == sum(map(len, blocks))
        assert [loader.loss_weight(i) for i in range(len(blocks))] == [2.0] * len(blocks)


def test_the_shard_order_and_its_window_reach_the_epoch(train_set):
    files = train_set.entries[:, 0]
    assert len(set(files.tolist())) >= 3  # several shards
    loader = StreamLoader(
        train_set, 4, shuffle=True, workers=0, shard_order="shards", shard_window=1
    )
    loader.set_epoch(1)
    got = order_of(loader)
    assert got == epoch_order(files, 0, 1, "shards", 1).tolist()
    assert got != epoch_order(files, 0, 1).tolist()
    assert got != epoch_order(files, 0, 1, "shards").tolist()  # the default window: all shards
    with pytest.raises(UsageError, match="unknown shard order 'bogus'"):
        StreamLoader(train_set, 4, shuffle=True, workers=0, shard_order="bogus")
    with pytest.raises(UsageError, match="--shard-window must be"):
        StreamLoader(train_set, 4, shuffle=True, workers=0, shard_order="shards", shard_window=0)


def test_processes_share_each_global_batch_and_weigh_their_share(train_set):
    nine = train_set.subset(range(9))  # batches of 6 and 3: the last split 1 + 2
    settings = dict(
        shuffle=True,
        workers=0,
        seed=1,
        augment=Augment(flip=True, erasing=1.0),
        normalize=((0.5,) * 3, (0.25,) * 3),
    )
    one = StreamLoader(nine, 6, **settings)
    ranks = [StreamLoader(nine, 6, rank=r, world_size=2, **settings) for r in (0, 1)]
    whole = list(one.epoch_keys())
    shares = [list(r.epoch_keys()) for r in ranks]
    assert [a + b for a, b in zip(*shares, strict=True)] == whole
    # the same pixels, erasing boxes included: each global batch's boxes are drawn once, shared
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert [ranks[0].loss_weight(i) for i in (0, 1)] == pytest.approx([1.0, 2 / 3])
    assert [ranks[1].loss_weight(i) for i in (0, 1)] == pytest.approx([1.0, 4 / 3])
    assert [one.loss_weight(i) for i in (0, 1)] == [1.0, 1.0]
    assert (ranks[0].num_examples, ranks[1].num_examples, one.num_examples) == (4, 5, 9)
    with pytest.raises(UsageError, match="must divide by the 2 processes"):
        StreamLoader(nine, 5, rank=0, world_size=2, shuffle=True, workers=0)


@pytest.mark.parametrize(
    "augment", [Augment(), Augment(erasing=1.0, flip=True)], ids=["plain", "erasing"]
)
def test_batches_skipped_on_resume_are_not_read_and_the_rest_are_the_same(train_set, augment):
    split = dataclasses.replace(train_set)
    loader = StreamLoader(split, 4, shuffle=True, workers=0, augment=augment, seed=1)
    loader.set_epoch(1)
    whole = [(x.clone(), y.clone()) for x, y in loader]
    read = []
    split.read = lambda i: read.append(i) or train_set.read(i)
    loader.skip_next(2)
    resumed = list(loader)
    assert resumed[:2] == [(None, None)] * 2 and len(resumed) == 3
    assert torch.equal(resumed[2][0], whole[2][0]) and torch.equal(resumed[2][1], whole[2][1])
    assert sorted(read) == sorted(i for _, i, _ in list(loader.epoch_keys())[2])
    read.clear()
    again = list(loader)  # the skip was for one pass
    assert len(read) == 10 and len(again) == 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, whole, strict=True))
    loader.skip_next(5)  # more batches than the epoch holds
    assert list(loader) == [(None, None)] * 3
    batches = loader.host_batches(1)
    next(batches)
    assert len(loader._loader) == len(loader) - 1  # the DataLoader knows how many are left


def test_a_short_batch_is_erased_by_the_first_boxes_of_its_draw(train_set):
    """When every replacement of a training image fails too, its batch is one short: the
    erasing boxes are the first of those drawn for the whole batch, from (seed, epoch, batch)."""
    four, bad = train_set.subset(range(4)), {1, 2, 3}
    seed = next(s for s in range(1000) if all(j in bad for j, _ in replacements(s, 0, 1, 4)))
    settings = dict(shuffle=True, workers=0, seed=seed, normalize=((0.5,) * 3, (0.25,) * 3))
    plain = StreamLoader(faulty(four, bad=bad), 4, augment=Augment(), **settings)
    erased = StreamLoader(faulty(four, bad=bad), 4, augment=Augment(erasing=1.0), **settings)
    (x, y), (e, ye) = next(iter(plain)), next(iter(erased))
    n = len(y)
    assert n < 4 and torch.equal(y, ye) and 1 in erased.bad_indices
    gen = torch.Generator().manual_seed(stream_seed(seed, 0, "erase/0"))
    boxes = draw_erasing(gen, 4, 8, 8, 1.0)[:, :n]
    assert torch.equal(e, erase(x.clone(), boxes)) and not torch.equal(e, x)


def test_images_that_do_not_decode_are_replaced_in_training_and_counted_per_pass(train_set):
    probe = StreamLoader(train_set, 4, shuffle=True, workers=0)
    order = order_of(probe)
    loader = StreamLoader(faulty(train_set, bad={order[6], order[1]}), 4, shuffle=True, workers=0)
    assert loader.skipped == 0 and loader.bad_indices == []
    assert [len(y) for _, y in loader] == [4, 4, 2]  # each batch keeps its size
    assert loader.bad_indices == [order[1], order[6]] and loader.skipped == 2  # as met
    list(loader)
    assert loader.bad_indices == [order[1], order[6]]  # the last pass's, not added up
    loader.skip_next(1)
    list(loader)
    assert loader.bad_indices == [order[6]] and loader.skipped == 1


def test_images_that_do_not_decode_are_left_out_in_evaluation(eval_set):
    loader = StreamLoader(faulty(eval_set, bad={1}), 4, shuffle=False, workers=0)
    got = list(loader)
    assert [len(y) for _, y in got] == [3, 1]
    labels = eval_set.labels.tolist()
    assert torch.cat([y for _, y in got]).tolist() == [labels[i] for i in (0, 2, 3, 4)]
    assert loader.bad_indices == [1] and loader.skipped == 1
    empty = StreamLoader(faulty(eval_set, bad={4}), 4, shuffle=False, workers=0)
    message = f"every image of batch 2 failed to decode; check the data ({eval_set.name})"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        list(empty)
    # batches are counted from the epoch's start when the first ones are passed over
    later = StreamLoader(faulty(eval_set, bad={2, 3}), 2, shuffle=False, workers=0)
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        list(later.host_batches(1))


def test_a_file_that_cannot_be_read_or_a_failed_worker_is_one_line(train_set):
    with pytest.raises(DataError, match="^cannot read sample 3$"):
        list(StreamLoader(faulty(train_set, gone={3}), 4, shuffle=True, workers=0))

    def crash(image, gen):
        raise RuntimeError("\n  DataLoader worker (pid 12) is killed by signal\ntraceback")

    def silent(image, gen):
        raise RuntimeError()

    advice = (
        "; the last completed epoch's checkpoint is intact: resume with --resume "
        "(fewer --workers use less memory)"
    )
    for transform, cause in (
        (crash, "DataLoader worker (pid 12) is killed by signal"),
        (silent, "RuntimeError"),
    ):
        loader = StreamLoader(train_set, 4, shuffle=True, workers=0, extra_transform=transform)
        with pytest.raises(DataError) as e:
            list(loader)
        assert str(e.value) == f"a data-loading worker failed ({cause}){advice}"
        assert e.value.__cause__ is None and e.value.__suppress_context__


def test_batches_are_normalised_and_laid_out_as_asked(train_set):
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.25, 0.5)
    loader = StreamLoader(train_set, 4, shuffle=True, workers=0, normalize=(mean, std))
    raw = [r for r, _ in loader.host_batches()]
    got = list(loader)
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    for r, (x, y) in zip(raw, got, strict=True):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.allclose(x, (r.float() / 255 - m) / s, atol=1e-5)
        assert not x.is_contiguous(memory_format=torch.channels_last)
    plain = next(iter(StreamLoader(train_set, 4, shuffle=True, workers=0)))[0]
    assert torch.allclose(plain, raw[0].float() / 255)  # no normalize: [0, 1]
    last = StreamLoader(
        train_set, 4, shuffle=True, workers=0, normalize=(mean, std), channels_last=True
    )
    x = next(iter(last))[0]
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, got[0][0])
    message = (
        f"normalize needs 3 means and 3 positive stds for {train_set.name}, got [0.5] and [0.2]"
    )
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        StreamLoader(train_set, 4, shuffle=True, workers=0, normalize=((0.5,), (0.2,)))


def test_both_loaders_turn_the_same_pixels_into_the_same_floats(eval_set):
    """One normalisation (data/batching.py): the in-memory Loader given the pixels the streamed
    one read makes bit for bit the same batch, per-channel stds and channels_last included."""
    norm = ((0.2, 0.5, 0.7), (0.3, 0.25, 0.5))
    streamed = StreamLoader(
        eval_set, 5, shuffle=False, workers=0, view=EvalView(8, 8), normalize=norm
    )
    ((raw, labels),) = streamed.host_batches()
    in_memory = Loader(Dataset("same", raw, labels), 5, shuffle=False, normalize=norm)
    for channels_last in (False, True):
        streamed.channels_last = in_memory.channels_last = channels_last
        (x, y), (want, want_y) = next(iter(streamed)), next(iter(in_memory))
        assert torch.equal(x, want) and torch.equal(y, want_y)
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("sizes", [[], [4, 0], [4, 2.5], [True]])
def test_bad_sizes_by_epoch_are_refused_as_the_in_memory_loader_refuses_them(train_set, sizes):
    with pytest.raises(UsageError, match="^sizes by epoch are for training loaders"):
        StreamLoader(train_set, 4, shuffle=True, workers=0, epoch_sizes=sizes)


def test_sizes_by_epoch_are_for_training_only(eval_set):
    with pytest.raises(UsageError, match="^sizes by epoch are for training loaders"):
        StreamLoader(eval_set, 4, shuffle=False, workers=0, epoch_sizes=[4])


def test_the_training_side_and_progressive_sizes(train_set):
    default = StreamLoader(train_set, 4, shuffle=True, workers=0, view=EvalView(8, 5))
    assert default.out_size == (8, 8) and next(iter(default))[0].shape[-2:] == (8, 8)
    fixed = StreamLoader(train_set, 4, shuffle=True, workers=0, size=6)
    fixed.set_epoch(3)
    assert fixed.out_size == (6, 6) and next(iter(fixed))[0].shape[-2:] == (6, 6)
    loader = StreamLoader(train_set, 4, shuffle=True, workers=0, size=6, epoch_sizes=[4, 5])
    for epoch, side in ((0, 4), (1, 5), (7, 5)):  # past the list: its last size
        loader.set_epoch(epoch)
        assert loader.out_size == (side, side)
        assert all(k == (epoch, k[1], side) for k in next(loader.epoch_keys()))
        assert next(iter(loader))[0].shape[-2:] == (side, side)


def test_evaluation_batches_are_the_view_s_crops(eval_set):
    loader = StreamLoader(eval_set, 5, shuffle=False, workers=0, size=6)
    want = torch.stack([default_view(6).read(eval_set.read(i), 3) for i in range(5)])
    x = next(iter(loader))[0]
    assert loader.out_size == (6, 6) and torch.allclose(x, want.float() / 255)
    view = EvalView(8, 5)
    loader = StreamLoader(eval_set, 5, shuffle=False, workers=0, size=6, view=view)
    want = torch.stack([view.read(eval_set.read(i), 3) for i in range(5)])
    x = next(iter(loader))[0]
    assert loader.out_size == (5, 5) and torch.allclose(x, want.float() / 255)


def test_the_augmentation_defaults_and_checks(train_set, eval_set):
    assert StreamLoader(train_set, 4, shuffle=True, workers=0).augment == IMAGENET_AUGMENT
    with pytest.raises(UsageError, match="for training loaders"):
        StreamLoader(eval_set, 4, shuffle=False, workers=0, augment=Augment(flip=True))
    for workers in (-1, 1.5, "2"):
        message = f"workers must be a whole number >= 0, not {workers!r}"
        with pytest.raises(UsageError, match=re.escape(message)):
            StreamLoader(train_set, 4, shuffle=True, workers=workers)


def test_per_image_operations_run_in_each_sample_s_view_unless_a_transform_is_given(train_set):
    augment = Augment(trivial=True, flip=True)
    loader = StreamLoader(train_set, 10, shuffle=True, workers=0, augment=augment)
    keys = next(loader.epoch_keys())
    raw = next(loader.host_batches())[0]
    ops = ImageOps(augment, tuple(image_ops(augment)))
    with_ops = StreamDataset(train_set, train=True, augment=augment, extra_transform=ops)
    without = StreamDataset(train_set, train=True, augment=augment)
    assert torch.equal(raw, torch.stack([with_ops[k][0] for k in keys]))
    assert not torch.equal(raw, torch.stack([without[k][0] for k in keys]))
    given = StreamLoader(
        train_set,
        10,
        shuffle=True,
        workers=0,
        augment=augment,
        extra_transform=lambda image, gen: torch.zeros_like(image),
    )
    assert torch.all(next(given.host_batches())[0] == 0)


def test_training_workers_persist_between_epochs_and_evaluation_s_do_not(train_set, eval_set):
    train = StreamLoader(train_set, 4, shuffle=True, workers=1, prefetch=3)
    test = StreamLoader(eval_set, 4, shuffle=False, workers=1)
    assert train._loader.persistent_workers and not test._loader.persistent_workers
    assert (train._loader.num_workers, train._loader.prefetch_factor) == (1, 3)
    assert test._loader.prefetch_factor == 4
    assert not train._loader.pin_memory  # on the CPU; batches are pinned for CUDA only
    assert StreamLoader(train_set, 4, shuffle=True)._loader.num_workers == 2  # the default
    inline = StreamLoader(train_set, 4, shuffle=True, workers=0)  # no worker settings
    assert inline._loader.prefetch_factor is None and not inline._loader.persistent_workers


def test_make_stream_loaders_gives_training_and_evaluation_their_settings(train_set, eval_set):
    augment = Augment(crop_padding=1, flip=True)
    norm = ((0.5,) * 3, (0.25,) * 3)
    loaders = make_stream_loaders(
        train_set,
        None,
        eval_set,
        batch_size=4,
        eval_batch=2,
        size=6,
        eval_crop=5,
        seed=3,
        drop_last=True,
        epoch_sizes=[6, 4],
        extra_transform=lambda image, gen: torch.full_like(image, 51),
        augment=augment,
        shard_order="shards",
        shard_window=1,
        normalize=norm,
        workers=0,
    )
    train, test = loaders.train, loaders.test
    assert loaders.val is None
    assert (train.shuffle, train.batch_size, train.seed, train.epoch_sizes) == (True, 4, 3, [6, 4])
    assert (train.augment, train.shard_order, train.shard_window) == (augment, "shards", 1)
    assert len(train) == 2  # drop_last: 10 images, batches of 4
    x = next(iter(train))[0]
    assert x.shape[-2:] == (6, 6) and torch.allclose(x, torch.full_like(x, (0.2 - 0.5) / 0.25))
    # evaluation: the view (resize = crop after padded crops), every image, one size
    assert (test.shuffle, test.batch_size, test.view) == (False, 2, EvalView(5, 5))
    assert len(test) == 3  # no drop_last in evaluation
    test.set_epoch(1)
    x = next(iter(test))[0]
    assert test.out_size == (5, 5)  # training's epoch sizes are not evaluation's
    want = torch.stack([EvalView(5, 5).read(eval_set.read(i), 3) for i in (0, 1)])
    assert torch.allclose(x, (want.float() / 255 - 0.5) / 0.25, atol=1e-5)
    defaults = make_stream_loaders(None, None, eval_set, batch_size=4, eval_batch=5, workers=0)
    assert defaults.train is None and defaults.test.view == default_view(8)  # the set's side
    assert default_view(8) == EvalView(round(8 / 0.875), 8)  # after random-resized crops
    sized = make_stream_loaders(
        train_set, None, eval_set, batch_size=4, eval_batch=5, size=6, eval_resize=10, workers=0
    )
    assert sized.test.view == EvalView(10, 6) and sized.train.augment == IMAGENET_AUGMENT
    assert (sized.train.seed, sized.train.drop_last, sized.train.epoch_sizes) == (0, False, None)
