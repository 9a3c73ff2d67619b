"""Mixup and CutMix arithmetic: the targets' formula, CutMix's lam as the unpasted area, the images'
formula, the choice between the two, and the seeded stream of a mixed loader."""

from __future__ import annotations

import math

import pytest
import torch

from resnetlab.data import Dataset, Loader
from resnetlab.data.augment import stream_seed
from resnetlab.data.mixing import Mix, MixedLoader, beta, cutmix_box, draw_mix, mix_batch
from resnetlab.errors import UsageError


def batch(b=6, c=2, h=9, w=7, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=gen), torch.randint(classes, (b,), generator=gen)


def test_mixup_blends_images_and_one_hot_targets_with_the_batch_rolled_by_one():
    x, y = batch()
    out, target = mix_batch(x, y, 5, Mix("mixup", 0.3))
    for i in range(len(x)):
        j = i - 1  # the partner: the previous example, the first takes the last
        assert torch.allclose(out[i], 0.3 * x[i] + 0.7 * x[j], atol=1e-6)
        expected = torch.zeros(5)
        expected[y[i]] += 0.3
        expected[y[j]] += 0.7
        assert torch.allclose(target[i], expected, atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(len(x)))


def test_cutmix_pastes_the_box_of_the_rolled_batch_and_its_targets_weigh_the_areas():
    x, y = batch()
    mix = Mix("cutmix", 1 - 12 / 63, (2, 1, 6, 4))  # rows 2..5, columns 1..3: 12 of 63 pixels
    out, target = mix_batch(x, y, 5, mix)
    inside = torch.zeros(9, 7, dtype=torch.bool)
    inside[2:6, 1:4] = True
    for i in range(len(x)):
        assert torch.equal(out[i][:, inside], x[i - 1][:, inside])
        assert torch.equal(out[i][:, ~inside], x[i][:, ~inside])
        expected = torch.zeros(5)
        expected[y[i]] += 1 - 12 / 63
        expected[y[i - 1]] += 12 / 63
        assert torch.allclose(target[i], expected, atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(len(x)))


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_lam_is_the_area_outside_its_box(seed):
    gen = torch.Generator().manual_seed(seed)
    lam = beta(1.0, gen)
    mix = cutmix_box(lam, 9, 7, gen)
    top, left, bottom, right = mix.box
    assert 0 <= top <= bottom <= 9 and 0 <= left <= right <= 7
    x, y = batch()
    out, _ = mix_batch(x, y, 5, mix)
    pasted = (out != x).any(0).any(0).float().mean()  # random floats: every pasted pixel differs
    assert math.isclose(1 - mix.lam, float(pasted), abs_tol=1e-6)
    # torchvision's box: half-sides int(sqrt(1 - lam) / 2 * side) about a centre, clipped
    half_h, half_w = int(0.5 * math.sqrt(1 - lam) * 9), int(0.5 * math.sqrt(1 - lam) * 7)
    assert bottom - top <= 2 * half_h and right - left <= 2 * half_w


def test_beta_draws_have_the_distributions_mean_and_spread():
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([beta(0.2, gen) for _ in range(4000)])
    assert ((draws >= 0) & (draws <= 1)).all()
    assert abs(draws.mean() - 0.5) < 0.03  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(draws.var() - 1 / (4 * 1.4)) < 0.02


def test_with_both_on_each_batch_takes_one_of_them_half_the_time():
    gen = torch.Generator().manual_seed(1)
    kinds = [draw_mix(0.2, 1.0, 8, 8, gen).kind for _ in range(2000)]
    assert abs(kinds.count("cutmix") / 2000 - 0.5) < 0.05
    assert {draw_mix(0.2, 0.0, 8, 8, gen).kind for _ in range(20)} == {"mixup"}
    assert {draw_mix(0.0, 1.0, 8, 8, gen).kind for _ in range(20)} == {"cutmix"}


def test_a_mixed_loader_is_seeded_by_epoch_and_shared_by_processes():
    images = torch.randint(0, 256, (32, 1, 6, 6), dtype=torch.uint8)
    ds = Dataset("t", images, torch.arange(32) % 4, ["a", "b", "c", "d"])

    def loader(rank=0, world_size=1):
        inner = Loader(ds, 8, shuffle=True, seed=1, rank=rank, world_size=world_size)
        return MixedLoader(inner, mixup=0.2, cutmix=1.0, num_classes=4, seed=1)

    a, b = loader(), loader()
    a.set_epoch(2)
    b.set_epoch(2)
    first, again = list(a), list(b)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, again))
    assert len(a) == 4 and a.loss_weight(0) == 1.0  # the wrapped loader's interface
    b.set_epoch(3)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(first, b))
    assert all(t.shape == (8, 4) and torch.allclose(t.sum(1), torch.ones(8)) for _, t in first)
    for rank in range(2):  # each process mixes its share of the batch with the same draws
        half = loader(rank, 2)
        half.set_epoch(2)
        plain = Loader(ds, 8, shuffle=True, seed=1, rank=rank, world_size=2)
        plain.set_epoch(2)
        gen = torch.Generator().manual_seed(stream_seed(1, 2, "mix"))
        for (x, t), (px, py) in zip(half, plain):
            mx, mt = mix_batch(px, py, 4, draw_mix(0.2, 1.0, 6, 6, gen))
            assert torch.equal(x, mx) and torch.equal(t, mt) and x.shape == (4, 1, 6, 6)


