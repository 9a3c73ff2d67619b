"""data/augment.py piece by piece, each against a reference computed another way: the settings'
checks in their exact lines, which settings turn augmentation on, the per-image ops applied in
turn with one generator, the seeds of each purpose, random erasing's boxes against torchvision's
RandomErasing rule transcribed one image at a time, the erasing itself against a loop over the
boxes, and the alternating flips. Fast enough for mutation testing (benchmarks/mutation.py)."""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace

import pytest
import torch

from resnetlab.data.augment import (
    CONFIG_NAMES,
    IMAGE_OPS,
    Augment,
    ImageOp,
    ImageOps,
    alternate_flip,
    check_augment,
    draw_erasing,
    erase,
    image_ops,
    sample_generator,
    stream_seed,
)
from resnetlab.data.trivial_augment import OPS, apply_op, draw_op
from resnetlab.errors import UsageError

# -- the settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,line",
    [
        ({"crop_padding": -1}, "crop padding must be a whole number of pixels >= 0, not -1"),
        ({"crop_padding": 1.5}, "crop padding must be a whole number of pixels >= 0, not 1.5"),
        ({"crop_padding": "2"}, "crop padding must be a whole number of pixels >= 0, not '2'"),
        ({"erasing": -0.01}, "random-erasing probability must lie in [0, 1], not -0.01"),
        ({"erasing": 1.01}, "random-erasing probability must lie in [0, 1], not 1.01"),
        ({"erasing": 1.5}, "random-erasing probability must lie in [0, 1], not 1.5"),
        (
            {"alternate_flip": True},
            "alternating flips need flips: add --flip, or drop --alternate-flip",
        ),
        (
            {"resized_crop": True, "crop_padding": 1},
            "a random-resized crop replaces the padded crop: drop --crop-padding or "
            "--random-resized-crop",
        ),
    ],
)
def test_each_bad_setting_is_refused_in_its_own_line(settings, line):
    with pytest.raises(UsageError) as e:
        Augment(**settings)
    assert str(e.value) == line


def test_each_boundary_setting_is_taken():
    for settings in (
        {"crop_padding": 0},
        {"crop_padding": 1},
        {"erasing": 0.0},
        {"erasing": 1.0},
        {"flip": True},
        {"flip": True, "alternate_flip": True},
        {"resized_crop": True},
        {"resized_crop": True, "flip": True, "erasing": 0.5, "trivial": True},
    ):
        augment = Augment(**settings)
        assert all(getattr(augment, k) == v for k, v in settings.items()), settings


def test_the_settings_are_read_from_the_configuration_by_their_names():
    """Each field from its own setting (a distinct value each), resized crops on streamed data
    only: a config whose resized crop is off keeps it off on streamed data too."""
    config = SimpleNamespace(
        crop_padding=0, flip=True, erasing=0.25, alternate_flip=True,
        trivial_augment=True, random_resized_crop=True,
        trivial=False, resized_crop=False,  # the fields' own names: not the settings'
    )  # fmt: skip
    assert set(CONFIG_NAMES) == {"trivial", "resized_crop"}
    expected = dict(crop_padding=0, flip=True, erasing=0.25, alternate_flip=True, trivial=True)
    assert Augment.of(config, streamed=True) == Augment(**expected, resized_crop=True)
    assert Augment.of(config, streamed=False) == Augment(**expected, resized_crop=False)
    plain = SimpleNamespace(**{**vars(config), "random_resized_crop": False, "crop_padding": 3})
    assert Augment.of(plain, streamed=True) == Augment(**{**expected, "crop_padding": 3})


@pytest.mark.parametrize(
    "settings",
    [
        {"crop_padding": 1},
        {"flip": True},
        {"erasing": 0.01},
        {"erasing": 1.0},
        {"resized_crop": True},
        {"trivial": True},
    ],
)
def test_each_augmentation_alone_makes_it_active(settings):
    assert Augment(**settings).active


def test_no_augmentation_is_inactive():
    assert not Augment().active
    assert not Augment(crop_padding=0, erasing=0.0).active


