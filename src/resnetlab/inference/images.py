"""Image files as a trained model sees them: decoded (Pillow), converted to its channels, resized and
normalised exactly as its training data was (the loader's own transform)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from resnetlab.data import Dataset
from resnetlab.errors import UsageError, first_line
from resnetlab.inference.loading import eval_view, loader_for

# The largest image `predict` decodes: Pillow's own decompression-bomb threshold (~89.5 million
# pixels). Above it a small file could claim gigabytes; the header is checked before decoding.
MAX_IMAGE_PIXELS = 89_478_485


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """An image file as uint8 [C, H, W], converted to the model's channels (grey or RGB)."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install 'resnetlab[images]'") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", Image.DecompressionBombWarning
            )  # refused below, in one line
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise UsageError(
                        f"image {path} is {width} x {height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel "
                        "limit (a decompression bomb, or a picture to shrink first)"
                    )
                img = _opaque(_to_8_bit(img))
                img = img.convert("L" if channels == 1 else "RGB")
                t = torch.from_numpy(np.array(img, dtype=np.uint8)).view(
                    img.height, img.width, channels
                )
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as e:
        raise UsageError(
            f"image {path} is too large to decode safely ({e})".replace("\n", " ")
        ) from None
    except (
        Exception
    ) as e:  # Pillow fails on damaged files in many ways (OSError, ValueError, SyntaxError, ...)
        raise UsageError(f"cannot read image {path}: {first_line(e)}") from None
    return t.permute(2, 0, 1).contiguous()


BACKGROUND = 0  # transparent pixels become black: the background of Fashion-MNIST and MNIST


def _to_8_bit(img):
    """16-bit (and 32-bit integer) grey images scaled to 8 bits: Pillow's own conversion clips
    every value above 255 to white."""
    from PIL import Image

    if img.mode not in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return img
    a = np.asarray(img).astype(np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def _opaque(img):
    """An image with transparency (an alpha channel, or a palette's transparent colour) composited
    on the training background (BACKGROUND): a shape drawn only in the alpha channel shows, where
    dropping the alpha would leave what the transparent pixels happen to hold (often white)."""
    from PIL import Image

    if "A" not in img.getbands() and "transparency" not in img.info:
        return img
    rgba = img.convert("RGBA")
    ground = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
    return Image.alpha_composite(ground, rgba).convert("RGB")


def read_images(paths: list, channels: int) -> tuple[list[torch.Tensor], list[str], list[dict]]:
    """Each path through load_image: (the images read, their paths, {"image", "error"} for each
    that could not be read). None read at all: the first one's UsageError."""
    images, read, failed = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, channels))
            read.append(str(path))
        except UsageError as e:
            if len(paths) == 1:
                raise
            failed.append({"image": str(path), "error": str(e)})
    if not images:
        raise UsageError(f"no image could be read ({len(failed)} tried): {failed[0]['error']}")
    return images, read, failed


def in_order(paths: list, results: list[dict], failed: list[dict]) -> list[dict]:
    """The results and the failures, in the order the paths were given."""
    by_path = {r["image"]: r for r in [*results, *failed]}
    return [by_path[str(p)] for p in paths]


def preprocess(
    images: list[torch.Tensor], meta: dict, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 [C, H, W] images of any size -> the model's float batch, through the loader's own
    transform: shown through a streamed run's evaluation view (data/eval_view.py, as `eval`
    shows its test images), else resized (bilinear, antialiased) to the model's input size; then
    normalised as in training."""
    view = eval_view(meta)
    if view is not None:
        shown = torch.stack([view.apply(img) for img in images])
        labels = torch.zeros(len(shown), dtype=torch.int64)
        side = (view.crop, view.crop)  # already the view's size: normalised only
        loader = loader_for(
            meta,
            Dataset("images", shown, labels),
            batch_size=len(shown),
            device=device,
            resize=side,
        )
        return next(iter(loader))[0]
    _, height, width = meta["input_size"]
    batches = []
    for img in images:
        one = Dataset("images", img.unsqueeze(0), torch.zeros(1, dtype=torch.int64))
        loader = loader_for(meta, one, batch_size=1, device=device, resize=(height, width))
        batches.append(next(iter(loader))[0])
    return torch.cat(batches)
