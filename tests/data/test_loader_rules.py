"""The in-memory loader's rules one by one (data/loader.py): each bad argument refused in its
own line and each boundary value taken, the batch plan's edges, the order and the draws tied to
(seed, epoch), crops and flips against references computed another way, and make_loaders'
wiring of the training and evaluation loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnetlab.data import Augment, Dataset, Loader
from resnetlab.data.batching import batch_plan, check_batching, check_normalize
from resnetlab.data.loader import _antialias_weights, make_loaders
from resnetlab.data.order import epoch_order
from resnetlab.errors import UsageError


def tagged(n: int = 24, shape=(1, 8, 8), seed: int = 0) -> Dataset:
    """Random images whose label is their index."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    return Dataset("tagged", images, torch.arange(n), [str(i) for i in range(n)])


def epoch(loader: Loader, e: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(e)
    return list(loader)


# -- arguments: each refused in its own line, each boundary taken ----------------------------------


@pytest.mark.parametrize(
    "args,line",
    [
        ((0, False, 0, 1), "batch size must be a whole number >= 1, not 0"),
        ((1.5, False, 0, 1), "batch size must be a whole number >= 1, not 1.5"),
        ((4, False, 0, 0), "rank 0 of 0 processes: need 0 <= rank < world_size"),
        ((4, False, -1, 2), "rank -1 of 2 processes: need 0 <= rank < world_size"),
        ((4, False, 2, 2), "rank 2 of 2 processes: need 0 <= rank < world_size"),
        ((5, True, 0, 2), "the global batch 5 must divide by the 2 processes"),
    ],
)
def test_bad_batching_is_refused_in_one_line(args, line):
    with pytest.raises(UsageError) as e:
        check_batching(*args)
    assert str(e.value) == line


def test_the_smallest_batch_and_the_last_rank_are_taken():
    check_batching(1, True, 0, 1)
    check_batching(4, True, 1, 2)
    check_batching(5, False, 1, 2)  # evaluation batches need not divide


@pytest.mark.parametrize("resize", [0, -1, 1.5, True, (8,), (8, 8, 8), (8, 0), (8, True), (8, 2.5)])
def test_a_bad_resize_is_refused_in_one_line(resize):
    with pytest.raises(UsageError) as e:
        Loader(tagged(), 4, shuffle=False, resize=resize)
    assert str(e.value) == (
        f"resize must be a whole number of pixels >= 1 (or a pair of them), not {resize!r}"
    )


def test_the_smallest_resize_is_taken():
    assert next(iter(Loader(tagged(), 4, shuffle=False, resize=1)))[0].shape[-2:] == (1, 1)
    assert next(iter(Loader(tagged(), 4, shuffle=False, resize=(1, 2))))[0].shape[-2:] == (1, 2)


@pytest.mark.parametrize("crop", [0, 7, True, 2.5])
def test_a_crop_that_does_not_fit_is_refused_in_one_line(crop):
    ds = tagged(shape=(1, 6, 9))
    with pytest.raises(UsageError) as e:
        Loader(ds, 4, shuffle=False, crop=crop)
    assert str(e.value) == (
        f"a centre crop of {crop!r} pixels does not fit images of 6 x 9; "
        "pass at most 6 (or resize them larger)"
    )


@pytest.mark.parametrize("crop", [1, 6])
def test_a_crop_from_one_pixel_to_the_shorter_side_is_taken_from_the_centre(crop):
    ds = tagged(shape=(1, 6, 9))
    x, _ = next(iter(Loader(ds, 4, shuffle=False, crop=crop)))
    top, left = round((6 - crop) / 2), round((9 - crop) / 2)  # torchvision's CenterCrop
    expected = ds.images[:4, :, top : top + crop, left : left + crop] / 255
    assert x.shape[-2:] == (crop, crop) and torch.allclose(x, expected, atol=1e-6)


def test_a_crop_is_checked_against_the_resized_size():
    ds = tagged(shape=(1, 6, 9))
    x, _ = next(iter(Loader(ds, 4, shuffle=False, resize=12, crop=10)))  # larger than 6 x 9
    assert x.shape[-2:] == (10, 10)
    with pytest.raises(UsageError, match="does not fit images of 4 x 4"):
        Loader(ds, 4, shuffle=False, resize=4, crop=5)  # smaller than 6 x 9


def test_sizes_by_epoch_of_one_pixel_are_taken():
    loader = Loader(tagged(), 4, shuffle=True, epoch_sizes=[1])
    assert epoch(loader)[0][0].shape[-2:] == (1, 1)


@pytest.mark.parametrize(
    "normalize",
    [([0.5, 0.5], [0.2]), ([0.5], [0.2, 0.2]), ([0.5], [0.0]), ([0.5], [-0.1])],
)
def test_a_bad_normalization_is_refused_naming_the_dataset(normalize):
    with pytest.raises(UsageError) as e:
        Loader(tagged(), 4, shuffle=False, normalize=normalize)
    mean, std = normalize
    assert str(e.value) == (
        f"normalize needs 1 means and 1 positive stds for tagged, got {mean} and {std}"
    )


def test_no_normalization_is_mean_0_and_std_1():
    assert check_normalize(None, 3, "x") == ([0.0] * 3, [1.0] * 3)


def test_random_resized_crops_are_refused_in_memory_in_one_line():
    with pytest.raises(UsageError) as e:
        Loader(tagged(), 4, shuffle=True, augment=Augment(resized_crop=True))
    assert str(e.value) == (
        "random-resized crops need the full-resolution images that streamed data keeps: "
        "add --stream (or pack the set with `resnetlab data pack`)"
    )


# -- the batch plan's edges -----------------------------------------------------------------------


def test_a_last_training_batch_of_one_sample_per_rank_is_kept():
    # 5 samples in global batches of 4 over 2 ranks: the last batch of 1 cannot be shared
    assert batch_plan(5, 4, True, False, 1, 2) == [(0, 4, 2, 4)]
    assert batch_plan(6, 4, True, False, 1, 2) == [(0, 4, 2, 4), (4, 2, 1, 2)]


def test_evaluation_batches_are_a_ranks_share_of_the_global_batch():
    # 10 samples over 2 ranks: rank 1 holds 5..9, in batches of ceil(4 / 2) = 2
    assert batch_plan(10, 4, False, False, 1, 2) == [(5, 2, 0, 2), (7, 2, 0, 2), (9, 1, 0, 1)]
    assert batch_plan(10, 4, False, True, 0, 1) == [(0, 4, 0, 4), (4, 4, 0, 4)]  # 2 dropped


# -- the order and the draws: tied to (seed, epoch) ------------------------------------------------


def test_an_epoch_is_read_in_the_streamed_loaders_random_order():
    ds = tagged(n=20)
    fresh = Loader(ds, 20, shuffle=True, seed=5)  # never told its epoch: epoch 0
    assert torch.equal(next(iter(fresh))[1], epoch_order(np.zeros(20), 5, 0))
    for e in (1, 3):
        assert torch.equal(epoch(fresh, e)[0][1], epoch_order(np.zeros(20), 5, e))


def test_the_defaults_are_seed_0_and_the_usual_memory_layout():
    ds = tagged(n=20, shape=(3, 4, 4))
    x, y = next(iter(Loader(ds, 20, shuffle=True)))
    assert torch.equal(y, epoch_order(np.zeros(20), 0, 0))
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)


