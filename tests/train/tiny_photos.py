"""A tiny image folder for the streamed-run tests: two classes told apart by brightness, JPEG and
PNG files of mixed sizes, train/ and test/ sub-folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(root: Path, train: int = 32, test: int = 8, largest: int = 40) -> Path:
    """`train` and `test` images in root/{train,test}/c0|c1, sides 20 to `largest` px."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            folder = root / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = (int(v) for v in rng.integers(20, largest + 1, 2))
            pixels = (rng.integers(0, 60, (h, w, 3)) + 120 * (i % 2)).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.{'jpg' if i % 3 else 'png'}")
    return root


# The tiniest training run on such a folder: width-4 ResNet-20, one epoch, one process, fp32.
TINY_RUN = dict(
    model="resnet20",
    model_kwargs={"width": 4},
    batch_size=8,
    epochs=1,
    seed=3,
    val_split=0,
    tta="none",
    resize=16,
    progressive_resize=0,
    init="default",
    amp=False,
    channels_last=False,
    device="cpu",
    workers=0,
)
