"""A tiny image folder for the fast streaming tests (tests/data/test_stream_loader.py,
tests/data/test_shards.py): 8 x 8 px images of random pixels, each one different and none
symmetric, every other one a JPEG (the rest PNG), three classes, train/ and test/ sub-folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("ant", "bee", "cat")


def write_tiny_folder(root: Path, train: int = 10, test: int = 5, side: int = 8) -> Path:
    """`train` and `test` images in root/{train,test}/CLASS/NNN.png|jpg, image i of class i % 3."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            folder = root / split / CLASSES[i % 3]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (side, side, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root
