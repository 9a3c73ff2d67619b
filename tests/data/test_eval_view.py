"""The evaluation view (data/eval_view.py) against torchvision's Resize + CenterCrop, computed here
with Pillow as torchvision computes it on a PIL image (torchvision cannot be installed beside the
CPU torch): the size from `_compute_resized_output_size`, `Image.resize(..., BILINEAR)` (which
antialiases), the crop at int(round((side - crop) / 2.0)); and the view shared by both loaders."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import Dataset, make_loaders
from resnetlab.data.eval_view import EvalView, crop_offsets, default_view, resized_size
from resnetlab.errors import UsageError


def photo(height: int, width: int, mode: str = "RGB", seed: int = 0) -> bytes:
    """A photo-like JPEG: smooth shapes plus fine texture (what resampling and the IDCT differ
    on), quality 90."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for c in range(3):
        fx, fy = rng.uniform(2, 9, 2)
        wave = np.sin(xx / width * fx * np.pi + c) * np.cos(yy / height * fy * np.pi)
        channels.append(128 + 90 * wave + rng.normal(0, 18, (height, width)))
    array = np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def torchvision_view(data: bytes, resize: int, crop: int, mode: str) -> np.ndarray:
    """Resize(resize) + CenterCrop(crop) on the PIL image, in torchvision's arithmetic."""
    image = Image.open(io.BytesIO(data)).convert(mode)
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    array = np.array(image.crop((left, top, left + crop, top + crop)))
    return array.reshape(crop, crop, -1).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "height, width, mode, resize, crop",
    [
        (375, 500, "RGB", 232, 224),  # a landscape photo at the imagenet preset's view
        (500, 333, "RGB", 232, 224),  # portrait, odd width: the longer side truncated
        (301, 259, "L", 73, 64),  # grey, odd offsets: round(2.5) is 2 in torchvision too
        (240, 240, "RGB", 240, 200),  # already at the size: not resampled
    ],
)
def test_view_matches_torchvision_resize_and_center_crop(height, width, mode, resize, crop):
    data = photo(height, width, mode)
    channels = 1 if mode == "L" else 3
    ours = EvalView(resize, crop).read(data, channels).numpy().astype(np.int16)
    theirs = torchvision_view(data, resize, crop, mode).astype(np.int16)
    assert ours.shape == theirs.shape == (channels, crop, crop)
    diff = np.abs(ours - theirs)
    assert diff.mean() <= 1.0, f"mean difference {diff.mean():.3f}/255"  # the contract: 1/255
    assert np.percentile(diff, 99) <= 2


def test_sizes_and_offsets_follow_torchvision():
    assert resized_size(375, 500, 232) == (232, 309)  # int(232 * 500 / 375) = 309.33 -> 309
    assert resized_size(500, 375, 232) == (309, 232)
    assert resized_size(10, 10, 7) == (7, 7)
    assert crop_offsets(229, 309, 224) == (2, 42)  # round(2.5) = 2, round(42.5) = 42
    assert crop_offsets(231, 233, 224) == (4, 4)  # round(3.5) = 4, round(4.5) = 4


def test_view_round_trips_through_metadata_and_old_files_read_as_before():
    view = EvalView(232, 224)
    assert EvalView.from_metadata({"eval_view": view.to_metadata()}) == view
    # streamed runs before this recorded the same dict as eval_transform, never read back
    old = {"eval_transform": {"resize_shorter": 73, "center_crop": 64}}
    assert EvalView.from_metadata(old) == EvalView(73, 64)
    assert EvalView.from_metadata({"resize": 28}) is None  # an in-memory run: no view


def test_defaults_and_refusals():
    assert default_view(224) == EvalView(256, 224)  # 224 / 0.875
    assert default_view(64) == EvalView(73, 64)
    assert default_view(32, resized_crop=False) == EvalView(32, 32)
    assert default_view(176, 232, 224) == EvalView(232, 224)
    with pytest.raises(UsageError, match="crop of 30 px does not fit"):
        EvalView(20, 30)
    with pytest.raises(UsageError, match="whole number"):
        EvalView(0, 0)


def test_in_memory_loader_shows_the_same_view():
    """The in-memory Loader (matrix resampling of float images) at the view's sizes gives the
    pixels `EvalView.apply` gives to the same uint8 images, within rounding."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 30, 41), dtype=torch.uint8, generator=g)
    view = EvalView(23, 19)
    loaders = make_loaders(
        test=Dataset("t", images, torch.zeros(3, dtype=torch.int64)),
        batch_size=3,
        eval_resize=view.resize,
        eval_crop=view.crop,
    )
    x, _ = next(iter(loaders.test))
    expected = torch.stack([view.apply(im) for im in images]).float() / 255
    assert x.shape == expected.shape == (3, 3, 19, 19)
    assert (x - expected).abs().max() <= 1 / 255 + 1e-6
