"""TrivialAugmentWide on uint8 tensors: each operation against a reference computed another way
(Pillow's ImageOps where its semantics are torchvision's, numpy formulas, an explicit
nearest-neighbour coordinate map, torch.rot90), and the draws' determinism."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from resnetlab.data.trivial_augment import OPS, SPACE, apply_op, draw_op, trivial_augment_wide


def image(c: int = 3, h: int = 12, w: int = 10, seed: int = 0, low: int = 0, high: int = 256):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (c, h, w), dtype=torch.uint8, generator=gen)


def per_channel_pil(img: torch.Tensor, op) -> torch.Tensor:
    """`op` (a PIL ImageOps function) applied to each channel as a mode-L image."""
    return torch.stack(
        [torch.from_numpy(np.array(op(Image.fromarray(ch.numpy(), "L")))) for ch in img]
    )


def test_the_operation_space_is_torchvisions():
    assert OPS == (
        "Identity",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "Brightness",
        "Color",
        "Contrast",
        "Sharpness",
        "Posterize",
        "Solarize",
        "AutoContrast",
        "Equalize",
    )
    assert (
        SPACE["Posterize"][0].tolist()
        == [8] * 3 + [7] * 5 + [6] * 5 + [5] * 5 + [4] * 5 + [3] * 5 + [2] * 3
    )
    assert SPACE["Rotate"][0][-1] == 135 and len(SPACE["Rotate"][0]) == 31
    assert SPACE["Solarize"][0][0] == 255 and SPACE["Solarize"][0][-1] == 0


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_posterize_is_pils(bits):
    img = image()
    expected = per_channel_pil(img, lambda im: ImageOps.posterize(im, bits))
    assert torch.equal(apply_op(img, "Posterize", float(bits)), expected)


@pytest.mark.parametrize("threshold", [255.0, 128.0, 101.5, 0.0])
def test_solarize_is_pils(threshold):
    img = image()
    expected = per_channel_pil(img, lambda im: ImageOps.solarize(im, threshold))
    assert torch.equal(apply_op(img, "Solarize", threshold), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_equalize_is_pils(seed):
    img = image(h=64, w=64, seed=seed, low=40, high=140)  # narrow histogram: the table stretches it
    img[1] = 7  # a constant channel stays as it is
    out = apply_op(img, "Equalize", 0.0)
    assert torch.equal(out, per_channel_pil(img, ImageOps.equalize))
    assert not torch.equal(out, img)


def test_autocontrast_stretches_each_channel_to_the_full_range():
    img = image(low=30, high=200)
    img[2] = 99  # constant: unchanged
    a = img.numpy().astype(np.float32)
    low, high = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    scale = np.where(high > low, np.float32(255) / np.maximum(high - low, 1), 1).astype(np.float32)
    low = np.where(high > low, low, 0)
    expected = np.clip((a - low) * scale, 0, 255).astype(np.uint8)
    out = apply_op(img, "AutoContrast", 0.0)
    assert np.array_equal(out.numpy(), expected)
    assert out[0].min() == 0 and out[0].max() == 255 and (out[2] == 99).all()


def blend(a: np.ndarray, b: np.ndarray, ratio: float) -> np.ndarray:
    """torchvision's _blend in numpy: float32, clamp, truncate."""
    r = np.float32(ratio)
    mixed = r * a.astype(np.float32) + (np.float32(1) - r) * b.astype(np.float32)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def luma(a: np.ndarray) -> np.ndarray:
    r, g, b = a.astype(np.float32)
    return (np.float32(0.2989) * r + np.float32(0.587) * g + np.float32(0.114) * b).astype(
        np.uint8
    )[None]


@pytest.mark.parametrize("magnitude", [0.99, -0.66, 0.33])
def test_brightness_color_contrast_are_blends(magnitude):
    img = image()
    a = img.numpy()
    brightness = blend(a, np.zeros_like(a), 1 + magnitude)
    color = blend(a, luma(a), 1 + magnitude)
    contrast = blend(a, np.full((1, 1, 1), luma(a).astype(np.float32).mean()), 1 + magnitude)
    assert np.array_equal(apply_op(img, "Brightness", magnitude).numpy(), brightness)
    assert np.array_equal(apply_op(img, "Color", magnitude).numpy(), color)
    assert np.array_equal(apply_op(img, "Contrast", magnitude).numpy(), contrast)
    gray = image(c=1)
    assert torch.equal(apply_op(gray, "Color", magnitude), gray)  # one channel: no saturation
    g = gray.numpy()
    expected = blend(g, np.full((1, 1, 1), g.astype(np.float32).mean()), 1 + magnitude)
    assert np.array_equal(apply_op(gray, "Contrast", magnitude).numpy(), expected)


