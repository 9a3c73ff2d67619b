"""One encoded image -> a uint8 tensor at the size a model takes, in a DataLoader worker.

JPEG goes through libjpeg-turbo by way of simplejpeg, asked for the smallest DCT scale (1/8 ...
8/8) that still gives the crop at least the output size: a 1000 px photo cropped to 224 px is
decoded at 1/2 or 1/4 of its size, which is most of the saving (benchmarks/streaming.py measures
it). PNG (and anything else Pillow reads) is decoded whole by Pillow. The crop box is then
resampled to the output size by an antialiased bilinear filter on uint8 (torch's, which follows
Pillow's, the filter torchvision's references use on the same box).

Training views are torchvision's RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3), 10
attempts, then a centre crop of the ratio's nearest bound), or else the evaluation view at the
output size, padded with black and cut at a random offset as the in-memory loader does (the small
images' recipe); then a horizontal flip. Evaluation views are Resize(shorter side) +
CenterCrop, computed as one box.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

try:
    import simplejpeg
except ImportError:  # the stream extra is missing: Pillow decodes JPEG too (without DCT scaling)
    simplejpeg = None
from PIL import Image

SCALE = (0.08, 1.0)  # RandomResizedCrop's area fraction
RATIO = (3 / 4, 4 / 3)  # and aspect-ratio range
ATTEMPTS = 10
DRAWS = ATTEMPTS * 4 + 1  # uniforms drawn per training sample: 4 per attempt and the flip

Box = tuple[float, float, float, float]  # left, top, right, bottom in the source's pixels


class BadImage(ValueError):
    """Bytes that do not decode to an image (truncated, corrupt, not an image)."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the header alone; BadImage when the header does not parse."""
    try:
        if is_jpeg(data) and simplejpeg is not None:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            return h, w
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception as e:  # noqa: BLE001 - any decoder error means the same: a bad image
        raise BadImage(str(e)) from None


def random_resized_box(h: int, w: int, u: torch.Tensor) -> Box:
    """torchvision's RandomResizedCrop.get_params on an h x w image, from `u`: ATTEMPTS * 4
    uniforms in [0, 1) (float64) instead of its global generator."""
    area = h * w
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for a in range(ATTEMPTS):
        u0, u1, u2, u3 = u[4 * a : 4 * a + 4].tolist()
        target = area * (SCALE[0] + u0 * (SCALE[1] - SCALE[0]))
        aspect = math.exp(log_lo + u1 * (log_hi - log_lo))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(u2 * (h - ch + 1)), int(u3 * (w - cw + 1))
            return left, top, left + cw, top + ch
    ratio = w / h  # fallback: the whole image, cut to the nearest allowed ratio, centred
    cw, ch = w, h
    if ratio < RATIO[0]:
        ch = round(w / RATIO[0])
    elif ratio > RATIO[1]:
        cw = round(h * RATIO[1])
    top, left = (h - ch) // 2, (w - cw) // 2
    return left, top, left + cw, top + ch


def center_box(h: int, w: int, resize: int, crop: int) -> Box:
    """The source box that Resize(resize) (shorter side) then CenterCrop(crop) shows."""
    scale = resize / min(h, w)
    ch, cw = min(crop / scale, h), min(crop / scale, w)
    top, left = (h - ch) / 2, (w - cw) / 2
    return left, top, left + cw, top + ch