def test_augmentation_needs_a_shuffling_loader():
    active = Augment(flip=True)
    assert check_augment(active, shuffle=True) is active
    with pytest.raises(UsageError) as e:
        check_augment(active, shuffle=False)
    assert str(e.value) == (
        "augmentation is for training loaders (shuffle=True); evaluation sees the images as they are"
    )
    for shuffle in (False, True):
        assert check_augment(None, shuffle) == Augment()
        inactive = Augment(crop_padding=0)
        assert check_augment(inactive, shuffle) is inactive


# -- the per-image ops ------------------------------------------------------------------------------


def test_trivial_augment_is_the_one_per_image_op_and_on_only_when_asked():
    assert [op.name for op in IMAGE_OPS] == ["trivial"] and IMAGE_OPS[0].size == 2
    assert image_ops(Augment(flip=True, crop_padding=2, erasing=1.0)) == []
    assert image_ops(Augment(trivial=True)) == [IMAGE_OPS[0]]


def test_the_trivial_op_draws_and_applies_trivial_augment_wide():
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8, generator=gen)
    ops = ImageOps(Augment(trivial=True), tuple(image_ops(Augment(trivial=True))))
    changed = 0
    for seed in range(12):
        index, magnitude = draw_op(torch.Generator().manual_seed(seed))
        expected = apply_op(image, OPS[index], magnitude)
        got = ops(image, torch.Generator().manual_seed(seed))
        assert torch.equal(got, expected), (seed, OPS[index], magnitude)
        changed += not torch.equal(got, image)
    assert changed >= 6  # the draws differ, and most ops change the image


def test_ops_run_in_turn_each_with_its_augment_and_the_one_generator():
    calls = []

    def draw(name):
        def draw_(augment, gen):
            calls.append((name, augment, gen))
            return (float(torch.randint(1, 100, (), generator=gen)),)

        return draw_

    add = ImageOp("add", 1, draw("add"), lambda x, p: x + p[0])
    double = ImageOp("double", 1, draw("double"), lambda x, p: x * 2 + p[0])
    augment, gen = Augment(flip=True), torch.Generator().manual_seed(5)
    out = ImageOps(augment, (add, double))(torch.zeros(2), gen)
    reference = torch.Generator().manual_seed(5)
    a, b = (float(torch.randint(1, 100, (), generator=reference)) for _ in range(2))
    assert torch.equal(out, torch.full((2,), (0 + a) * 2 + b))
    assert calls == [("add", augment, gen), ("double", augment, gen)]


# -- the seeds --------------------------------------------------------------------------------------


def test_a_stream_seed_is_63_bits_of_the_blake2b_digest_of_its_three_parts():
    seeds = [stream_seed(s, e, name) for s in range(8) for e in range(4) for name in ("a", "bc")]
    for s in range(3):
        text = f"{s}/{s + 1}/sample/{s + 2}".encode()
        digest = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
        assert stream_seed(s, s + 1, f"sample/{s + 2}") == digest % 2**63
    assert len(set(seeds)) == len(seeds)  # each part matters
    assert all(0 <= v < 2**63 for v in seeds) and max(seeds) >= 2**62  # all 63 bits used


def test_a_samples_generator_is_seeded_by_its_own_stream():
    def draws(gen):
        return torch.rand(4, generator=gen, dtype=torch.float64)

    for seed, epoch, index in ((0, 0, 0), (3, 2, 17)):
        reference = torch.Generator().manual_seed(stream_seed(seed, epoch, f"sample/{index}"))
        assert torch.equal(draws(sample_generator(seed, epoch, index)), draws(reference))
    firsts = {draws(sample_generator(*key))[0].item() for key in ((1, 0, 0), (0, 1, 0), (0, 0, 1))}
    assert len(firsts) == 3


def test_alternating_flips_start_from_each_samples_own_coin_and_alternate():
    for seed in (0, 7):
        starts = [alternate_flip(seed, 0, i) for i in range(64)]
        assert 16 < sum(starts) < 48  # a coin of each sample's own
        for i, start in enumerate(starts):
            coin = stream_seed(seed, 0, f"flip/{i}") % 2 == 1
            assert start is coin
            assert [alternate_flip(seed, e, i) for e in range(1, 5)] == [not coin, coin] * 2
    assert [alternate_flip(0, 0, i) for i in range(64)] != [
        alternate_flip(7, 0, i) for i in range(64)
    ]


