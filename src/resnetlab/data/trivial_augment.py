"""TrivialAugmentWide (Müller and Hutter 2021) on uint8 images, with torch alone.

torchvision's `transforms.TrivialAugmentWide()` with its defaults (31 magnitude bins, nearest
interpolation, fill 0), re-implemented on the same tensor arithmetic as torchvision's
`_functional_tensor` so that a uint8 C x H x W image (C = 1 or 3) comes out as torchvision's
would: each image gets one operation, drawn uniformly from 14, at a magnitude drawn uniformly
from its 31 bins, negated with probability 1/2 for the signed ones. The draws follow
torchvision's order (operation, then bin where the operation has bins, then sign where signed),
from the `torch.Generator` given instead of the global one.

`draw_op(generator)` and `apply_op(img, name, magnitude)` are the two halves of
`trivial_augment_wide`: the in-memory loader draws a whole global batch's operations first (so
several processes draw the same stream), then applies each process's share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NUM_BINS = 31


def _space() -> dict[str, tuple[torch.Tensor, bool]]:
    """Each operation's magnitude bins and whether it is signed: torchvision's
    TrivialAugmentWide._augmentation_space(31), in its order."""
    n = NUM_BINS
    return {
        "Identity": (torch.tensor(0.0), False),
        "ShearX": (torch.linspace(0.0, 0.99, n), True),
        "ShearY": (torch.linspace(0.0, 0.99, n), True),
        "TranslateX": (torch.linspace(0.0, 32.0, n), True),
        "TranslateY": (torch.linspace(0.0, 32.0, n), True),
        "Rotate": (torch.linspace(0.0, 135.0, n), True),
        "Brightness": (torch.linspace(0.0, 0.99, n), True),
        "Color": (torch.linspace(0.0, 0.99, n), True),
        "Contrast": (torch.linspace(0.0, 0.99, n), True),
        "Sharpness": (torch.linspace(0.0, 0.99, n), True),
        "Posterize": (8 - (torch.arange(n) / ((n - 1) / 6)).round().int(), False),
        "Solarize": (torch.linspace(255.0, 0.0, n), False),
        "AutoContrast": (torch.tensor(0.0), False),
        "Equalize": (torch.tensor(0.0), False),
    }


SPACE = _space()
OPS = tuple(SPACE)


def draw_op(generator: torch.Generator) -> tuple[int, float]:
    """(index into OPS, magnitude) as TrivialAugmentWide.forward draws them."""
    index = int(torch.randint(len(OPS), (1,), generator=generator))
    magnitudes, signed = SPACE[OPS[index]]
    magnitude = (
        float(magnitudes[int(torch.randint(len(magnitudes), (1,), generator=generator))])
        if magnitudes.ndim > 0
        else 0.0
    )
    if signed and int(torch.randint(2, (1,), generator=generator)):
        magnitude *= -1.0
    return index, magnitude


def trivial_augment_wide(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One TrivialAugmentWide draw applied to a uint8 C x H x W image (a new tensor, or `img`
    itself for the identity)."""
    index, magnitude = draw_op(generator)
    return apply_op(img, OPS[index], magnitude)