def test_mixing_without_an_alpha_is_refused():
    with pytest.raises(UsageError, match="alpha > 0"):
        MixedLoader([], mixup=0.0, cutmix=0.0, num_classes=2)


class _Skipping:
    """A loader of fixed batches that, like StreamLoader.skip_next, yields its first `skip`
    batches as (None, None)."""

    out_size = (9, 7)

    def __init__(self, batches, skip=0):
        self.batches, self.skip = batches, skip

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, (x, y) in enumerate(self.batches):
            yield (None, None) if i < self.skip else (x, y)


def test_batches_passed_over_on_resume_still_make_their_draws():
    batches = [batch(seed=s) for s in range(4)]
    whole = list(MixedLoader(_Skipping(batches), mixup=0.2, cutmix=1.0, num_classes=5, seed=1))
    resumed = MixedLoader(_Skipping(batches, 2), mixup=0.2, cutmix=1.0, num_classes=5, seed=1)
    got = list(resumed)
    assert got[:2] == [(None, None), (None, None)]
    for (a, ta), (b, tb) in zip(whole[2:], got[2:]):
        assert torch.equal(a, b) and torch.equal(ta, tb)


@pytest.mark.parametrize("seed", range(40))
def test_cutmix_box_is_torchvisions_about_the_drawn_centre(seed):
    # transforms.v2.CutMix: centre uniform over the pixels, half-sides int(sqrt(1 - lam) / 2 * side),
    # the box clipped to the image; a 9 x 7 image, so a swapped height and width shows
    gen, again = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    lam = 0.1 + 0.02 * seed
    r_x, r_y = (
        int(torch.randint(7, (1,), generator=again)),
        int(torch.randint(9, (1,), generator=again)),
    )
    half_h, half_w = int(0.5 * math.sqrt(1 - lam) * 9), int(0.5 * math.sqrt(1 - lam) * 7)
    expected = (
        max(r_y - half_h, 0),
        max(r_x - half_w, 0),
        min(r_y + half_h, 9),
        min(r_x + half_w, 7),
    )
    assert cutmix_box(lam, 9, 7, gen).box == expected


def test_the_targets_have_one_column_per_class_whatever_classes_the_batch_holds():
    x, _ = batch()
    y = torch.tensor([0, 1, 0, 1, 0, 1])  # classes 2..4 absent from this batch
    for mix in (Mix("mixup", 0.3), Mix("cutmix", 0.5, (0, 0, 3, 3))):
        _, target = mix_batch(x, y, 5, mix)
        assert target.shape == (6, 5) and not target[:, 2:].any()


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_a_mixed_batch_keeps_the_layout_it_came_in(kind):
    x, y = batch()
    mix = Mix(kind, 0.3, (2, 1, 6, 4) if kind == "cutmix" else None)
    plain, _ = mix_batch(x, y, 5, mix)
    fast, _ = mix_batch(x.contiguous(memory_format=torch.channels_last), y, 5, mix)
    assert fast.is_contiguous(memory_format=torch.channels_last) and torch.equal(fast, plain)
    assert plain.is_contiguous()
    strided, _ = mix_batch(x[..., ::2], y, 5, mix)  # neither layout: not made channels_last
    assert not strided.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_either_alpha_alone_is_enough(mixup, cutmix):
    MixedLoader([], mixup=mixup, cutmix=cutmix, num_classes=2)


@pytest.mark.parametrize("mixup, cutmix", [(-0.1, 1.0), (0.2, -1.0), (0.0, 0.0)])
def test_a_negative_alpha_is_refused(mixup, cutmix):
    with pytest.raises(UsageError, match="alpha > 0"):
        MixedLoader([], mixup=mixup, cutmix=cutmix, num_classes=2)


@pytest.mark.parametrize("skip", [0, 2])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_batch_is_mixed_by_its_own_draw_from_the_epochs_stream(skip, seed):
    # 9 x 7 batches: the draws are made at (height, width), before and after a resume; a loader
    # never given an epoch mixes as epoch 0, like the loader it wraps
    batches = [batch(seed=s) for s in range(4)]
    mixed = MixedLoader(_Skipping(batches, skip), mixup=0.2, cutmix=1.0, num_classes=5, seed=seed)
    got = list(mixed)
    gen = torch.Generator().manual_seed(stream_seed(seed, 0, "mix"))
    for i, (x, y) in enumerate(batches):
        expected = mix_batch(x, y, 5, draw_mix(0.2, 1.0, 9, 7, gen))
        if i < skip:
            assert got[i] == (None, None)
        else:
            assert torch.equal(got[i][0], expected[0]) and torch.equal(got[i][1], expected[1])
