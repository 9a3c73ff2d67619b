"""How long libjpeg-turbo (simplejpeg) takes to decode one JPEG at each DCT scale M/8 it offers,
the table data/decode.py's scale policy (FAST_SCALES) was chosen from (issue 36, item 6).

For photo-like JPEGs of a few sizes (default 1200x900 and 500x375, 4:2:0, quality 90) it times
`simplejpeg.decode_jpeg(..., min_height, min_width)` at every scale 1/8 ... 8/8 (best of
--repeat, ms, fast IDCT and upsampling as training decodes) and marks the scales slower than a
larger one: a scale slower than a larger scale is never worth picking (round the scale up).

    python benchmarks/decode_scales.py [--sizes 1200x900 500x375] [--repeat 15]

Measured here on a loaded machine (2 shared cores, load average ~10; best of 15, ms), 1200x900:
1/8 5.4, 2/8 3.8, 3/8 14.9, 4/8 4.0, 5/8 32.2, 6/8 5.9, 7/8 24.9, 8/8 8.3; 500x375: 1/8 0.59,
2/8 0.64, 3/8 0.71, 4/8 0.66, 5/8 0.88, 6/8 0.98, 7/8 1.15, 8/8 0.72. The odd scales, and 6/8
at the smaller size, are slower than a larger scale (issue 36 measured 6/8 at 6.37 ms against
3.79 ms at full size on a quiet machine), so the policy rounds up to 1/8, 1/4, 1/2 or 1.
"""

from __future__ import annotations

import argparse
import io
import math
import time

import numpy as np


def photo_like(h: int, w: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    smooth = 120 + 60 * np.sin(x / 37.0)[..., None] * np.cos(y / 23.0)[..., None]
    pixels = np.clip(smooth + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def time_scales(data: bytes, repeat: int) -> dict[int, float]:
    """{M: best ms} decoding `data` at scale M/8."""
    import simplejpeg

    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    table = {}
    for m in range(1, 9):
        mh, mw = math.ceil(h * m / 8), math.ceil(w * m / 8)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            out = simplejpeg.decode_jpeg(
                data, min_height=mh, min_width=mw, fastdct=True, fastupsample=True
            )
            best = min(best, time.perf_counter() - start)
        assert out.shape[:2] == (mh, mw), (m, out.shape)
        table[m] = best * 1000
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1200x900", "500x375"])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        table = time_scales(photo_like(h, w), args.repeat)
        print(f"{w}x{h}, best of {args.repeat}, ms per decode:")
        for m, ms in table.items():
            slower = [f"{k}/8" for k in range(m + 1, 9) if table[k] < ms]
            note = f"  slower than {', '.join(slower)}: never picked" if slower else ""
            print(f"  {m}/8: {ms:6.2f}{note}")


if __name__ == "__main__":
    main()