def offsets_seen(loader: Loader, pad: int, e: int = 0) -> list[tuple[int, int]]:
    """Each image's (dy, dx): the window of its zero-padded source it shows (crops only)."""
    found = []
    for x, y in epoch(loader, e):
        source = F.pad(loader.dataset.images[y].float() / 255, (pad,) * 4)
        windows = source.unfold(2, x.shape[-2], 1).unfold(3, x.shape[-1], 1)  # [b, C, dy, dx, h, w]
        distance = (windows - x[:, :, None, None]).abs().amax(dim=(1, 4, 5))  # [b, dy, dx]
        hits = (distance <= 1e-6).nonzero()  # (image, dy, dx), by image
        assert hits[:, 0].tolist() == list(range(len(y))), "not one window of its source each"
        found += [(int(dy), int(dx)) for _, dy, dx in hits]
    return found


def test_a_crop_alone_moves_rows_and_columns_over_every_offset():
    ds = tagged(n=64, shape=(1, 6, 7))
    loader = Loader(ds, 16, shuffle=True, augment=Augment(crop_padding=2), seed=2)
    found = offsets_seen(loader, 2)
    assert {dy for dy, _ in found} == set(range(5)) and {dx for _, dx in found} == set(range(5))


def test_a_flip_mirrors_the_window_the_crop_drew():
    """Crop then flip (torchvision's RandomCrop, RandomHorizontalFlip): a batch's crop offsets
    are drawn before its flips, so each image of a first batch is the crop-only loader's,
    mirrored or not."""
    ds = tagged(n=48, shape=(1, 6, 6))
    crop = Loader(ds, 48, shuffle=True, augment=Augment(crop_padding=2), seed=3)
    both = Loader(ds, 48, shuffle=True, augment=Augment(crop_padding=2, flip=True), seed=3)
    mirrored = 0
    for (a, ya), (b, yb) in zip(epoch(crop), epoch(both)):
        assert torch.equal(ya, yb)
        for plain, shown in zip(a, b):
            flipped = torch.allclose(shown, plain.flip(-1), atol=1e-6)
            assert flipped or torch.allclose(shown, plain, atol=1e-6)
            mirrored += flipped and not torch.allclose(plain, plain.flip(-1), atol=1e-6)
    assert 8 < mirrored < 40


def test_augmentation_draws_change_with_the_seed_and_the_epoch():
    ds = tagged(n=32)
    aug = Augment(crop_padding=2)

    def offsets(seed: int, e: int) -> list[tuple[int, int]]:
        return offsets_seen(Loader(ds, 32, shuffle=True, augment=aug, seed=seed), 2, e)

    # batch position by position: the draws, whichever images the order puts there
    assert offsets(0, 0) != offsets(1, 0) and offsets(0, 0) != offsets(0, 1)


