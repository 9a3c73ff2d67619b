"""The batched loader: values, determinism, sharding, resize accuracy, augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FASHION_DIR, needs_fashion

from resnetlab.data import Augment, Dataset, Loader, load_dataset
from resnetlab.errors import UsageError


def tagged(n: int = 50, shape=(1, 8, 8), seed: int = 0) -> Dataset:
    """Random images whose label is their index, so every batch says which examples it holds."""
    images = torch.randint(
        0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    return Dataset("tagged", images, torch.arange(n), [str(i) for i in range(n)])


def batches(loader: Loader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_batches_are_the_images_scaled_to_unit_range():
    ds = tagged()
    loader = Loader(ds, 16, shuffle=True, seed=3)
    seen = batches(loader)
    assert (
        [len(y) for _, y in seen] == [16, 16, 16, 2]
        and len(loader) == 4
        and loader.num_examples == 50
    )
    for x, y in seen:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, ds.images[y].float() / 255)


def test_normalize_and_channels_last():
    ds = tagged(shape=(3, 8, 8))
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    x, y = next(iter(Loader(ds, 10, shuffle=False, normalize=(mean, std), channels_last=True)))
    expected = (ds.images[:10].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std
    ).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6) and y.tolist() == list(range(10))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_same_arguments_same_batches_and_any_epoch_reproducible():
    ds = tagged()
    aug = Augment(crop_padding=2, flip=True, erasing=0.5)
    make = lambda: Loader(ds, 8, shuffle=True, resize=12, augment=aug, seed=7)  # noqa: E731
    a, b = make(), make()
    for epoch in (0, 1, 2):
        first = batches(a, epoch)
        assert all(
            torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
            for p, q in zip(first, batches(a, epoch))
        )
    late = batches(b, 2)  # straight to epoch 2: no state carried from earlier epochs
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, late))
    assert not torch.equal(batches(a, 0)[0][1], batches(a, 1)[0][1])  # a new order each epoch
    assert not torch.equal(
        batches(make(), 0)[0][1], batches(Loader(ds, 8, shuffle=True, seed=8), 0)[0][1]
    )


@pytest.mark.parametrize("world", [2, 4])
def test_training_shards_are_the_single_process_batches_cut_in_pieces(world):
    ds = tagged(n=53)  # the last global batch of 5 splits unevenly
    args = dict(
        shuffle=True, resize=12, augment=Augment(crop_padding=2, flip=True, erasing=0.5), seed=1
    )
    whole = batches(Loader(ds, 8, **args), epoch=3)
    shards = [
        batches(Loader(ds, 8, rank=r, world_size=world, **args), epoch=3) for r in range(world)
    ]
    assert all(len(s) == len(whole) for s in shards)
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([s[i][1] for s in shards]), y)
        assert torch.allclose(torch.cat([s[i][0] for s in shards]), x, atol=1e-6)
    seen = torch.cat([y for s in shards for _, y in s])
    assert sorted(seen.tolist()) == list(range(53))  # every example exactly once per epoch
    counts = [Loader(ds, 8, rank=r, world_size=world, **args).num_examples for r in range(world)]
    assert sum(counts) == 53


@pytest.mark.parametrize("n,batch,world", [(50, 8, 3), (7, 4, 2), (10, 256, 4)])
def test_evaluation_shards_cover_every_example_once(n, batch, world):
    ds = tagged(n=n)
    loaders = [Loader(ds, batch, shuffle=False, rank=r, world_size=world) for r in range(world)]
    labels = [torch.cat([y for _, y in batches(loader)]) for loader in loaders]
    assert torch.equal(
        torch.cat(labels), torch.arange(n)
    )  # no padding duplicates, nothing left out
    assert [loader.num_examples for loader in loaders] == [len(y) for y in labels]
    assert max(map(len, labels)) - min(map(len, labels)) <= 1


def test_drop_last_and_argument_errors():
    ds = tagged(n=50)
    loader = Loader(ds, 16, shuffle=True, drop_last=True)
    assert len(loader) == 3 and loader.num_examples == 48 and all(len(y) == 16 for _, y in loader)
    assert len(Loader(ds, 64, shuffle=True, drop_last=True)) == 0
    # a final global batch of 2 cannot give each of 4 ranks a sample: it is left out on every rank
    assert len(Loader(ds, 16, shuffle=True, rank=3, world_size=4)) == 3
    with pytest.raises(UsageError, match="must divide by the 3 processes"):
        Loader(ds, 16, shuffle=True, world_size=3)
    with pytest.raises(UsageError, match="augmentation is for training"):
        Loader(ds, 16, shuffle=False, augment=Augment(flip=True))
    with pytest.raises(UsageError, match="1 means and 1 positive stds"):
        Loader(ds, 16, shuffle=False, normalize=([0.5, 0.5], [0.2, 0.2]))
    with pytest.raises(UsageError, match="random-erasing probability"):
        Augment(erasing=1.5)
    assert isinstance(
        Loader(ds, 16, shuffle=False, augment=Augment())._images, torch.Tensor
    )  # inactive: fine


@pytest.mark.parametrize("size_in,size_out", [((28, 28), 96), ((32, 20), 24), ((40, 40), 13)])
def test_resize_equals_interpolate_with_antialias(size_in, size_out):
    ds = tagged(n=6, shape=(2, *size_in))
    x, _ = next(iter(Loader(ds, 6, shuffle=False, resize=size_out)))
    expected = F.interpolate(
        ds.images.float() / 255,
        size=(size_out, size_out),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    assert x.shape == (6, 2, size_out, size_out) and torch.allclose(x, expected, atol=1e-5)


@pytest.mark.parametrize("std", [[0.3, 0.3], [0.2, 0.4]])
def test_resize_then_normalize(std):
    ds = tagged(n=4, shape=(2, 10, 10))
    mean = [0.4, 0.6]
    x, _ = next(iter(Loader(ds, 4, shuffle=False, resize=16, normalize=(mean, std))))
    resized = F.interpolate(ds.images.float() / 255, size=(16, 16), mode="bilinear", antialias=True)
    expected = (resized - torch.tensor(mean).view(2, 1, 1)) / torch.tensor(std).view(2, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)


@needs_fashion
@pytest.mark.parametrize("size", [96, 224, 14])
def test_resize_is_within_one_level_of_pillow_on_fashion_mnist(size):
    from PIL import Image

    test = load_dataset("fashion-mnist", train=False, root=FASHION_DIR).take(128, seed=0)
    x, _ = next(iter(Loader(test, 128, shuffle=False, resize=size)))
    pil = np.stack(
        [
            np.asarray(Image.fromarray(img[0].numpy()).resize((size, size), Image.BILINEAR))
            for img in test.images
        ]
    )
    mad = np.abs(x[:, 0].numpy() - pil / 255.0).mean()
    assert mad <= 1 / 255, f"mean absolute difference {mad * 255:.3f}/255"


def _shifts_and_flips(pad: int):
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            for flip in (False, True):
                yield dy, dx, flip


def _translate(img: torch.Tensor, dy: int, dx: int, pad: int, flip: bool) -> torch.Tensor:
    """The reference: zero-pad, cut the window at offset (pad + dy, pad + dx), maybe mirror."""
    h, w = img.shape[-2:]
    out = F.pad(img, (pad, pad, pad, pad))[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return out.flip(-1) if flip else out


@pytest.mark.parametrize(
    "shape,pad,resize", [((1, 6, 6), 2, None), ((3, 32, 32), 4, None), ((1, 28, 28), 4, 48)]
)
def test_crop_and_flip_match_a_per_image_reference(shape, pad, resize):
    """Crops without a resize (6 px; CIFAR's 32 px, pad 4) and after one (at the output size)."""
    ds = tagged(n=40, shape=shape)
    x, y = next(
        iter(
            Loader(
                ds,
                40,
                shuffle=True,
                resize=resize,
                augment=Augment(crop_padding=pad, flip=True),
                seed=5,
            )
        )
    )
    found = []
    for out, label in zip(x, y):
        img = ds.images[label].float() / 255
        if resize:
            img = F.interpolate(img[None], size=(resize, resize), mode="bilinear", antialias=True)[
                0
            ]
        matches = [
            (dy, dx, f)
            for dy, dx, f in _shifts_and_flips(pad)
            if torch.allclose(out, _translate(img, dy, dx, pad, f), atol=1e-5)
        ]
        assert matches, "an augmented image that no crop/flip of its source explains"
        found.append(matches[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 5 and 5 < sum(f for *_, f in found) < 35


def test_random_erasing_boxes():
    ds = Dataset(
        "white",
        torch.full((400, 1, 20, 20), 255, dtype=torch.uint8),
        torch.zeros(400, dtype=torch.int64),
        ["w"],
    )
    x, _ = next(iter(Loader(ds, 400, shuffle=True, augment=Augment(erasing=0.5))))
    erased = x[:, 0] == 0
    boxes = erased.any(dim=(1, 2))
    assert 0.35 < boxes.float().mean() < 0.65
    for mask in erased[boxes]:
        rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
        h, w = len(rows), len(cols)
        assert (
            mask.sum() == h * w and rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        )  # one rectangle
        assert 0.02 * 400 * 0.5 <= h * w <= 0.4 * 400 * 1.5 and h < 20 and w < 20


@pytest.mark.parametrize(
    "n_in, n_out",
    [
        (28, 96),
        (28, 16),
        (100, 28),
        (50, 7),
        (30, 90),
        (37, 11),
        (1, 5),
        (5, 1),
        (64, 63),
        (2000, 28),
        (2048, 3000),
    ],
)
def test_resize_formula_equals_interpolates_own_weights(n_in, n_out):
    """Long axes take the filter's formula instead of resizing an identity (n_in^2 memory); where
    both can run they agree bit for bit."""
    from resnetlab.data.loader import _antialias_weights, resize_weights

    assert torch.equal(_antialias_weights(n_in, n_out).float(), resize_weights(n_in, n_out))


def _peak_growth(fn) -> tuple[object, int]:
    """(fn(), bytes the peak resident memory rose by while it ran): Linux's VmHWM, reset first."""
    from pathlib import Path

    def status(field: str) -> int:
        line = next(
            x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field)
        )
        return int(line.split()[1]) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM, the peak, back to the current size
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    start = status("VmRSS")
    result = fn()
    return result, status("VmHWM") - start


def test_a_very_long_axis_resizes_in_little_memory():
    from resnetlab.data.loader import resize_weights

    # the weights are 16 x 50,000 floats (3.2 MB); resizing an identity would take 50,000^2 (10 GB)
    w, grew = _peak_growth(lambda: resize_weights(50000, 16))
    assert w.shape == (16, 50000) and torch.allclose(w.sum(1), torch.ones(16))
    assert grew < 32 * 2**20, f"peak memory rose by {grew / 2**20:.0f} MiB"


def test_alternating_flips_mirror_each_image_in_every_other_epoch():
    ds = tagged(n=64)
    loader = Loader(ds, 16, shuffle=True, augment=Augment(flip=True, alternate_flip=True), seed=5)

    def mirrored(epoch: int) -> torch.Tensor:  # per image (by label): was it shown mirrored?
        flags = torch.zeros(len(ds), dtype=torch.bool)
        same = lambda a, b: torch.allclose(a, b, atol=1e-6)  # noqa: E731 - resampled by matrix products
        for x, y in batches(loader, epoch):
            plain = ds.images[y].float() / 255
            assert all(
                same(a, b) != same(a, b.flip(-1)) for a, b in zip(x, plain)
            )  # one view or the other
            flags[y] = torch.tensor([same(a, b.flip(-1)) for a, b in zip(x, plain)])
        return flags

    first, second, third = mirrored(0), mirrored(1), mirrored(2)
    assert torch.equal(second, ~first) and torch.equal(third, first)  # every other epoch, per image
    assert 16 < int(first.sum()) < 48  # each image's own random start: about half begin mirrored
    with pytest.raises(UsageError, match="alternating flips need flips"):
        Augment(alternate_flip=True)


def test_progressive_sizes_give_each_epoch_the_batches_of_a_loader_at_that_size():
    """Under epoch_sizes a training loader's epoch e is exactly what a loader built at size
    epoch_sizes[e] gives (the same order and augmentation); past the list, its last size."""
    ds = tagged(n=40, shape=(1, 12, 12))
    aug = Augment(crop_padding=2, flip=True, erasing=0.5)
    norm = ([0.3], [0.2])
    loader = Loader(
        ds, 16, shuffle=True, augment=aug, seed=4, normalize=norm, epoch_sizes=[6, 9, 12]
    )
    for epoch, size in ((0, 6), (1, 9), (2, 12), (3, 12), (1, 9)):
        at_size = Loader(ds, 16, shuffle=True, augment=aug, seed=4, normalize=norm, resize=size)
        got, want = batches(loader, epoch), batches(at_size, epoch)
        assert [x.shape[-2:] for x, _ in got] == [(size, size)] * 3
        assert all(torch.equal(a, b) and torch.equal(p, q) for (a, p), (b, q) in zip(got, want)), (
            epoch,
            size,
        )
    for bad in ([], [8, 0], [8.5]):
        with pytest.raises(UsageError, match="sizes by epoch are for training loaders"):
            Loader(ds, 16, shuffle=True, epoch_sizes=bad)
    with pytest.raises(UsageError, match="sizes by epoch are for training loaders"):
        Loader(ds, 16, shuffle=False, epoch_sizes=[8])
