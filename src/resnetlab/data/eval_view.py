"""The evaluation view, defined once: how a test image is shown to a trained model.

torchvision's `Resize(resize)` + `CenterCrop(crop)`, with its arithmetic: the shorter side resized
to `resize` and the longer one to int(resize * long / short) (`_compute_resized_output_size`),
by an antialiased bilinear filter (Pillow's, which torch's uint8 kernel follows), then the centre
`crop` x `crop` cut at offsets int(round((side - crop) / 2.0)). JPEG is decoded whole with
libjpeg-turbo's accurate IDCT and upsampling (what Pillow and torchvision's decode_jpeg use), so
the pixels are those a torchvision pipeline evaluates on (tests/data/test_eval_view.py compares
them with a Pillow reimplementation).

The streaming loader applies it to each encoded test image (`EvalView.read`), the in-memory loader
takes its sizes (`in_memory_sizes`), `predict` applies it to decoded images (`EvalView.apply`); a
streamed run records it in its weights' metadata (`to_metadata`), and eval, predict, export and
the report read it back (`from_metadata`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resnetlab.data import decode
from resnetlab.errors import UsageError

EVAL_RATIO = 0.875  # crop / resize by default after random-resized crops (ImageNet's 224 / 256)
META_KEY = "eval_view"
OLD_META_KEY = "eval_transform"  # what streamed runs recorded before (never read then)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side resized to `size`, as torchvision's Resize(size)
    computes it: the longer side int(size * long / short), truncated."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop(crop) in a height x width image."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


@dataclass(frozen=True)
class EvalView:
    """Resize the shorter side to `resize`, then cut the centre `crop` x `crop`."""

    resize: int
    crop: int

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(
                    f"the evaluation view's {name} must be a whole number of pixels >= 1, "
                    f"not {value!r}"
                )
        if self.crop > self.resize:
            raise UsageError(
                f"an evaluation crop of {self.crop} px does not fit images resized to "
                f"{self.resize} px on their shorter side; pass a crop at most the resize"
            )

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded uint8 image [C, H, W] of any size -> uint8 [C, crop, crop]."""
        h, w = image.shape[-2:]
        size = resized_size(h, w, self.resize)
        x = image
        if size != (h, w):  # torchvision returns an image already at the size untouched
            # channels last in memory: torch's uint8 antialiased kernel's fast path
            x = image[None].contiguous(memory_format=torch.channels_last)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True)[0]
        top, left = crop_offsets(*size, self.crop)
        return x[:, top : top + self.crop, left : left + self.crop].contiguous()

    def read(self, data: bytes, channels: int) -> torch.Tensor:
        """Encoded image bytes -> uint8 [channels, crop, crop] (decode.BadImage if they do not
        decode): decoded whole with the accurate IDCT, then `apply`."""
        return self.apply(decode.decode_image(data, channels, accurate=True))

    def in_memory_sizes(self, height: int, width: int) -> tuple[tuple[int, int], int]:
        """What the in-memory Loader takes for images of height x width: (resize, crop)."""
        return resized_size(height, width, self.resize), self.crop

    def to_metadata(self) -> dict:
        return {"resize_shorter": self.resize, "center_crop": self.crop}

    @classmethod
    def from_metadata(cls, meta: dict) -> EvalView | None:
        """The view a weights file's metadata records (None: none, as for in-memory runs and
        files written before views were recorded)."""
        recorded = meta.get(META_KEY) or meta.get(OLD_META_KEY)
        if not isinstance(recorded, dict):
            return None
        try:
            return cls(int(recorded["resize_shorter"]), int(recorded["center_crop"]))
        except (KeyError, TypeError, ValueError, UsageError):
            return None


def default_view(
    side: int, resize: int | None = None, crop: int | None = None, resized_crop: bool = True
) -> EvalView:
    """The view of a run trained at `side` px, with its --eval-resize and --eval-crop (None: not
    given): the crop defaults to the training side; the resize to crop / 0.875 after training on
    random-resized crops (the ImageNet convention), else to the crop (a whole square image: the
    view training padded and cropped)."""
    crop = crop or side
    return EvalView(resize or (round(crop / EVAL_RATIO) if resized_crop else crop), crop)


__all__ = ["EVAL_RATIO", "EvalView", "crop_offsets", "default_view", "resized_size"]
