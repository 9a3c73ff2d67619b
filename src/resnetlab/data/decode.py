"""One encoded image -> uint8 pixels: the one image reader of every path (packing, both loaders,
predict and explain), and the views a model takes, in a DataLoader worker.

`read_image(data, channels)` is the reader, with one rule for modes, the same everywhere:
JPEG through libjpeg-turbo (simplejpeg; CMYK and YCCK JPEGs, which it cannot convert, through
Pillow), every other format Pillow reads through Pillow; 16-bit (and 32-bit integer) grey
scaled to 8 bits (v * 255 / 65535, rounded; Pillow's own conversion clips to white), 16-bit
colour PNGs as Pillow reads them (the high byte), transparency (alpha, a palette's transparent
colour) composited on black, then Pillow's conversion to the requested channels (grey: L,
else RGB; palette, CMYK and the other modes converted by Pillow). EXIF orientation is not applied
(as libjpeg-turbo, Pillow and torchvision's readers leave it): pixels are read as stored.

JPEG goes through libjpeg-turbo by way of simplejpeg, asked for the smallest DCT scale of 1/8,
1/4, 1/2 and 1 (FAST_SCALES: the others decode more slowly than a larger one) that still gives
the crop at least the output size: a 1000 px photo cropped to 224 px is decoded at 1/2 or 1/4 of
its size, which is most of the saving (benchmarks/streaming.py measures it). Where setup.py
could build data/_jpeg_region.c, a training view's box is decoded alone at that scale (the rows
above it skipped, the columns beside it and the rows below it left out): the same pixels as the
whole decode cut, in about three quarters of the time (BENCHMARKS.md, "Streaming data").
PNG (and anything else Pillow reads) is decoded whole by Pillow. The crop box is then resampled to the output size
by an antialiased bilinear filter on uint8 (torch's, which follows Pillow's, the filter
torchvision's references use on the same box).

Training views are torchvision's RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3), 10
attempts, then a centre crop of the ratio's nearest bound), or else the image's centred square at
the output size, padded with black and cut at a random offset as the in-memory loader does (the
small images' recipe); then a horizontal flip. The evaluation view has its own home,
data/eval_view.py (decoded whole with the accurate IDCT, then torchvision's arithmetic).
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
try:  # libjpeg-turbo decoding a crop's region alone (setup.py builds it where it can)
    import resnetlab.data._jpeg_region as _jpeg_region
except ImportError:
    _jpeg_region = None
from PIL import Image, UnidentifiedImageError

# Every Pillow plugin imported here, in the process that forks the DataLoader workers: a worker
# that imported one lazily (Image.open's preinit) could wait forever on a module import lock that
# another thread held at the fork; seen once in ~20 runs of a 2-process streamed run, its worker
# stuck importing PIL.BmpImagePlugin.
Image.init()

SCALE = (0.08, 1.0)  # RandomResizedCrop's area fraction
RATIO = (3 / 4, 4 / 3)  # and aspect-ratio range
ATTEMPTS = 10
DRAWS = ATTEMPTS * 4 + 1  # uniforms drawn per training sample: 4 per attempt and the flip

Box = tuple[float, float, float, float]  # left, top, right, bottom in the source's pixels


# The largest image decoded: Pillow's own decompression-bomb threshold (~89.5 million pixels).
# Above it a small file could claim gigabytes; the header is checked before decoding.
MAX_IMAGE_PIXELS = 89_478_485
BACKGROUND = 0  # transparent pixels become black: the background of Fashion-MNIST and MNIST
# The DCT scales a JPEG is decoded at: libjpeg-turbo decodes 1/8, 1/4, 1/2 and 1 by its fast
# paths and the others (3/8, 5/8, 6/8, 7/8) more slowly than a larger scale, so a scale is
# rounded up to one of these (benchmarks/decode_scales.py's table).
FAST_SCALES = (1 / 8, 1 / 4, 1 / 2, 1.0)
_PILLOW_JPEG = ("CMYK", "YCCK")
# Images smaller than this each way are decoded whole, not by region: on a 1 x 1 and a 3 x 5 JPEG
# (less than one MCU) Debian's libjpeg-turbo 2.1 and simplejpeg's 3.1 give different pixels with
# fast upsampling; from 7 x 9 up, across scales, subsamplings, grey and progressive files, the
# same (tests/data/test_decode.py). A decode this small costs nothing anyway.
REGION_MIN_SIDE = 16  # JPEG colour spaces libjpeg-turbo's TurboJPEG cannot make RGB


class BadImage(ValueError):
    """Bytes that do not decode to an image (truncated, corrupt, not an image, too large)."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def _check_pixels(h: int, w: int) -> None:
    if h * w > MAX_IMAGE_PIXELS:
        raise BadImage(
            f"{w} x {h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit (a decompression "
            "bomb, or a picture to shrink first)"
        )


