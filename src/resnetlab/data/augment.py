"""The training augmentations both loaders apply, and their shared random draws: the settings
(`Augment`), the seeds of each purpose and epoch (`stream_seed`), random erasing's boxes, the
alternating flips and each sample's generator. The in-memory loader (data/loader.py) draws them
for whole global batches, the streamed one (data/stream.py) per sample in its workers; both take
them from here, so an augmentation is added in one place (docs/augmentations.md).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from resnetlab.data.trivial_augment import OPS, apply_op, draw_op
from resnetlab.errors import UsageError

_ERASE_ATTEMPTS = 10  # Zhong et al.: draw a box up to 10 times until it fits inside the image
_ERASE_AREA = (0.02, 0.4)  # fraction of the image area
_ERASE_ASPECT = 0.3  # aspect ratio drawn log-uniformly from [0.3, 1/0.3]
# Augment's fields whose training setting (train/config.py) has another name; the rest share it
CONFIG_NAMES = {"trivial": "trivial_augment", "resized_crop": "random_resized_crop"}


@dataclass(frozen=True)
class Augment:
    """Training augmentations, applied per sample as batched tensor operations.

    crop_padding: pad each side with this many zero (black) pixels, then crop a random window of
        the image's size (He et al. 2016, torchvision's RandomCrop(padding=p)); at the output size.
    flip: mirror left-right with probability 1/2.
    alternate_flip: with flip, mirror each image in every other epoch instead, from a random start
        of its own (airbench's alternating flip: no image goes several epochs without both views).
    erasing: probability of random erasing (Zhong et al. 2017): a box of 2-40 % of the area,
        aspect ratio 0.3-3.3, set to 0 after normalization (the mean), as torchvision's RandomErasing.
    trivial: TrivialAugmentWide (data/trivial_augment.py) on each uint8 image as the dataset holds
        it, before the resize, crop and flip; its draws come from a stream of their own.
    resized_crop: torchvision's RandomResizedCrop instead of the padded crop; it cuts boxes from
        full-resolution images, which only streamed data keeps (data/stream.py): Loader refuses it.
    """

    crop_padding: int = 0
    flip: bool = False
    erasing: float = 0.0
    alternate_flip: bool = False
    trivial: bool = False
    resized_crop: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise UsageError(
                f"crop padding must be a whole number of pixels >= 0, not {self.crop_padding!r}"
            )
        if not 0.0 <= self.erasing <= 1.0:
            raise UsageError(f"random-erasing probability must lie in [0, 1], not {self.erasing!r}")
        if self.alternate_flip and not self.flip:
            raise UsageError("alternating flips need flips: add --flip, or drop --alternate-flip")
        if self.resized_crop and self.crop_padding:
            raise UsageError(
                "a random-resized crop replaces the padded crop: drop --crop-padding or "
                "--random-resized-crop"
            )

    @classmethod
    def of(cls, config, streamed: bool) -> Augment:
        """The augmentations `config` asks for (a TrainConfig, or any object with its settings'
        names), each field read by its setting's name (CONFIG_NAMES); random-resized crops only
        on streamed data, the only data that keeps full-resolution images."""
        values = {f.name: getattr(config, CONFIG_NAMES.get(f.name, f.name)) for f in fields(cls)}
        values["resized_crop"] = values["resized_crop"] and streamed
        return cls(**values)

    @property
    def active(self) -> bool:
        return (
            self.crop_padding > 0
            or self.flip
            or self.erasing > 0
            or self.resized_crop
            or bool(image_ops(self))
        )


@dataclass(frozen=True)
class ImageOp:
    """An augmentation of one uint8 C x H x W image, which both loaders apply without knowing
    it: the in-memory loader draws every image's parameters of an epoch from a stream of the op's
    own (`stream_seed(seed, epoch, name)`) and applies them before the resize, crop and flip; the
    streamed loader draws and applies them in its workers, after the crop, from each sample's
    generator (`sample_generator`). `draw` gives `size` numbers (kept as float64)."""

    name: str  # the Augment field that turns it on, and its stream of draws
    size: int
    draw: Callable[[Augment, torch.Generator], tuple[float, ...]]
    apply: Callable[[torch.Tensor, tuple[float, ...]], torch.Tensor]


def _trivial_draw(augment: Augment, gen: torch.Generator) -> tuple[int, float]:
    return draw_op(gen)


def _trivial_apply(image: torch.Tensor, params: tuple[float, ...]) -> torch.Tensor:
    op, magnitude = params
    return apply_op(image, OPS[int(op)], magnitude)


# The per-image ops, in the order they are applied; each is on where its Augment field is true
# (or > 0). A new one is a field of Augment and an entry here (docs/augmentations.md).
# Module-level functions, not lambdas: the streamed loader's workers may receive them pickled.
IMAGE_OPS = (ImageOp("trivial", 2, _trivial_draw, _trivial_apply),)


def image_ops(augment: Augment) -> list[ImageOp]:
    """The per-image ops `augment` turns on, in the order they are applied."""
    return [op for op in IMAGE_OPS if getattr(augment, op.name)]


@dataclass(frozen=True)
class ImageOps:
    """`ops` applied in turn to one image with one generator: the streamed loader's per-sample
    transform (data/stream.py's extra_transform), picklable for its workers."""

    augment: Augment
    ops: tuple[ImageOp, ...]

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for op in self.ops:
            image = op.apply(image, op.draw(self.augment, gen))
        return image


def stream_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for one purpose of one epoch: the same on every process and every call."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def check_augment(augment: Augment | None, shuffle: bool) -> Augment:
    """`augment` (none: an inactive Augment); a UsageError for augmentation without shuffling."""
    augment = augment or Augment()
    if augment.active and not shuffle:
        raise UsageError(
            "augmentation is for training loaders (shuffle=True); evaluation sees the images as they are"
        )
    return augment


def draw_erasing(gen: torch.Generator, m: int, h: int, w: int, p: float) -> torch.Tensor:
    """Random erasing's boxes for m images of h x w, as torchvision's RandomErasing draws them
    (applied with probability p; 10 attempts at a box of 2-40 % of the area and aspect ratio
    0.3-3.3, the first that fits): [5, m] int64 rows (applied, top, left, height, width)."""
    apply = torch.rand(m, generator=gen) < p
    u = torch.rand(m, _ERASE_ATTEMPTS, 4, generator=gen, dtype=torch.float64)
    area = (_ERASE_AREA[0] + u[..., 0] * (_ERASE_AREA[1] - _ERASE_AREA[0])) * h * w
    aspect = torch.exp(math.log(_ERASE_ASPECT) * (1 - 2 * u[..., 1]))
    bh, bw = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first attempt that fits
    pick = lambda t: t.gather(1, first)[:, 0]  # noqa: E731
    bh, bw = pick(bh), pick(bw)
    top = (pick(u[..., 2]) * (h - bh + 1)).long()
    left = (pick(u[..., 3]) * (w - bw + 1)).long()
    apply &= fits.any(dim=1)
    return torch.stack([apply.long(), top, left, bh, bw])


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """x (normalised, [b, C, H, W]) with each applied box of `boxes` (draw_erasing's rows) set
    to 0, the mean, in place."""
    apply, top, left, bh, bw = boxes
    h, w = x.shape[-2:]
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys[None] >= top[:, None]) & (ys[None] < (top + bh)[:, None])
    in_cols = (xs[None] >= left[:, None]) & (xs[None] < (left + bw)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply.bool()[:, None, None]
    return x.masked_fill_(mask[:, None], 0.0)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of sample `index`'s augmentation in `epoch`: a pure function of the three."""
    return torch.Generator().manual_seed(stream_seed(seed, epoch, f"sample/{index}"))


def alternate_flip(seed: int, epoch: int, index: int) -> bool:
    """Whether sample `index` is mirrored in `epoch` under alternating flips: a random start of
    its own (from the seed), then every other epoch."""
    return bool(stream_seed(seed, 0, f"flip/{index}") & 1) ^ bool(epoch % 2)
