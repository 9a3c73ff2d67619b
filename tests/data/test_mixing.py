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