def _jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(height, width, colour space) of a JPEG simplejpeg decodes, else None (Pillow's)."""
    if not is_jpeg(data) or simplejpeg is None:
        return None
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    return None if colorspace in _PILLOW_JPEG else (h, w, colorspace)


def _open(data: bytes):
    """A Pillow image of `data` (header read, pixels not yet), its size checked."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused in one line
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # Pillow's own bound, twice its warning's
            raise BadImage(f"too large to decode safely ({_one_line(e)})") from None
    _check_pixels(im.height, im.width)
    return im


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the header alone; BadImage when the header does not parse."""
    try:
        header = _jpeg_header(data)
        if header is not None:
            return header[0], header[1]
        with _open(data) as im:
            return im.height, im.width
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder error means the same: a bad image
        raise BadImage(_one_line(e)) from None


def _one_line(e: BaseException) -> str:
    if isinstance(e, UnidentifiedImageError):  # its message names a BytesIO object
        return "not an image in a format Pillow reads"
    return " ".join(str(e).split()) or type(e).__name__


def normalised(im, channels: int):
    """A Pillow image in mode L (`channels` 1) or RGB (3) by the reader's rule for modes: integer
    grey scaled to 8 bits, transparency composited on black, then Pillow's conversion."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and isinstance(im.info.get("transparency"), int):
        # one transparent palette entry (GIF, most PNGs): made black in the palette, the same
        # pixels as compositing on black without an RGBA copy (4 bytes a pixel)
        im.load()
        palette = im.getpalette() or []
        t = 3 * im.info.pop("transparency")
        if t + 3 <= len(palette):
            palette[t : t + 3] = [BACKGROUND] * 3
            im.putpalette(palette)
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
        im = Image.alpha_composite(ground, rgba)
    mode = "L" if channels == 1 else "RGB"
    return im if im.mode == mode else im.convert(mode)


def is_grey(im) -> bool:
    """Whether a Pillow image holds grey levels only by its mode (what the in-memory loader
    stores with one channel when every image is)."""
    return im.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def read_image(
    data: bytes, channels: int, *, min_height: int = 0, min_width: int = 0, accurate: bool = False
) -> np.ndarray:
    """The image's pixels, uint8 [H, W, channels] (1: grey, 3: RGB), by the module's rule for
    modes; BadImage when they do not decode (truncated, corrupt, not an image, too large).
    A JPEG may be decoded at a reduced DCT scale, the smallest of FAST_SCALES that keeps it at
    least `min_height` x `min_width`; others are decoded whole. With libjpeg-turbo's fast IDCT
    and upsampling unless `accurate` (every path reads the same way, so the pixels of one file
    are the same in packing, training and predict)."""
    try:
        header = _jpeg_header(data)
        if header is not None:
            h, w, _ = header
            _check_pixels(h, w)
            scale = _fast_scale(h, w, min_height, min_width)
            array = simplejpeg.decode_jpeg(
                data,
                colorspace="GRAY" if channels == 1 else "RGB",
                min_height=math.ceil(h * scale),
                min_width=math.ceil(w * scale),
                fastdct=not accurate,
                fastupsample=not accurate,
            )
        else:
            with _open(data) as im:
                array = np.array(normalised(im, channels))  # writable
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt: the caller skips and counts it
        raise BadImage(_one_line(e)) from None
    return array.reshape(array.shape[0], array.shape[1], channels)


def _fast_scale(h: int, w: int, min_height: int, min_width: int) -> float:
    """The smallest of FAST_SCALES that keeps an h x w image at least min_height x min_width
    (1 when neither is asked)."""
    if max(min_height, min_width) <= 0:
        return 1.0
    return next((s for s in FAST_SCALES if h * s >= min_height and w * s >= min_width), 1.0)


def _eighths(h: int, w: int, min_height: int, min_width: int) -> int:
    """The DCT scale M/8 libjpeg-turbo is asked for by simplejpeg.decode_jpeg(min_height=...,
    min_width=...): the smallest M whose scaled size, ceil(side * M / 8), is at least asked."""
    return next(
        m for m in range(1, 9) if -(-h * m // 8) >= min_height and -(-w * m // 8) >= min_width
    )


def _region(data: bytes, channels: int, box: Box, out: int) -> np.ndarray | None:
    """What decode_box cuts from a JPEG, uint8 [rows, cols, channels], decoded alone by
    _jpeg_region (the rows above it skipped, the columns beside it left out, nothing below it
    read): the same pixels as the whole image decoded at the same scale then cut. None where it
    does not apply (not a JPEG simplejpeg reads, or the extension is not built).
    A file whose end is missing is refused like a whole decode refuses it (no end-of-image
    marker after its last scan); damage inside the entropy data below the box goes unseen here
    (packing and evaluation decode each file whole)."""
    try:
        header = _jpeg_header(data) if _jpeg_region is not None else None
    except Exception as e:  # noqa: BLE001 - a header that does not parse: a bad image
        raise BadImage(_one_line(e)) from None
    if header is None:
        return None
    h, w, _ = header
    if min(h, w) < REGION_MIN_SIDE:  # decoded whole: see REGION_MIN_SIDE
        return None
    _check_pixels(h, w)
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):  # EOI after the last SOS
        raise BadImage("Premature end of JPEG file")
    left, top, right, bottom = box
    scale = _fast_scale(
        h,
        w,
        math.ceil(out * h / max(bottom - top, 1e-6)),
        math.ceil(out * w / max(right - left, 1e-6)),
    )
    m = _eighths(h, w, math.ceil(h * scale), math.ceil(w * scale))
    sh, sw = -(-h * m // 8), -(-w * m // 8)  # the scaled size, as libjpeg-turbo rounds it
    y0, x0, y1, x1 = _whole_pixels(box, sh / h, sw / w, sh, sw)
    try:
        pixels, rows, width, first = _jpeg_region.crop(data, channels, m, x0, y0, x1, y1)
    except ValueError as e:
        raise BadImage(_one_line(e)) from None
    array = np.frombuffer(pixels, np.uint8).reshape(rows, width, channels)
    return array[:, x0 - first : x1 - first]


def _whole_pixels(box: Box, sy: float, sx: float, height: int, width: int):
    """(y0, x0, y1, x1): a box in source pixels cut to whole pixels of the image decoded at
    scale (sy, sx), height x width; at least one pixel each way."""
    left, top, right, bottom = box
    y0 = min(int(round(top * sy)), height - 1)
    x0 = min(int(round(left * sx)), width - 1)
    y1, x1 = max(int(round(bottom * sy)), y0 + 1), max(int(round(right * sx)), x0 + 1)
    return y0, x0, y1, x1


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


def center_square(h: int, w: int) -> Box:
    """The centred square of an h x w image, its shorter side wide (what Resize(out) +
    CenterCrop(out) shows of it)."""
    side = min(h, w)
    top, left = (h - side) / 2, (w - side) / 2
    return left, top, left + side, top + side


def decode_box(data: bytes, channels: int, box: Box, out: int) -> torch.Tensor:
    """The image's `box` resampled to out x out, uint8 [C, out, out]: JPEG decoded at the
    smallest of FAST_SCALES that keeps the box at least `out` pixels each way, with libjpeg-turbo's
    fast IDCT and upsampling (augmentation does not need the last bit of accuracy, and they cut
    the decode's time by a tenth), the box cut to whole pixels of the decoded image and resampled
    by torch's antialiased bilinear filter on uint8 (Pillow's filter, vectorised: a third of
    Image.resize's time, measured in benchmarks/streaming.py's notes)."""
    region = _region(data, channels, box, out)
    if region is None:
        left, top, right, bottom = box
        h, w = image_size(data)
        array = read_image(
            data,
            channels,
            min_height=math.ceil(out * h / max(bottom - top, 1e-6)),
            min_width=math.ceil(out * w / max(right - left, 1e-6)),
        )
        rows, cols = array.shape[:2]
        y0, x0, y1, x1 = _whole_pixels(box, rows / h, cols / w, rows, cols)
        region = array[y0:y1, x0:x1]
    x = torch.from_numpy(region).permute(2, 0, 1)  # channels last in memory: the fast path
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
    image's centred square resized to `out` (a whole square image: Resize + CenterCrop) padded by
    `crop_padding` black pixels a side and cut at a random offset, torchvision's
    RandomCrop(padding=p); flipped with probability 1/2 (`flip` None), always (True) or never
    (False); then `extra_transform(image, gen)` (e.g. TrivialAugmentWide) when given."""
    h, w = image_size(data)
    u = torch.rand(DRAWS, generator=gen, dtype=torch.float64)
    if resized_crop:
        x = decode_box(data, channels, random_resized_box(h, w, u), out)
    else:
        x = decode_box(data, channels, center_square(h, w), out)
        if crop_padding:
            dy, dx = (int(v * (2 * crop_padding + 1)) for v in u[:2].tolist())
            x = F.pad(x, (crop_padding,) * 4)[:, dy : dy + out, dx : dx + out].contiguous()
    if (u[-1] < 0.5) if flip is None else flip:
        x = x.flip(-1)
    return extra_transform(x, gen) if extra_transform is not None else x


def decode_image(data: bytes, channels: int, *, accurate: bool = False) -> torch.Tensor:
    """The whole image at its own size, uint8 [C, H, W], by read_image's rule for modes;
    `accurate`: JPEG with libjpeg-turbo's accurate IDCT and upsampling (the evaluation view's: the
    pixels Pillow and torchvision decode) instead of the fast ones."""
    return torch.from_numpy(read_image(data, channels, accurate=accurate)).permute(2, 0, 1)