# -- random erasing ---------------------------------------------------------------------------------


def torchvision_erasing(u: torch.Tensor, h: int, w: int) -> tuple[bool, int, int, int, int]:
    """torchvision's RandomErasing.get_params for one h x w image, its uniforms taken from `u`
    ([10, 4] float64) instead of its global generator: (fits, top, left, height, width). Like
    resnetlab, a box must also be at least a pixel each way."""
    lo, hi = math.log(0.3), math.log(1 / 0.3)
    for u0, u1, u2, u3 in u.tolist():
        erase_area = h * w * (0.02 + (0.4 - 0.02) * u0)
        aspect = math.exp(lo + (hi - lo) * u1)
        bh, bw = round(math.sqrt(erase_area * aspect)), round(math.sqrt(erase_area / aspect))
        if 0 < bh < h and 0 < bw < w:
            return True, int(u2 * (h - bh + 1)), int(u3 * (w - bw + 1)), bh, bw
    return False, 0, 0, 0, 0


@pytest.mark.parametrize("h,w", [(8, 8), (32, 32), (2, 2), (3, 40), (40, 3), (1, 9), (5, 12)])
def test_erasing_boxes_follow_torchvisions_rule_image_by_image(h, w):
    m, p = 200, 0.5
    boxes = draw_erasing(torch.Generator().manual_seed(h * 100 + w), m, h, w, p)
    replay = torch.Generator().manual_seed(h * 100 + w)
    coins = torch.rand(m, generator=replay)  # float32, as torchvision's torch.rand(1)
    u = torch.rand(m, 10, 4, generator=replay, dtype=torch.float64)
    assert boxes.shape == (5, m) and boxes.dtype == torch.int64
    later = 0
    for i in range(m):
        fits, top, left, bh, bw = torchvision_erasing(u[i], h, w)
        assert boxes[0, i].item() == int(fits and coins[i].item() < p), i
        if fits:
            assert boxes[1:, i].tolist() == [top, left, bh, bw], i
            later += not torchvision_erasing(u[i, :1], h, w)[0]
    if (h, w) == (1, 9):
        assert not boxes[0].any()  # no box fits a single row
    if (h, w) in ((3, 40), (2, 2)):
        assert later > 10  # boxes from a later attempt than the first were checked


def test_the_erasing_probability_is_a_strict_bound_and_reaches_both_ends():
    first = torch.rand(1, generator=torch.Generator().manual_seed(9)).item()
    at_first = draw_erasing(torch.Generator().manual_seed(9), 50, 16, 16, first)
    assert at_first[0, 0] == 0  # a draw equal to p is not erased: torchvision's `rand < p`
    never = draw_erasing(torch.Generator().manual_seed(9), 50, 16, 16, 0.0)
    always = draw_erasing(torch.Generator().manual_seed(9), 50, 16, 16, 1.0)
    assert not never[0].any() and always[0].all()  # 16 x 16 images: some attempt fits each
    assert torch.equal(never[1:], always[1:])  # the boxes do not depend on p


def test_erasing_sets_each_applied_box_to_zero_in_place_and_nothing_else():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 2, 7, 9, generator=gen) + 1.0  # nothing is 0 before
    boxes = torch.tensor(
        [
            [1, 1, 0, 1, 1, 1],  # applied
            [0, 2, 0, 6, 0, 3],  # top
            [0, 3, 0, 8, 5, 0],  # left
            [7, 2, 3, 1, 4, 2],  # height
            [9, 4, 3, 1, 4, 1],  # width
        ]
    )
    expected = x.clone()
    for i, (applied, top, left, bh, bw) in enumerate(boxes.T.tolist()):
        if applied:
            expected[i, :, top : top + bh, left : left + bw] = 0.0
    out = erase(x, boxes)
    assert out is x and torch.equal(x, expected)
    assert (x == 0).sum() == 2 * (63 + 8 + 1 + 16 + 2)  # each box's area, on both channels
