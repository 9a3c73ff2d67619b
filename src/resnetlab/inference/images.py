"""Image files as a trained model sees them: decoded (data/decode.py's reader), converted to its channels, resized and
normalised exactly as its training data was (the loader's own transform)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resnetlab.data import Dataset
from resnetlab.data.formats import stored_size
from resnetlab.errors import UsageError, first_line
from resnetlab.inference.loading import eval_view, loader_for


def load_image(path: str | Path, channels: int, *, accurate: bool = False) -> torch.Tensor:
    """An image file as uint8 [C, H, W], converted to the model's channels (grey or RGB), read by
    the one image reader of training and packing (data/decode.py: the same pixels; `accurate`:
    JPEG with the accurate IDCT, as the evaluation view decodes)."""
    try:
        from resnetlab.data import decode
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install 'resnetlab[images]'") from None
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read image {path}: {first_line(e)}") from None
    try:
        array = decode.read_image(data, channels, accurate=accurate)
    except decode.BadImage as e:
        if "pixel limit" in str(e) or "too large to decode" in str(e):
            raise UsageError(f"image {path} is {e}") from None
        raise UsageError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_images(paths: list, meta: dict) -> tuple[list[torch.Tensor], list[str], list[dict]]:
    """Each path through load_image, as the model described by `meta` is shown images (decoded
    as its evaluation view decodes them where it has one: then predict's input is eval's):
    (the images read, their paths, {"image", "error"} for each that could not be read). None
    read at all: the first one's UsageError."""
    channels, accurate = meta["in_chans"], eval_view(meta) is not None
    images, read, failed = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, channels, accurate=accurate))
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
    shows its test images), else resized (bilinear, antialiased) to the model's input size (an
    image folder trained in memory: first to the size its images were stored at, as training
    did); then normalised as in training."""
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
    stored = meta.get("stored_size")  # an image folder trained in memory: its first resize
    batches = []
    for img in images:
        if stored:
            pixels = stored_size(img.permute(1, 2, 0).numpy(), tuple(stored))
            img = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # a writable copy
        one = Dataset("images", img.unsqueeze(0), torch.zeros(1, dtype=torch.int64))
        loader = loader_for(meta, one, batch_size=1, device=device, resize=(height, width))
        batches.append(next(iter(loader))[0])
    return torch.cat(batches)