@pytest.mark.parametrize("magnitude", [0.99, -0.5])
def test_sharpness_blends_with_the_smoothed_inner_pixels(magnitude):
    img = image()
    a = img.numpy().astype(np.float64)
    smooth = a.copy()
    c, h, w = a.shape
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            window = a[:, i - 1 : i + 2, j - 1 : j + 2].sum(axis=(1, 2)) + 4 * a[:, i, j]
            smooth[:, i, j] = np.round(window / 13)
    expected = blend(img.numpy(), smooth.astype(np.uint8), 1 + magnitude)
    assert np.array_equal(apply_op(img, "Sharpness", magnitude).numpy(), expected)
    tiny = image(h=2, w=5)
    assert torch.equal(apply_op(tiny, "Sharpness", magnitude), tiny)


def nearest_map(img: torch.Tensor, source) -> tuple[torch.Tensor, torch.Tensor]:
    """The image sampled at `source(x, y)` -> (x_src, y_src), both in pixel units from the top-left
    corner with pixel centres at +0.5, nearest neighbour (ties to even, as grid_sample), zero
    outside; and a mask of the pixels whose source lies within 1e-4 of a tie (float32 may break
    those either way)."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    tie = torch.zeros(h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            sx, sy = source(j + 0.5, i + 0.5)
            sx, sy = sx - 0.5, sy - 0.5  # pixel index coordinates
            tie[i, j] = any(abs(abs(v - math.floor(v)) - 0.5) < 1e-4 for v in (sx, sy))
            xi, yi = round(sx), round(sy)
            if 0 <= xi < w and 0 <= yi < h:
                out[:, i, j] = img[:, yi, xi]
    return out, tie


GEOMETRY = {
    # output pixel -> input pixel, in the words of each operation
    "ShearX": lambda m, w, h: lambda x, y: (x + m * y, y),  # PIL's (1, m, 0, 0, 1, 0)
    "ShearY": lambda m, w, h: lambda x, y: (x, y + m * x),
    "TranslateX": lambda m, w, h: lambda x, y: (x - int(m), y),
    "TranslateY": lambda m, w, h: lambda x, y: (x, y - int(m)),
    # counter-clockwise as displayed (y down): the output at angle phi shows the input at phi - angle
    "Rotate": lambda m, w, h: (
        lambda x, y: (
            w / 2
            + math.cos(math.radians(m)) * (x - w / 2)
            - math.sin(math.radians(m)) * (y - h / 2),
            h / 2
            + math.sin(math.radians(m)) * (x - w / 2)
            + math.cos(math.radians(m)) * (y - h / 2),
        )
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRY))
@pytest.mark.parametrize("bin_, sign", [(30, 1), (17, -1), (5, 1)])
def test_geometric_operations_follow_their_coordinate_map(name, bin_, sign):
    img = image(h=11, w=14)
    magnitude = sign * float(SPACE[name][0][bin_])
    expected, tie = nearest_map(img, GEOMETRY[name](magnitude, 14, 11))
    out = apply_op(img, name, magnitude)
    differ = (out != expected).any(0)
    assert not (differ & ~tie).any(), f"{name} {magnitude}: pixels differ away from ties"
    assert tie.float().mean() < 0.2
    assert not torch.equal(out, img)


def test_rotating_90_degrees_is_rot90():
    img = image(h=8, w=8)
    assert float(SPACE["Rotate"][0][20]) == 90.0
    assert torch.equal(apply_op(img, "Rotate", 90.0), torch.rot90(img, 1, (1, 2)))
    assert torch.equal(apply_op(img, "Rotate", -90.0), torch.rot90(img, -1, (1, 2)))


def test_translation_by_32_pixels_moves_the_image_and_fills_black():
    img = image(h=40, w=36, low=1)
    out = apply_op(img, "TranslateX", 32.0)
    assert torch.equal(out[:, :, 32:], img[:, :, :4]) and (out[:, :, :32] == 0).all()
    out = apply_op(img, "TranslateY", -32.0)
    assert torch.equal(out[:, :8], img[:, 32:]) and (out[:, 8:] == 0).all()


def test_draws_are_determined_by_the_generator_and_cover_every_operation():
    img = image()
    a = [
        trivial_augment_wide(img, g) for g in [torch.Generator().manual_seed(5)] for _ in range(20)
    ]
    b = [
        trivial_augment_wide(img, g) for g in [torch.Generator().manual_seed(5)] for _ in range(20)
    ]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    gen = torch.Generator().manual_seed(0)
    draws = [draw_op(gen) for _ in range(3000)]
    counts = Counter(OPS[i] for i, _ in draws)
    assert set(counts) == set(OPS) and min(counts.values()) > 150  # uniform: 214 expected each
    rotations = [m for i, m in draws if OPS[i] == "Rotate"]
    assert min(rotations) < 0 < max(rotations)  # signed: negated half the time
    assert all(float(m) in SPACE["Rotate"][0].tolist() for m in map(abs, rotations))
    assert all(m == 0.0 for i, m in draws if OPS[i] in ("Identity", "Equalize", "AutoContrast"))
    other = [
        trivial_augment_wide(img, g) for g in [torch.Generator().manual_seed(6)] for _ in range(20)
    ]
    assert not all(torch.equal(x, y) for x, y in zip(a, other))
    assert all(x.dtype == torch.uint8 and x.shape == img.shape for x in a)