def decode_box(data: bytes, channels: int, box: Box, out: int) -> torch.Tensor:
    """The image's `box` resampled to out x out, uint8 [C, out, out]: JPEG decoded at the
    smallest DCT scale that keeps the box at least `out` pixels each way (with libjpeg-turbo's
    fast IDCT and upsampling: augmentation does not need the last bit of accuracy, and they cut
    the decode's time by a tenth), the box cut to whole pixels of the decoded image and resampled
    by torch's antialiased bilinear filter on uint8 (Pillow's filter, vectorised: a third of
    Image.resize's time, measured in benchmarks/streaming.py's notes)."""
    left, top, right, bottom = box
    try:
        if is_jpeg(data) and simplejpeg is not None:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            array = simplejpeg.decode_jpeg(
                data,
                colorspace="GRAY" if channels == 1 else "RGB",
                min_height=min(math.ceil(out * h / max(bottom - top, 1e-6)), h),
                min_width=min(math.ceil(out * w / max(right - left, 1e-6)), w),
                fastdct=True,
                fastupsample=True,
            )
        else:
            with Image.open(io.BytesIO(data)) as im:
                h, w = im.height, im.width
                array = np.array(im.convert("L" if channels == 1 else "RGB"))  # writable
    except Exception as e:  # noqa: BLE001 - truncated or corrupt: the caller skips and counts it
        raise BadImage(str(e)) from None
    array = array.reshape(array.shape[0], array.shape[1], -1)
    sy, sx = array.shape[0] / h, array.shape[1] / w
    y0, x0 = (
        min(int(round(top * sy)), array.shape[0] - 1),
        min(int(round(left * sx)), array.shape[1] - 1),
    )
    y1, x1 = max(int(round(bottom * sy)), y0 + 1), max(int(round(right * sx)), x0 + 1)
    x = torch.from_numpy(array[y0:y1, x0:x1]).permute(
        2, 0, 1
    )  # channels last in memory: the fast path
    if x.shape[1:] != (out, out):
        x = F.interpolate(x[None], size=(out, out), mode="bilinear", antialias=True)[0]
    return x.contiguous()


def train_view(
    data: bytes,
    channels: int,
    out: int,
    gen: torch.Generator,
    extra_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    *,
    resized_crop: bool = True,
    crop_padding: int = 0,
    flip: bool | None = None,
) -> torch.Tensor:
    """A training view of `out` x `out`: a random-resized crop (`resized_crop`), or else the
    evaluation view (shorter side to `out`, centre crop: a whole square image) padded by
    `crop_padding` black pixels a side and cut at a random offset, torchvision's
    RandomCrop(padding=p); flipped with probability 1/2 (`flip` None), always (True) or never
    (False); then `extra_transform(image, gen)` (e.g. TrivialAugmentWide) when given."""
    h, w = image_size(data)
    u = torch.rand(DRAWS, generator=gen, dtype=torch.float64)
    if resized_crop:
        x = decode_box(data, channels, random_resized_box(h, w, u), out)
    else:
        x = decode_box(data, channels, center_box(h, w, out, out), out)
        if crop_padding:
            dy, dx = (int(v * (2 * crop_padding + 1)) for v in u[:2].tolist())
            x = F.pad(x, (crop_padding,) * 4)[:, dy : dy + out, dx : dx + out].contiguous()
    if (u[-1] < 0.5) if flip is None else flip:
        x = x.flip(-1)
    return extra_transform(x, gen) if extra_transform is not None else x


def eval_view(data: bytes, channels: int, resize: int, crop: int) -> torch.Tensor:
    """Resize(shorter side to `resize`) + CenterCrop(`crop`), as uint8 [C, crop, crop]."""
    h, w = image_size(data)
    return decode_box(data, channels, center_box(h, w, resize, crop), crop)


def decode_image(data: bytes, channels: int, *, accurate: bool = False) -> torch.Tensor:
    """The whole image at its own size, uint8 [C, H, W]; `accurate`: JPEG with libjpeg-turbo's
    accurate IDCT and upsampling (the evaluation view's: the pixels Pillow and torchvision decode)
    instead of the fast ones."""
    try:
        if is_jpeg(data) and simplejpeg is not None:
            array = simplejpeg.decode_jpeg(
                data,
                colorspace="GRAY" if channels == 1 else "RGB",
                fastdct=not accurate,
                fastupsample=not accurate,
            )
        else:
            with Image.open(io.BytesIO(data)) as im:
                array = np.array(im.convert("L" if channels == 1 else "RGB"))
    except Exception as e:  # noqa: BLE001 - truncated or corrupt: the caller skips and counts it
        raise BadImage(str(e)) from None
    array = array.reshape(array.shape[0], array.shape[1], -1)
    return torch.from_numpy(array).permute(2, 0, 1)