def test_alternating_flips_start_from_the_seed():
    ds = tagged(n=64)
    aug = Augment(flip=True, alternate_flip=True)

    def mirrored(seed: int) -> list[int]:
        x, y = next(iter(Loader(ds, 64, shuffle=True, augment=aug, seed=seed)))
        plain = ds.images[y].float() / 255
        return sorted(
            int(label)
            for out, src, label in zip(x, plain, y)
            if not torch.allclose(out, src, atol=1e-6)
        )

    assert mirrored(0) != mirrored(1)


def test_alternating_flips_are_shared_by_ranks_as_one_process_draws_them():
    ds = tagged(n=24)
    args = dict(shuffle=True, augment=Augment(flip=True, alternate_flip=True), seed=4)
    whole = epoch(Loader(ds, 8, **args), 1)
    shards = [epoch(Loader(ds, 8, rank=r, world_size=2, **args), 1) for r in range(2)]
    for i, (x, _) in enumerate(whole):
        assert torch.equal(torch.cat([s[i][0] for s in shards]), x)


# -- resampling weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_in,n_out", [(28, 16), (50, 7), (30, 90), (5, 1)])
def test_the_formulas_weights_are_interpolates_in_double_precision(n_in, n_out):
    """The formula (for axes past the identity's limit) in float64, as the identity's weights are
    before they are cast: a float32 formula would round before the cast."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 4)
    weights = F.interpolate(eye, size=(n_out, 4), mode="bilinear", antialias=True)[:, 0, :, 0].T
    formula = _antialias_weights(n_in, n_out)
    assert formula.dtype == torch.float64 and torch.allclose(formula, weights, atol=1e-12)


# -- make_loaders ---------------------------------------------------------------------------------


def test_make_loaders_wires_training_and_evaluation_arguments():
    train, val, test = tagged(n=40), tagged(n=10, seed=1), tagged(n=12, seed=2)
    aug = Augment(crop_padding=1, flip=True)
    norm = ([0.5], [0.25])
    loaders = make_loaders(
        train, val, test, batch_size=8, augment=aug, seed=3, drop_last=True,
        epoch_sizes=[6, 8], eval_resize=10, eval_crop=7, normalize=norm,
    )  # fmt: skip
    t = loaders.train
    assert (t.shuffle, t.batch_size, t.augment, t.seed, t.drop_last) == (True, 8, aug, 3, True)
    assert t.epoch_sizes == [6, 8] and t.crop is None and len(t) == 5
    for loader, ds in ((loaders.val, val), (loaders.test, test)):
        assert loader.dataset is ds and loader.shuffle is False and loader.batch_size == 256
        assert loader.crop == 7 and not loader.augment.active
        x, y = next(iter(loader))
        assert x.shape == (len(ds), 1, 7, 7) and torch.equal(y, torch.arange(len(ds)))
        resized = F.interpolate(
            ds.images.float() / 255, size=(10, 10), mode="bilinear", antialias=True
        )
        expected = (resized[..., 2:9, 2:9] - 0.5) / 0.25  # normalized as training is
        assert torch.allclose(x, expected, atol=1e-5)


def test_make_loaders_defaults_and_absent_splits():
    ds = tagged(n=10)
    loaders = make_loaders(ds, batch_size=4)
    assert loaders.val is None and loaders.test is None
    assert (loaders.train.seed, loaders.train.drop_last, loaders.train.epoch_sizes) == (
        0,
        False,
        None,
    )
    assert len(loaders.train) == 3  # the last batch of 2 kept
    only = make_loaders(val=ds, batch_size=4)
    assert only.train is None and only.test is None and only.val.dataset is ds


def test_a_partial_batch_weighs_each_ranks_loss_by_its_share():
    """DDP averages the ranks' mean losses: a rank holding 1 of a last batch of 3 over 2 ranks
    weighs its mean by 1 * 2 / 3, the other (2 of 3) by 2 * 2 / 3, so the average is the batch's."""
    ds = tagged(n=11)
    ranks = [Loader(ds, 4, shuffle=True, rank=r, world_size=2) for r in range(2)]
    assert [r.loss_weight(i) for r in ranks for i in range(3)] == [1, 1, 2 / 3, 1, 1, 4 / 3]


def test_a_cropped_training_loader_erases_boxes_of_the_cropped_size():
    white = Dataset(
        "white", torch.full((300, 1, 20, 20), 255, dtype=torch.uint8), torch.zeros(300).long()
    )
    loader = Loader(white, 300, shuffle=True, crop=10, augment=Augment(erasing=0.5))
    x, _ = epoch(loader)[0]
    assert x.shape[-2:] == (10, 10)
    erased = x[:, 0] == 0
    boxes = erased.any(dim=(1, 2))
    assert 0.35 < boxes.float().mean() < 0.65  # each box drawn inside the 10 x 10 view
    areas = erased[boxes].sum(dim=(1, 2))
    assert areas.max() <= 0.4 * 100 * 1.5  # 2-40 % of the view's area (and rounding)
