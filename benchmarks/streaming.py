"""Streaming data (issue 27): resnetlab's streaming loader against torchvision's reference recipe.

Generates N JPEGs of 300-1000 px a side (seeded; smooth content plus noise, quality 90) in a
temporary folder, then times, each with 2 DataLoader worker processes over the same files:
  (a) resnetlab's StreamLoader (imagefolder read as it is): decode at a reduced DCT scale
      (simplejpeg), random-resized crop to 224, flip, uint8 batches of 64 (host_batches: what the
      workers deliver; the float conversion happens on the training device);
  (b) the reference, as torchvision's classification references do it: PIL open + convert RGB,
      RandomResizedCrop's box resized with Image.resize(BILINEAR), flip, uint8 tensor, batches of 64;
  (c) the ceiling: full-size decode only, with simplejpeg (the chosen decoder) and with Pillow.
Also (d) the two decoders at a reduced DCT scale (1/2): Pillow's Image.draft and simplejpeg's
min_height/min_width, which is how the decoder was chosen.
Prints images/s and CPU ms per image of each (this process and its workers, from /proc), and a/b:
the median of RUNS runs (5), each the best of passes 2-3.
Usage: OMP_NUM_THREADS=1 python benchmarks/streaming.py [N [RUNS]]
"""

from __future__ import annotations

import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from resnetlab.data import decode
from resnetlab.data.shards import open_image_folder
from resnetlab.data.stream import StreamLoader

BATCH, WORKERS, SIDE = 64, 2, 224


def make_images(folder: Path, n: int, seed: int = 0) -> int:
    """n JPEGs in folder/c{0,1}/; returns their decoded size in bytes (sum of H*W*3)."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        h, w = (int(v) for v in rng.integers(300, 1001, 2))
        small = rng.random((h // 32 + 2, w // 32 + 2, 3)) * 255
        image = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
        d = folder / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
        total += h * w * 3
    return total


class Reference(Dataset):
    """torchvision's reference recipe (RandomResizedCrop + RandomHorizontalFlip + PILToTensor)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(i)
        with Image.open(self.files[i]) as im:
            image = im.convert("RGB")
        u = torch.rand(decode.DRAWS, generator=gen, dtype=torch.float64)
        box = decode.random_resized_box(image.height, image.width, u)
        image = image.resize((SIDE, SIDE), Image.Resampling.BILINEAR, box=box)
        if u[-1] < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), i % 2


class DecodeOnly(Dataset):
    def __init__(self, files: list[Path], how: str) -> None:
        self.files, self.how = files, how

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        data = self.files[i].read_bytes()
        if self.how.startswith("simplejpeg"):
            import simplejpeg

            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            half = {"min_height": h // 2, "min_width": w // 2} if self.how.endswith("half") else {}
            array = simplejpeg.decode_jpeg(data, colorspace="RGB", **half)
        elif self.how == "pillow":
            with Image.open(io.BytesIO(data)) as im:
                array = np.asarray(im.convert("RGB"))
        else:  # pillow-draft: Pillow's reduced DCT scale, to the size a 224 crop of half the side needs
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (im.width // 2, im.height // 2))
                array = np.asarray(im.convert("RGB"))
        return array.shape[0]


def tree_cpu() -> float:
    """CPU seconds of this process and its live children (the loaders' persistent workers)."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(pid: str) -> list[str]:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    me = str(os.getpid())
    total = 0
    for pid in [me] + [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            stat = fields(pid)
        except OSError:  # a process that ended while listed
            continue
        if pid == me or stat[1] == me:  # stat[1] is the parent's pid
            total += int(stat[11]) + int(stat[12])  # utime + stime
    return total / tick


def measure(loader, n: int) -> tuple[float, float]:
    """(images per second, CPU ms per image) of one pass over the loader."""
    cpu, started = tree_cpu(), time.perf_counter()
    for _ in loader.host_batches() if isinstance(loader, StreamLoader) else loader:
        pass
    wall = time.perf_counter() - started
    return n / wall, 1000 * (tree_cpu() - cpu) / n


def one_run(folder: Path, run: int) -> dict[str, tuple[float, float]]:
    """Best images/s of passes 2-3 per loader (the first starts the workers and warms the page
    cache), with that pass's CPU ms per image."""
    split = open_image_folder(f"imagefolder:{folder}", True)
    files = [Path(f) for f in split.files]  # the training split: what both sides read
    n = len(files)
    ours = StreamLoader(split, BATCH, shuffle=True, size=SIDE, workers=WORKERS, seed=run)
    common = {"batch_size": BATCH, "num_workers": WORKERS, "persistent_workers": True}
    ref = DataLoader(Reference(files), shuffle=True, **common)
    loaders = {"a": ours, "b": ref}
    loaders |= {
        how: DataLoader(DecodeOnly(files, how), **common)
        for how in ("simplejpeg", "pillow", "pillow-draft", "simplejpeg-half")
    }
    passes: dict[str, list[tuple[float, float]]] = {}
    for epoch in range(3):
        ours.set_epoch(epoch)
        for name, loader in loaders.items():
            passes.setdefault(name, []).append(measure(loader, n))
    del loaders, ours, ref  # their workers end here, before the next run starts its own
    return {name: max(p[1:]) for name, p in passes.items()}


def main(n: int = 300, runs: int = 5) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # train/ and test/: the whole generated set is the training split both sides read
        decoded = make_images(folder / "train", n)
        make_images(folder / "test", 2, seed=1)
        files = sorted(folder.glob("train/c*/*.jpg"))
        encoded = sum(f.stat().st_size for f in files)
        print(f"{n} JPEGs, {encoded / 2**20:.1f} MiB encoded, {decoded / 2**20:.0f} MiB decoded")
        results = [one_run(folder, run) for run in range(runs)]
    ratios = [r["a"][0] / r["b"][0] for r in results]
    middle = sorted(range(runs), key=lambda i: ratios[i])[runs // 2]
    med = results[middle]
    labels = {
        "a": f"(a) resnetlab StreamLoader, {SIDE} px:",
        "b": f"(b) torchvision-style reference, {SIDE} px:",
        "simplejpeg": "(c) decode only, simplejpeg (full size):",
        "pillow": "    decode only, Pillow (full size):",
        "pillow-draft": "(d) decode only, Pillow draft (1/2 scale):",
        "simplejpeg-half": "    decode only, simplejpeg (1/2 scale):",
    }
    print(f"the median run of {runs} (by a/b), {WORKERS} workers each, best of passes 2-3:")
    for name, label in labels.items():
        speed, cpu = med[name]
        print(f"{label:44s} {speed:8.1f} images/s  {cpu:6.2f} CPU ms/image")
    print("a/b per run: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(f"a/b = {ratios[middle]:.3f} (median of {runs} runs)")
    print(f"CPU per image b/a = {med['b'][1] / med['a'][1]:.3f} (the median run)")
    assert all(math.isfinite(r) for r in ratios)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
