"""data/decode.py piece by piece, each against a reference computed another way: Pillow's own
reads and conversions, libjpeg-turbo called directly, torchvision's RandomResizedCrop rule
transcribed, images whose every row (or column, or quadrant) says where a pixel came from."""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

Image = pytest.importorskip("PIL.Image")
simplejpeg = pytest.importorskip("simplejpeg")

from resnetlab.data import decode  # noqa: E402
from resnetlab.data.decode import BadImage  # noqa: E402

LIMIT_LINE = (
    "pixels, over the 89,478,485-pixel limit (a decompression bomb, or a picture to shrink first)"
)


def encoded(im, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims width x height (its checksum fixed): Pillow reads the
    header and must never get to the pixels."""
    data = bytearray(encoded(Image.new("L", (1, 1))))
    at = data.index(b"IHDR")
    data[at + 4 : at + 12] = struct.pack(">II", width, height)
    data[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 17])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("RGB", (8, 8)), "JPEG"))
    at = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# -- sizes, headers and one-line errors ---------------------------------------------------------


def test_the_pixel_limit_is_a_product_and_inclusive():
    decode._check_pixels(1, decode.MAX_IMAGE_PIXELS)  # at the limit: taken
    decode._check_pixels(decode.MAX_IMAGE_PIXELS, 1)
    with pytest.raises(BadImage) as e:
        decode._check_pixels(2, decode.MAX_IMAGE_PIXELS // 2 + 1)  # tall and narrow, still over
    assert str(e.value) == f"{decode.MAX_IMAGE_PIXELS // 2 + 1} x 2 {LIMIT_LINE}"


@pytest.mark.parametrize(
    "data,line",
    [
        # over the limit but under Pillow's own bound: Pillow only warns, the reader refuses
        (png_claiming(10_000, 10_000), f"10000 x 10000 {LIMIT_LINE}"),
        # JPEG's header is read by libjpeg-turbo: the same limit, the same line
        (jpeg_claiming(20_000, 20_000), f"20000 x 20000 {LIMIT_LINE}"),
    ],
    ids=["png", "jpeg"],
)
def test_a_header_over_the_limit_is_refused_in_one_line_before_decoding(data, line):
    with pytest.raises(BadImage) as e:
        decode.train_view(data, 3, 8, torch.Generator().manual_seed(0))
    assert str(e.value) == line


def test_a_header_beyond_pillows_own_bound_names_it():
    with pytest.raises(BadImage) as e:
        decode.image_size(png_claiming(20_000, 20_000))
    message = str(e.value)
    assert message.startswith("too large to decode safely (") and "400000000" in message
    assert "\n" not in message


def test_errors_are_one_line_and_say_what_was_wrong():
    for call in (decode.image_size, lambda d: decode.read_image(d, 3)):
        with pytest.raises(BadImage) as e:
            call(b"no image in these bytes")
        assert str(e.value) == "not an image in a format Pillow reads"
    assert decode._one_line(ValueError("two\n   lines  here")) == "two lines here"
    assert decode._one_line(ValueError()) == "ValueError"  # no text: its type


def test_formats_are_told_by_their_signatures():
    png, jpeg = encoded(Image.new("L", (2, 2))), encoded(Image.new("L", (2, 2)), "JPEG")
    assert decode.is_png(png) and not decode.is_png(jpeg)
    assert decode.is_jpeg(jpeg) and not decode.is_jpeg(png)


def test_cmyk_jpegs_go_through_pillow_and_others_through_libjpeg_turbo():
    rgb = Image.fromarray(noise(16, 24))
    cmyk = encoded(rgb.convert("CMYK"), "JPEG")
    assert decode._jpeg_header(cmyk) is None
    assert decode.image_size(cmyk) == (16, 24)
    expected = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))
    assert np.array_equal(decode.read_image(cmyk, 3), expected)
    assert decode._jpeg_header(encoded(rgb, "JPEG"))[:2] == (16, 24)


def test_is_grey_is_every_pillow_mode_of_grey_bands_alone():
    grey_bands = {"1", "L", "A", "a", "I", "F"}
    for mode in Image.MODES:
        bands = set(Image.new(mode, (1, 1)).getbands())
        assert decode.is_grey(Image.new(mode, (1, 1))) == (bands <= grey_bands), mode


# -- the rule for modes ---------------------------------------------------------------------------


def scaled_to_8_bits(v: np.ndarray) -> np.ndarray:
    """v * 255 / 65535 rounded (never a tie: 65535 / 255 = 257 is odd), in integers."""
    return ((2 * v.astype(np.int64) + 257) // 514).astype(np.uint8)


@pytest.mark.parametrize(
    "mode,dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")]
)
def test_16_bit_grey_is_scaled_to_8_bits_whatever_its_byte_order(mode, dtype):
    every = np.arange(65536, dtype=np.uint32).reshape(256, 256)
    im = Image.frombytes(mode, (256, 256), every.astype(dtype).tobytes())
    assert np.array_equal(np.asarray(decode.normalised(im, 1)), scaled_to_8_bits(every))
    dark = np.arange(256, dtype=np.uint32).reshape(16, 16)  # 16-bit levels, however small
    im = Image.frombytes(mode, (16, 16), dark.astype(dtype).tobytes())
    assert np.array_equal(np.asarray(decode.normalised(im, 1)), scaled_to_8_bits(dark))


@pytest.mark.parametrize(
    "values,expected",
    [
        ([0, 100, 254, 255], [0, 100, 254, 255]),  # 8-bit levels held in 32 bits: as they are
        ([0, 100, 255, 256], [0, 0, 1, 1]),  # above 255: 16-bit levels
        ([-1000, 0, 300, 65535, 100_000], [0, 0, 1, 255, 255]),  # clipped to black and white
    ],
)
def test_32_bit_grey_is_8_bit_or_16_bit_by_its_largest_level(values, expected):
    im = Image.fromarray(np.array([values], dtype=np.int32), "I")
    assert np.asarray(decode.normalised(im, 1))[0].tolist() == expected


def composited_on_black(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:].astype(np.float64) / 255
    return rgba[..., :3] * a


def test_alpha_is_composited_on_black():
    rgba = noise(8, 8, 4, seed=1)
    rgba[0, :, 3], rgba[1, :, 3], rgba[2, :, 3] = 0, 128, 255  # transparent, half, opaque
    got = decode.read_image(encoded(Image.fromarray(rgba, "RGBA")), 3).astype(np.float64)
    assert np.abs(got - composited_on_black(rgba)).max() <= 1
    la = np.stack(
        [noise(8, 8, 1, seed=2), np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))], -1
    )
    got = decode.read_image(encoded(Image.fromarray(la, "LA")), 1)[..., 0].astype(np.float64)
    assert np.abs(got - la[..., 0] * (la[..., 1] / 255)).max() <= 1


def test_a_transparent_colour_becomes_black():
    grey = noise(8, 8, 1, seed=3)
    grey[2:4] = 77
    got = decode.read_image(encoded(Image.fromarray(grey, "L"), transparency=77), 1)[..., 0]
    assert np.array_equal(got, np.where(grey == 77, 0, grey))
    rgb = noise(8, 8, seed=4)
    rgb[5] = (10, 20, 30)
    got = decode.read_image(encoded(Image.fromarray(rgb), transparency=(10, 20, 30)), 3)
    is_it = (rgb == (10, 20, 30)).all(-1, keepdims=True)
    assert np.array_equal(got, np.where(is_it, 0, rgb))


@pytest.mark.parametrize("transparent", [3, 7], ids=["inside", "last entry"])
def test_a_palettes_transparent_entry_becomes_black_and_the_others_keep_their_colours(transparent):
    colours = np.random.default_rng(5).integers(40, 256, (8, 3), dtype=np.uint8)
    index = np.tile(np.arange(8, dtype=np.uint8), (4, 2))  # every entry used
    im = Image.fromarray(index, "P")
    im.putpalette(colours.reshape(-1).tolist())
    data = encoded(im, transparency=transparent)
    with Image.open(io.BytesIO(data)) as back:  # the case the reader's palette edit serves
        assert back.info["transparency"] == transparent and len(back.getpalette()) == 24
    expected = colours[index]
    expected[index == transparent] = 0
    assert np.array_equal(decode.read_image(data, 3), expected)


def test_a_palette_with_partial_alpha_is_composited():
    colours = np.random.default_rng(6).integers(0, 256, (4, 3), dtype=np.uint8)
    index = np.tile(np.arange(4, dtype=np.uint8), (2, 2))
    im = Image.fromarray(index, "P")
    im.putpalette(colours.reshape(-1).tolist())
    alpha = np.array([0, 100, 200, 255], dtype=np.uint8)
    got = decode.read_image(encoded(im, transparency=alpha.tobytes()), 3).astype(np.float64)
    rgba = np.concatenate([colours, alpha[:, None]], -1)[index]
    assert np.abs(got - composited_on_black(rgba)).max() <= 1


def test_grey_and_colour_outputs_are_pillows_conversions():
    rgb = Image.fromarray(noise(6, 10, seed=7))
    grey = decode.read_image(encoded(rgb), 1)
    assert grey.shape == (6, 10, 1) and np.array_equal(grey[..., 0], np.asarray(rgb.convert("L")))
    assert np.array_equal(decode.read_image(encoded(rgb), 3), np.asarray(rgb))
    ycbcr = rgb.convert("YCbCr")  # no alpha, no transparency: Pillow's conversion alone
    assert np.array_equal(np.asarray(decode.normalised(ycbcr, 3)), np.asarray(ycbcr.convert("RGB")))


# -- JPEG: libjpeg-turbo's fast or accurate decode, at a DCT scale ---------------------------------


def test_jpeg_reads_are_libjpeg_turbos_fast_decode_or_pillows_pixels_when_accurate():
    data = encoded(Image.fromarray(noise(32, 32, seed=8)), "JPEG", quality=90)
    fast = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert not np.array_equal(fast, pillow)  # the two differ on this image: the test can tell
    assert np.array_equal(decode.read_image(data, 3), fast)
    assert np.array_equal(decode.read_image(data, 3, accurate=True), pillow)
    assert np.array_equal(decode.decode_image(data, 3).permute(1, 2, 0).numpy(), fast)
    accurate = decode.decode_image(data, 3, accurate=True).permute(1, 2, 0).numpy()
    assert np.array_equal(accurate, pillow)
    whole = decode.decode_box(data, 3, (0, 0, 32, 32), 32)  # no resampling: the fast decode
    assert np.array_equal(whole.permute(1, 2, 0).numpy(), fast)
    upsampled = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)
    assert not np.array_equal(fast, upsampled)  # fast upsampling is a choice of its own


def test_grey_jpeg_reads_as_one_channel():
    data = encoded(Image.fromarray(noise(16, 16, 1, seed=9), "L"), "JPEG")
    got = decode.read_image(data, 1, accurate=True)
    assert got.shape == (16, 16, 1)
    assert np.array_equal(got[..., 0], np.asarray(Image.open(io.BytesIO(data)).convert("L")))


QUADRANTS = ((230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 230))


def quadrant_jpeg(h: int = 256, w: int = 384) -> bytes:
    """Four flat colours, one a quadrant (top-left, top-right, bottom-left, bottom-right)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2 :] = QUADRANTS[0], QUADRANTS[1]
    a[h // 2 :, : w // 2], a[h // 2 :, w // 2 :] = QUADRANTS[2], QUADRANTS[3]
    return encoded(Image.fromarray(a), "JPEG", quality=95)


@pytest.mark.parametrize(
    "box,out,side",
    [
        ((0, 0, 256, 256), 32, 32),  # 1/8 is exactly enough
        ((0, 0, 256, 128), 16, 32),  # the height asks for 1/8, exactly
        ((0, 0, 128, 256), 16, 32),  # the width asks for 1/8, exactly
        ((0, 64, 256, 128), 16, 64),  # a box of 64 rows at 16: 1/4, though the width needs 1/8
        ((64, 0, 128, 256), 16, 64),  # and the same across
        ((16, 16, 176, 176), 64, 128),  # 160 px at 64: 1/2
        ((0, 0, 8, 8), 64, 256),  # no scale is enough: the whole image
    ],
)
def test_a_jpeg_is_decoded_at_the_smallest_fast_scale_the_box_allows(decoded_sizes, box, out, side):
    data = encoded(Image.new("RGB", (256, 256), (90, 20, 200)), "JPEG")
    x = decode.decode_box(data, 3, box, out)
    assert decoded_sizes == [(side, side)] and x.shape == (3, out, out)
    assert decode.read_image(data, 3, min_height=1).shape == (32, 32, 3)  # any minimum: scaled
    assert decode.read_image(data, 3).shape == (256, 256, 3)  # none: whole


@pytest.mark.parametrize("h,w", [(64, 4), (4, 64)])
def test_a_narrow_jpeg_is_decoded_at_the_scale_chosen_for_both_sides(h, w):
    """libjpeg-turbo also has scales between the fast ones (3/8 ...): asked for only one side's
    size, it would take one of those for a side under 8 pixels."""
    data = encoded(Image.fromarray(noise(h, w, seed=15)), "JPEG")
    assert decode.read_image(data, 3, min_height=h // 2, min_width=w // 2).shape == (
        h // 2,
        w // 2,
        3,
    )


@pytest.mark.parametrize("h,w", [(64, 4), (4, 64), (21, 37)])
def test_the_eighths_asked_of_the_region_decoder_are_simplejpegs_scale(h, w):
    """_eighths(h, w, ...) is the scale M/8 simplejpeg decodes at for the same minimum size, each
    side asked from 1 pixel to all of them (one side binding, narrow sides, in-between scales)."""
    data = encoded(Image.fromarray(noise(h, w, seed=16)), "JPEG")
    for min_height in range(1, h + 1):
        for min_width in range(1, w + 1):
            m = decode._eighths(h, w, min_height, min_width)
            got = simplejpeg.decode_jpeg(data, min_height=min_height, min_width=min_width)
            assert got.shape[:2] == (-(-h * m // 8), -(-w * m // 8)), (min_height, min_width)


@pytest.mark.parametrize("quadrant", range(4))
def test_a_box_decoded_at_a_reduced_scale_shows_its_own_part_of_the_image(quadrant):
    h, w = 256, 384
    top, left = (quadrant // 2) * h // 2, (quadrant % 2) * w // 2
    box = (left + 16, top + 8, left + w // 2 - 16, top + h // 2 - 8)  # inside the quadrant
    x = decode.decode_box(quadrant_jpeg(h, w), 3, box, 8)  # at 1/8: 32 x 48
    assert x.shape == (3, 8, 8)
    assert (x.float() - torch.tensor(QUADRANTS[quadrant]).view(3, 1, 1)).abs().max() <= 12


def rows_and_columns(h: int = 12, w: int = 16) -> bytes:
    """A PNG whose red is 10 x the row and green 10 x the column."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 10 * np.arange(h)[:, None]
    a[..., 1] = 10 * np.arange(w)[None, :]
    return encoded(Image.fromarray(a))


@pytest.mark.parametrize(
    "box,channel,level",
    [
        ((0, 11.6, 16, 12), 0, 110),  # a sliver past the last row's centre: the last row
        ((15.6, 0, 16, 12), 1, 150),  # and past the last column's
        ((0, 5.2, 16, 5.4), 0, 50),  # a box under a pixel tall: one row
        ((7.2, 0, 7.4, 12), 1, 70),  # under a pixel wide: one column
    ],
)
def test_boxes_are_cut_to_whole_pixels_at_least_one_of_them(box, channel, level):
    x = decode.decode_box(rows_and_columns(), 3, box, 4)
    assert x.shape == (3, 4, 4) and (x[channel] == level).all()


def test_the_box_is_resampled_as_pillow_resamples_it():
    rgb = Image.fromarray(noise(30, 40, seed=10))
    box = (5, 3, 37, 27)
    x = decode.decode_box(encoded(rgb), 3, box, 8)
    # Pillow's bilinear filter on the cut box (resize's own box= option also reads pixels around it)
    pillow = np.asarray(rgb.crop(box).resize((8, 8), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(x.permute(1, 2, 0).numpy().astype(int) - pillow).max() <= 1


# -- the views ---------------------------------------------------------------------------------


def test_the_unpadded_training_view_is_the_centred_square():
    # (left, top, right, bottom): the shorter side wide, centred along the longer one
    assert decode.center_square(40, 20) == (0.0, 10.0, 20.0, 30.0)
    assert decode.center_square(20, 40) == (10.0, 0.0, 30.0, 20.0)
    assert decode.center_square(21, 10) == (0.0, 5.5, 10.0, 15.5)
    assert decode.center_square(10, 10) == (0.0, 0.0, 10.0, 10.0)


def torchvisions_box(h: int, w: int, u: list[float]) -> tuple[tuple[int, int, int, int], bool]:
    """(box, whether it is the fallback): RandomResizedCrop.get_params (torchvision 0.2x, scale
    (0.08, 1), ratio (3/4, 4/3)) as it reads, its draws taken from `u`: uniform_(a, b) is
    a + u (b - a), randint(0, n) is int(u n)."""
    area = h * w
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(10):
        u0, u1, u2, u3 = u[4 * attempt : 4 * attempt + 4]
        target_area = area * (scale[0] + u0 * (scale[1] - scale[0]))
        aspect_ratio = math.exp(log_ratio[0] + u1 * (log_ratio[1] - log_ratio[0]))
        cw = int(round(math.sqrt(target_area * aspect_ratio)))
        ch = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            i, j = int(u2 * (h - ch + 1)), int(u3 * (w - cw + 1))
            return (j, i, j + cw, i + ch), False
    in_ratio = float(w) / float(h)
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    i, j = (h - ch) // 2, (w - cw) // 2
    return (j, i, j + cw, i + ch), True


def test_random_resized_boxes_are_torchvisions():
    gen = torch.Generator().manual_seed(11)
    sizes = [(1, 1), (2, 3), (3, 2), (3, 3), (4, 7), (7, 4), (10, 20), (20, 10), (32, 32)]
    sizes += [(5, 100), (100, 5), (20, 100), (100, 20)]
    fallbacks = 0
    for h, w in sizes:
        for _ in range(150):
            u = torch.rand(decode.DRAWS, generator=gen, dtype=torch.float64)
            box, fell_back = torchvisions_box(h, w, u.tolist())
            assert decode.random_resized_box(h, w, u) == box, (h, w, u.tolist())
            fallbacks += fell_back
    assert fallbacks > 100  # the centre crops were compared too
    too_big = torch.full((decode.DRAWS,), 0.999999, dtype=torch.float64)  # every attempt fails
    for h, w in [(32, 32), (30, 36), (36, 30), (10, 30), (30, 10)]:  # ratios inside and out
        box, fell_back = torchvisions_box(h, w, too_big.tolist())
        assert fell_back and decode.random_resized_box(h, w, too_big) == box, (h, w)


def test_a_training_view_is_the_random_resized_box_then_a_flip_drawn_last():
    data = encoded(Image.fromarray(noise(24, 32, seed=12)))
    flips = set()
    for seed in range(8):
        u = torch.rand(
            decode.DRAWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        view = decode.decode_box(data, 3, decode.random_resized_box(24, 32, u), 8)
        flip = bool(u[-1] < 0.5)
        expected = view.flip(-1) if flip else view
        assert torch.equal(
            decode.train_view(data, 3, 8, torch.Generator().manual_seed(seed)), expected
        )
        flips.add((flip, bool(u[1] < 0.5), bool(u[-2] < 0.5)))
    assert len({f for f, *_ in flips}) == 2
    assert any(f != a for f, a, _ in flips) and any(f != b for f, _, b in flips)


def test_a_padded_crop_view_cuts_the_padded_evaluation_view_at_a_drawn_offset():
    data = encoded(Image.fromarray(noise(20, 20, seed=13)))
    centre = decode.decode_box(data, 3, decode.center_square(20, 20), 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(decode.train_view(data, 3, 8, gen, resized_crop=False, flip=False), centre)
    offsets = set()
    for seed in range(8):
        u = torch.rand(
            decode.DRAWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        dy, dx = int(u[0] * 5), int(u[1] * 5)  # RandomCrop(padding=2): offsets 0 to 4
        expected = F.pad(centre, (2, 2, 2, 2))[:, dy : dy + 8, dx : dx + 8]
        got = decode.train_view(
            data,
            3,
            8,
            torch.Generator().manual_seed(seed),
            resized_crop=False,
            crop_padding=2,
            flip=False,
        )
        assert torch.equal(got, expected)
        offsets.update((dy, dx))
    assert max(offsets) >= 3  # offsets near the far side were drawn


def test_the_extra_transform_gets_the_view_and_the_same_generator():
    data = encoded(Image.fromarray(noise(16, 16, seed=14)))
    seen = []

    def extra(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append((image.clone(), gen))
        return image // 2

    gen = torch.Generator().manual_seed(3)
    plain = decode.train_view(data, 3, 8, torch.Generator().manual_seed(3), flip=False)
    got = decode.train_view(data, 3, 8, gen, extra, flip=False)
    assert torch.equal(got, plain // 2)
    assert len(seen) == 1 and torch.equal(seen[0][0], plain) and seen[0][1] is gen


# -- a box decoded alone (data/_jpeg_region.c) --------------------------------------------------

region = pytest.mark.skipif(
    decode._jpeg_region is None,
    reason="data/_jpeg_region.c is not built (needs a C compiler and libjpeg62-turbo-dev)",
)


def photo_jpeg(h: int, w: int, mode: str = "RGB", seed: int = 0, **options) -> bytes:
    """A smooth picture with noise (what a photo decodes like), encoded as JPEG."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
    pixels = (pixels + rng.integers(-10, 11, pixels.shape)).clip(0, 255).astype(np.uint8)
    return encoded(Image.fromarray(pixels).convert(mode), "JPEG", quality=90, **options)


def whole_then_cut(data: bytes, channels: int, box, out: int, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(decode, "_jpeg_region", None)
        return decode.decode_box(data, channels, box, out)


REGION_JPEGS = {  # sizes from one MCU up, the three chroma subsamplings, grey, progressive
    "16x16": photo_jpeg(16, 16),
    "17x31": photo_jpeg(17, 31, seed=1),
    "301x207 4:2:0": photo_jpeg(301, 207, seed=2),
    "250x410 4:4:4": photo_jpeg(250, 410, seed=3, subsampling=0),
    "333x251 4:2:2": photo_jpeg(333, 251, seed=4, subsampling=1),
    "200x300 grey": photo_jpeg(200, 300, "L", seed=5),
    "301x333 progressive": photo_jpeg(301, 333, seed=6, progressive=True),
    "900x700": photo_jpeg(900, 700, seed=7),
}


@region
@pytest.mark.parametrize("name", REGION_JPEGS)
def test_a_box_decoded_alone_is_the_whole_decode_cut(name, monkeypatch):
    """Every box, scale and channel count: the same uint8 pixels as decoding the image whole at
    the same scale (simplejpeg) and cutting the box out."""
    data = REGION_JPEGS[name]
    h, w = decode.image_size(data)
    calls = []
    real = decode._jpeg_region.crop
    monkeypatch.setattr(
        decode,
        "_jpeg_region",
        type("Spy", (), {"crop": staticmethod(lambda *a: calls.append(a) or real(*a))}),
    )
    for seed in range(12):
        u = torch.rand(
            decode.DRAWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        box = decode.random_resized_box(h, w, u)
        for out in (224, 40, 9):
            for channels in (1, 3):
                alone = decode.decode_box(data, channels, box, out)
                assert torch.equal(alone, whole_then_cut(data, channels, box, out, monkeypatch)), (
                    box,
                    out,
                    channels,
                )
    assert len(calls) == 12 * 3 * 2  # every one of them was decoded alone
    assert {a[2] for a in calls} >= ({8, 4} if min(h, w) > 300 else {8})  # scales in eighths


@region
def test_only_the_box_rows_and_its_columns_are_decoded(monkeypatch):
    data = REGION_JPEGS["900x700"]
    calls = []
    real = decode._jpeg_region.crop

    def crop(*args):
        result = real(*args)
        calls.append((args[2:], result[1:]))
        return result

    monkeypatch.setattr(decode, "_jpeg_region", type("Spy", (), {"crop": staticmethod(crop)}))
    decode.decode_box(
        data, 3, (300, 100, 500, 700), 224
    )  # 200 x 600 px: width 200 < 448, full scale
    (eighths, x0, y0, x1, y1), (rows, width, first) = calls[0]
    assert (eighths, x0, y0, x1, y1) == (8, 300, 100, 500, 700)
    assert (
        rows == 600 and first <= 300 and 500 <= first + width < 700
    )  # not the image's 700 columns


@region
def test_a_box_is_decoded_alone_without_simplejpeg_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded whole")

    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", refuse)
    x = decode.decode_box(REGION_JPEGS["301x207 4:2:0"], 3, (10, 20, 110, 220), 50)
    assert x.shape == (3, 50, 50)
    with pytest.raises(BadImage, match="decoded whole"):  # under REGION_MIN_SIDE: decoded whole
        decode.decode_box(photo_jpeg(15, 40), 3, (0, 0, 10, 10), 8)


@region
@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_a_truncated_jpeg_is_refused_by_region_as_by_a_whole_decode(cut, monkeypatch):
    data = REGION_JPEGS["900x700"]
    short = data[: int(len(data) * cut)]
    top = (0, 0, 300, 300)  # rows all in the part that is still there
    with pytest.raises(BadImage, match="Premature end of JPEG file") as alone:
        decode.decode_box(short, 3, top, 64)
    with pytest.raises(BadImage) as whole:
        whole_then_cut(short, 3, top, 64, monkeypatch)
    assert str(alone.value) == str(whole.value)  # libjpeg-turbo's own line, word for word
    decode.decode_box(data + b"\0" * 10, 3, top, 64)  # bytes after the end-of-image: fine


@region
def test_corrupt_data_inside_the_box_is_refused(monkeypatch):
    data = bytearray(REGION_JPEGS["900x700"])
    scan = data.index(b"\xff\xda")
    data[scan + 200 : scan + 260] = b"\xff\xd0" * 30  # restart markers the file never declared
    with pytest.raises(BadImage) as alone:
        decode.decode_box(bytes(data), 3, (0, 0, 700, 900), 224)
    with pytest.raises(BadImage) as whole:
        whole_then_cut(bytes(data), 3, (0, 0, 700, 900), 224, monkeypatch)
    assert str(alone.value) == str(whole.value)  # the decoder's line, as a whole decode gives it


def with_thumbnail(data: bytes) -> bytes:
    """`data` carrying a thumbnail as cameras write one: a whole JPEG (its own scan and
    end-of-image markers) inside an APP1 segment, before the image's own scan."""
    app1 = b"Exif\0\0" + photo_jpeg(16, 16, seed=9)
    return data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]


@region
def test_a_jpeg_carrying_a_thumbnail_is_decoded_alone_and_its_truncation_still_seen(monkeypatch):
    """The end-of-image check reads the file's last markers: the thumbnail's come first."""
    plain = REGION_JPEGS["301x207 4:2:0"]
    data, box = with_thumbnail(plain), (10, 20, 110, 220)
    alone = decode.decode_box(data, 3, box, 50)
    assert torch.equal(alone, whole_then_cut(data, 3, box, 50, monkeypatch))
    assert torch.equal(alone, whole_then_cut(plain, 3, box, 50, monkeypatch))
    short, top = data[: int(len(data) * 0.9)], (0, 0, 100, 60)  # the box's rows still there
    with pytest.raises(BadImage) as whole:
        whole_then_cut(short, 3, top, 50, monkeypatch)
    with pytest.raises(BadImage, match=f"^{whole.value}$"):
        decode.decode_box(short, 3, top, 50)


@region
@pytest.mark.parametrize(
    "args,line",
    [
        ((2, 8, 0, 0, 1, 1), "bad channels, scale or box"),
        ((3, 0, 0, 0, 1, 1), "bad channels, scale or box"),
        ((3, 9, 0, 0, 1, 1), "bad channels, scale or box"),
        ((3, 8, 5, 0, 5, 1), "bad channels, scale or box"),
        ((3, 8, 0, 0, 701, 10), r"box \(0, 0, 701, 10\) outside 700 x 900"),
        ((3, 4, 0, 0, 10, 451), r"outside 350 x 450"),
    ],
)
def test_the_region_decoder_refuses_what_it_cannot_do(args, line):
    with pytest.raises(ValueError, match=line):
        decode._jpeg_region.crop(REGION_JPEGS["900x700"], *args)


@pytest.mark.parametrize("region_built", [True, False], ids=["decoded alone", "decoded whole"])
def test_a_jpeg_whose_header_does_not_parse_is_a_bad_image_in_one_line(region_built, monkeypatch):
    data = bytearray(photo_jpeg(64, 64))
    sof = data.index(b"\xff\xc0")
    data[sof + 9] = 7  # seven components: no decoder reads it
    if not region_built:
        monkeypatch.setattr(decode, "_jpeg_region", None)
    with pytest.raises(BadImage) as e:
        decode.decode_box(bytes(data), 3, (0, 0, 32, 32), 16)
    assert "\n" not in str(e.value) and str(e.value)
