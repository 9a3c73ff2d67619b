"""The in-memory loader's parts of the ImageNet recipe: TrivialAugmentWide per image (seeded,
shared by processes as one process sees it) and evaluation at another size (shorter side, then a
centre crop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnetlab.data import Augment, Dataset, Loader, make_loaders
from resnetlab.data.augment import stream_seed
from resnetlab.data.loader import shorter_side
from resnetlab.data.trivial_augment import trivial_augment_wide
from resnetlab.errors import UsageError


def tagged(n: int = 24, shape=(3, 10, 10), seed: int = 0) -> Dataset:
    images = torch.randint(
        0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    return Dataset("tagged", images, torch.arange(n), [str(i) for i in range(n)])


def test_trivial_augment_applies_the_seeded_stream_to_each_image_in_order():
    ds = tagged()
    loader = Loader(ds, 8, shuffle=True, seed=4, augment=Augment(trivial=True))
    loader.set_epoch(1)
    got = list(loader)
    gen = torch.Generator().manual_seed(stream_seed(4, 1, "trivial"))
    for x, y in got:
        expected = torch.stack([trivial_augment_wide(ds.images[i], gen) for i in y]) / 255
        assert torch.equal(x, expected)
    plain = Loader(ds, 8, shuffle=True, seed=4)
    plain.set_epoch(1)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(got, plain))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, loader))  # again: the same


def test_trivial_augment_is_shared_by_processes_as_one_process_draws_it():
    ds = tagged()
    one = Loader(ds, 8, shuffle=True, seed=2, augment=Augment(trivial=True, flip=True))
    two = [
        Loader(
            ds,
            8,
            shuffle=True,
            seed=2,
            augment=Augment(trivial=True, flip=True),
            rank=r,
            world_size=2,
        )
        for r in range(2)
    ]
    for a, b0, b1 in zip(one, *two):
        assert torch.equal(a[0], torch.cat([b0[0], b1[0]]))


def test_trivial_augment_is_for_training_loaders():
    with pytest.raises(UsageError, match="training loaders"):
        Loader(tagged(), 8, shuffle=False, augment=Augment(trivial=True))


def reference_eval(images: torch.Tensor, resize: tuple[int, int], crop: int) -> torch.Tensor:
    x = F.interpolate(images.float() / 255, size=resize, mode="bilinear", antialias=True)
    top, left = round((resize[0] - crop) / 2), round((resize[1] - crop) / 2)
    return x[..., top : top + crop, left : left + crop]


@pytest.mark.parametrize("shape", [(3, 20, 20), (1, 18, 27), (3, 25, 16)])
def test_evaluation_resizes_the_shorter_side_then_crops_the_centre(shape):
    ds = tagged(n=5, shape=shape)
    loaders = make_loaders(ds, None, ds, batch_size=4, eval_resize=14, eval_crop=11, resize=9)
    x, _ = next(iter(loaders.test))
    size = shorter_side(14, *shape[1:])
    assert min(size) == 14 and x.shape[-2:] == (11, 11)
    assert torch.allclose(x, reference_eval(ds.images, size, 11), atol=1e-5)
    loaders.train.set_epoch(0)
    assert next(iter(loaders.train))[0].shape[-2:] == (9, 9)  # training keeps --resize


def test_shorter_side_keeps_the_aspect_ratio_as_torchvision():
    assert shorter_side(232, 375, 500) == (232, 309)
    assert shorter_side(232, 500, 375) == (309, 232)
    assert shorter_side(10, 10, 10) == (10, 10)


def test_a_crop_alone_cuts_the_evaluated_size_and_a_crop_too_large_is_refused():
    ds = tagged(n=4, shape=(1, 12, 12))
    test = make_loaders(test=ds, batch_size=4, eval_crop=8).test
    x, _ = next(iter(test))
    assert torch.allclose(x, ds.images[..., 2:10, 2:10] / 255, atol=1e-6)
    with pytest.raises(UsageError, match="centre crop of 13"):
        make_loaders(test=ds, batch_size=4, eval_crop=13)