def apply_op(img: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision.transforms.autoaugment._apply_op on a uint8 C x H x W tensor."""
    if name in _GEOMETRIC:
        return _affine(img, _GEOMETRIC[name](magnitude, *img.shape[-2:]))
    if name == "Brightness":
        return _blend(img, torch.zeros_like(img), 1.0 + magnitude)
    if name == "Color":
        return img if img.shape[0] == 1 else _blend(img, _grayscale(img), 1.0 + magnitude)
    if name == "Contrast":
        gray = _grayscale(img) if img.shape[0] == 3 else img
        return _blend(img, gray.float().mean(dim=(-3, -2, -1), keepdim=True), 1.0 + magnitude)
    if name == "Sharpness":
        if img.shape[-1] <= 2 or img.shape[-2] <= 2:
            return img
        return _blend(img, _smoothed(img), 1.0 + magnitude)
    if name == "Posterize":
        return img & (256 - 2 ** (8 - int(magnitude)))
    if name == "Solarize":
        return torch.where(img >= magnitude, 255 - img, img)
    if name == "AutoContrast":
        return _autocontrast(img)
    if name == "Equalize":
        return torch.stack([_equalize_channel(c) for c in img])
    return img  # Identity


def _blend(img: torch.Tensor, other: torch.Tensor, ratio: float) -> torch.Tensor:
    """torchvision's _blend: ratio * img + (1 - ratio) * other in float32, clamped to [0, 255] and
    truncated back to uint8."""
    return (ratio * img + (1.0 - ratio) * other).clamp(0, 255).to(torch.uint8)


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    """rgb_to_grayscale: ITU-R 601-2 luma in float32, truncated to uint8, 1 x H x W."""
    r, g, b = img.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype).unsqueeze(-3)


def _smoothed(img: torch.Tensor) -> torch.Tensor:
    """_blurred_degenerate_image: the 3 x 3 smoothing filter (1s around a 5, over 13) on the
    inner pixels, rounded to uint8; the border keeps the image's pixels."""
    kernel = torch.ones((3, 3), dtype=torch.float32, device=img.device)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    kernel = kernel.expand(img.shape[-3], 1, 3, 3)
    inner = F.conv2d(img.float().unsqueeze(0), kernel, groups=img.shape[-3])[0]
    result = img.clone()
    result[..., 1:-1, 1:-1] = inner.round().to(torch.uint8)
    return result


def _autocontrast(img: torch.Tensor) -> torch.Tensor:
    """Each channel stretched to [0, 255] (a constant channel is left as it is)."""
    low = img.amin(dim=(-2, -1), keepdim=True).float()
    high = img.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255.0 / (high - low)
    flat = ~torch.isfinite(scale)
    low[flat], scale[flat] = 0, 1
    return ((img - low) * scale).clamp(0, 255).to(torch.uint8)


def _equalize_channel(chan: torch.Tensor) -> torch.Tensor:
    """torchvision's _scale_channel (PIL's ImageOps.equalize): the histogram's cumulative sum as
    a lookup table, in steps of (all pixels but the brightest level's) // 255."""
    hist = torch.bincount(chan.reshape(-1), minlength=256)
    nonzero = hist[hist != 0]
    step = torch.div(nonzero[:-1].sum(), 255, rounding_mode="floor")
    if step == 0:
        return chan
    lut = torch.div(
        torch.cumsum(hist, 0) + torch.div(step, 2, rounding_mode="floor"),
        step,
        rounding_mode="floor",
    )
    lut = F.pad(lut, [1, 0])[:-1].clamp(0, 255)
    return lut[chan.to(torch.int64)].to(torch.uint8)


def _inverse_matrix(center, angle, translate, shear) -> list[float]:
    """torchvision's _get_inverse_affine_matrix at scale 1 (degrees; center and translate in
    pixels from the image centre): output pixel -> input pixel."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _shear_x(magnitude: float, h: int, w: int) -> list[float]:
    # torchvision shears by atan(magnitude) degrees about the top-left corner (center=[0, 0])
    angle = math.degrees(math.atan(magnitude))
    return _inverse_matrix((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), (angle, 0.0))


def _shear_y(magnitude: float, h: int, w: int) -> list[float]:
    angle = math.degrees(math.atan(magnitude))
    return _inverse_matrix((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), (0.0, angle))


def _translate_x(magnitude: float, h: int, w: int) -> list[float]:
    return _inverse_matrix((0.0, 0.0), 0.0, (float(int(magnitude)), 0.0), (0.0, 0.0))


def _translate_y(magnitude: float, h: int, w: int) -> list[float]:
    return _inverse_matrix((0.0, 0.0), 0.0, (0.0, float(int(magnitude))), (0.0, 0.0))


def _rotate(magnitude: float, h: int, w: int) -> list[float]:
    # F.rotate passes -angle to the matrix (its angle is counter-clockwise)
    return _inverse_matrix((0.0, 0.0), -magnitude, (0.0, 0.0), (0.0, 0.0))


_GEOMETRIC = {
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
}


def _affine(img: torch.Tensor, matrix: list[float]) -> torch.Tensor:
    """F_t.affine with nearest interpolation and zero fill: each output pixel's centre, relative
    to the image centre, mapped through `matrix` and sampled by grid_sample (float32, as
    torchvision's _gen_affine_grid and _apply_grid_transform)."""
    h, w = img.shape[-2:]
    theta = torch.tensor(matrix, dtype=torch.float32, device=img.device).reshape(1, 2, 3)
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=img.device)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=img.device))
    base[..., 1].copy_(
        torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=img.device).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=img.device)
    grid = base.view(1, h * w, 3).bmm(theta.transpose(1, 2) / scale).view(1, h, w, 2)
    out = F.grid_sample(
        img.float().unsqueeze(0), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out[0].round().to(torch.uint8)
