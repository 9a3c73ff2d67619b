"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on whole batches, as torchvision's
references/classification/train.py applies them (transforms.v2.MixUp and CutMix in a
RandomChoice, in the collate function): each batch is mixed with itself rolled by one example,
with a weight lam ~ Beta(alpha, alpha), and its targets become probabilities,

    lam * onehot(y) + (1 - lam) * onehot(y.roll(1)),

which the training loss takes as they are (F.cross_entropy with probability targets, label
smoothing applied on top). Mixup blends the images, lam * x + (1 - lam) * x.roll(1). CutMix
pastes a box of the rolled batch, centred at a uniform pixel, of sides sqrt(1 - lam) times the
image's clipped at the border, and sets lam to the area left unpasted. With both on, each batch
takes one of them with probability 1/2.

`MixedLoader` wraps a training loader: every epoch's draws come from a generator seeded by (seed,
epoch) and are made batch after batch, so a run resumed mid-epoch (which replays the loader up to
its step) mixes as the unbroken run did, with no state to save; several processes draw the same
parameters and each mixes its share of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from resnetlab.data.augment import stream_seed
from resnetlab.errors import UsageError


class Mix(NamedTuple):
    """One batch's mixing: `kind` "mixup" or "cutmix", the target weight `lam` of the batch itself
    (for CutMix, the unpasted area), and CutMix's box (top, left, bottom, right; pixels) or None."""

    kind: str
    lam: float
    box: tuple[int, int, int, int] | None = None


def beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) (torch's Dirichlet sampler, as torch.distributions.Beta)."""
    concentration = torch.tensor([alpha, alpha], dtype=torch.float64)
    return float(torch._sample_dirichlet(concentration, generator=generator)[0])


def cutmix_box(lam: float, height: int, width: int, generator: torch.Generator) -> Mix:
    """transforms.v2.CutMix's box for a draw `lam`: centre (r_y, r_x) uniform over the pixels,
    half-sides int(sqrt(1 - lam) / 2 * side), clipped to the image; lam becomes the area outside it."""
    r_x = int(torch.randint(width, (1,), generator=generator))
    r_y = int(torch.randint(height, (1,), generator=generator))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    left, top = max(r_x - half_w, 0), max(r_y - half_h, 0)
    right, bottom = min(r_x + half_w, width), min(r_y + half_h, height)
    area = (right - left) * (bottom - top) / (width * height)
    return Mix("cutmix", 1.0 - area, (top, left, bottom, right))


def draw_mix(
    mixup: float, cutmix: float, height: int, width: int, generator: torch.Generator
) -> Mix:
    """One batch's mixing: mixup or CutMix (the one whose alpha is not 0, or either with
    probability 1/2 when both are on), with its lam (and box)."""
    if mixup and cutmix:
        use_cutmix = bool(torch.randint(2, (1,), generator=generator))
    else:
        use_cutmix = bool(cutmix)
    if use_cutmix:
        return cutmix_box(beta(cutmix, generator), height, width, generator)
    return Mix("mixup", beta(mixup, generator))


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, mix: Mix
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) of a batch mixed with itself rolled by one: float images [b, C, H, W]
    and class indices [b] -> mixed images and probability targets [b, num_classes]."""
    target = F.one_hot(y, num_classes).to(x.dtype)
    target = target.roll(1, 0).mul_(1.0 - mix.lam).add_(target.mul(mix.lam))
    if mix.kind == "mixup":
        out = x.roll(1, 0).mul_(1.0 - mix.lam).add_(x.mul(mix.lam))
    else:
        top, left, bottom, right = mix.box
        out = x.clone()
        out[..., top:bottom, left:right] = x.roll(1, 0)[..., top:bottom, left:right]
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out, target


class MixedLoader:
    """A training loader whose batches are mixed (see the module docstring): the same interface
    as the loader it wraps, whose other attributes it passes through."""

    def __init__(
        self, loader, *, mixup: float, cutmix: float, num_classes: int, seed: int = 0
    ) -> None:
        if mixup < 0 or cutmix < 0 or not (mixup or cutmix):
            raise UsageError(
                f"mixing needs an alpha > 0 for mixup or cutmix, got {mixup} and {cutmix}"
            )
        self.loader, self.mixup, self.cutmix = loader, mixup, cutmix
        self.num_classes, self.mix_seed, self.epoch = num_classes, seed, 0

    def __getattr__(self, name: str):
        return getattr(self.__dict__["loader"], name)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(stream_seed(self.mix_seed, self.epoch, "mix"))
        for x, y in self.loader:
            if x is None:  # a batch done before a resume (StreamLoader.skip_next), not read:
                # its draw is still made, at the size it had, so the later batches mix as before
                draw_mix(self.mixup, self.cutmix, *self.loader.out_size, gen)
                yield None, None
                continue
            mix = draw_mix(self.mixup, self.cutmix, x.shape[-2], x.shape[-1], gen)
            yield mix_batch(x, y, self.num_classes, mix)
