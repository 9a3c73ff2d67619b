"""How fast resnetlab's loader feeds training, measured in one run on this machine.

For batch 256 of Fashion-MNIST at 28 and 96 pixels it times, in the same process:
  * `Loader` batches/s (plain, as the textbook feeds the net; and with crop + flip);
  * the textbook's pipeline: per sample, a PIL image resized with BILINEAR, then ToTensor
    (bytes -> float / 255), stacked into a batch (what d2l's load_data_fashion_mnist does through
    torchvision, built here from Pillow + numpy; one process, as DataLoader(num_workers=0));
  * training steps/s of `resnet18_d2l` (SGD, cross-entropy) on the loader's batches;
and prints the ratios against the issue's targets (loader >= 20x the model, >= 10x PIL).
It also times loading the dataset: a first load into an empty cache, and a second one.

    python benchmarks/loader.py [--sizes 28 96] [--batch 256] [--seconds 3] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F


def timed_rate(step, seconds: float, min_runs: int, warmup: int = 1) -> tuple[float, int]:
    """(calls per second, calls) of `step`, run for about `seconds` and at least `min_runs` times."""
    for _ in range(warmup):
        step()
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        step()
        runs += 1
    return runs / (time.perf_counter() - start), runs


def loader_step(loader):
    """One batch per call, cycling through epochs."""
    state = {"it": iter(loader), "epoch": 0}

    def step():
        try:
            return next(state["it"])
        except StopIteration:
            state["epoch"] += 1
            loader.set_epoch(state["epoch"])
            state["it"] = iter(loader)
            return next(state["it"])

    return step


def pil_step(images: np.ndarray, labels: np.ndarray, batch: int, size: int, seed: int = 0):
    """The textbook's per-sample pipeline: PIL resize, then ToTensor, then collate by stacking."""
    from PIL import Image

    rng = np.random.default_rng(seed)

    def step():
        samples, targets = [], []
        for i in rng.choice(len(images), batch, replace=False):
            img = Image.fromarray(images[i], mode="L")
            if size != img.size[0]:
                img = img.resize((size, size), Image.BILINEAR)
            pixels = (
                torch.from_numpy(np.array(img, copy=True))
                .view(size, size, 1)
                .permute(2, 0, 1)
                .contiguous()
            )
            samples.append(pixels.float().div(255))
            targets.append(int(labels[i]))
        return torch.stack(samples), torch.tensor(targets)

    return step


def train_step(model, batch_source):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()

    def step():
        x, y = batch_source()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def transform_costs(
    images: torch.Tensor, batch: int, size: int, seconds: float
) -> dict[str, float]:
    """Milliseconds per batch of the loader's matrix-product transforms against the direct ops
    they replace: F.interpolate for the resize, zero-pad + gather for the crop."""
    from resnetlab.data import Augment, Dataset, Loader

    raw = images[:batch]
    ds = Dataset("bench", raw, torch.zeros(batch, dtype=torch.int64), ["x"])
    pad = 4
    plain = Loader(ds, batch, shuffle=True, resize=size)
    cropped = Loader(
        ds, batch, shuffle=True, resize=size, augment=Augment(crop_padding=pad, flip=True)
    )
    params = cropped._draw(torch.Generator().manual_seed(0), batch, 0, batch)
    offsets = torch.randint(0, 2 * pad + 1, (2, batch))

    def interpolate():
        return F.interpolate(
            raw.float().div_(255), size=(size, size), mode="bilinear", antialias=True
        )

    def pad_and_gather(x=interpolate()):  # the crop alone, on an already resized batch
        padded = F.pad(x, (pad, pad, pad, pad)).flatten(2)
        width = size + 2 * pad
        rows = (offsets[0][:, None, None] + torch.arange(size)[None, :, None]) * width
        index = (rows + offsets[1][:, None, None] + torch.arange(size)[None, None, :]).flatten(1)
        return padded.gather(2, index[:, None, :].expand(-1, x.shape[1], -1)).view_as(x)

    cases = {
        "F.interpolate resize": interpolate,
        "Loader resize (2 matmuls)": lambda: plain._transform(raw, None),
        "pad+gather crop only": pad_and_gather,
        "Loader resize+crop+flip": lambda: cropped._transform(raw, params),
    }
    return {name: 1000 / timed_rate(fn, seconds / 2, 10)[0] for name, fn in cases.items()}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def time_loads() -> tuple[float, float]:
    """Seconds for a first load (empty cache: decompress, md5, write the copy) and a second one."""
    from resnetlab.data import load_dataset

    saved = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        try:
            start = time.perf_counter()
            load_dataset("fashion-mnist")
            first = time.perf_counter() - start
            start = time.perf_counter()
            load_dataset("fashion-mnist")
            return first, time.perf_counter() - start
        finally:
            if saved is None:
                del os.environ["XDG_CACHE_HOME"]
            else:
                os.environ["XDG_CACHE_HOME"] = saved


def main() -> None:
    from resnetlab.data import Augment, Loader, load_dataset
    from resnetlab.models import create_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 96])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="time per pipeline, over all rounds (default 3)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds; the median counts (default 5)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    first, second = time_loads()
    print(
        f"load_dataset('fashion-mnist'), 60,000 training images: first {first:.2f} s (empty cache), "
        f"second {second:.3f} s"
    )

    train = load_dataset("fashion-mnist")
    images, labels = train.images[:, 0].numpy(), train.labels.numpy()
    rows = []
    for size in args.sizes:
        resize = None if size == train.images.shape[-1] else size
        plain = Loader(train, args.batch, shuffle=True, resize=resize)
        augmented = Loader(
            train,
            args.batch,
            shuffle=True,
            resize=resize,
            augment=Augment(crop_padding=4, flip=True),
        )
        # Rounds alternate the three pipelines, so a change in the machine's state (another job,
        # the heap after a model's training) slows all of them alike; the median round counts.
        pipelines = [
            loader_step(plain),
            loader_step(augmented),
            pil_step(images, labels, args.batch, size),
        ]
        rates = [[], [], []]
        for _ in range(args.rounds):
            for rate, step, min_runs in zip(rates, pipelines, (20, 20, 3)):
                rate.append(timed_rate(step, args.seconds / args.rounds, min_runs)[0])
        loader_rate, augmented_rate, pil_rate = (statistics.median(r) for r in rates)
        torch.manual_seed(0)
        model = create_model("resnet18_d2l", num_classes=10, in_chans=1)
        model_rate, steps = timed_rate(train_step(model, loader_step(plain)), args.seconds, 2)
        rows.append((size, loader_rate, augmented_rate, pil_rate, model_rate, steps))

    print(f"\nbatch {args.batch}, batches per second (higher is faster)")
    header = (
        "px",
        "Loader",
        "Loader+crop+flip",
        "PIL per-sample",
        "resnet18_d2l train",
        "Loader/PIL",
        "Loader/model",
    )
    print("  ".join(f"{h:>18}" if i else f"{h:>4}" for i, h in enumerate(header)))
    for size, loader_rate, augmented_rate, pil_rate, model_rate, steps in rows:
        cells = [
            f"{loader_rate:.1f}",
            f"{augmented_rate:.1f}",
            f"{pil_rate:.2f}",
            f"{model_rate:.3f} ({steps} steps)",
            f"{loader_rate / pil_rate:.1f}x",
            f"{loader_rate / model_rate:.0f}x",
        ]
        print(f"{size:>4}  " + "  ".join(f"{c:>18}" for c in cells))
    for size in args.sizes:
        if size != train.images.shape[-1]:
            costs = transform_costs(train.images, args.batch, size, args.seconds)
            print(
                f"\n{args.batch} images 28 -> {size} px, ms per batch: "
                + ", ".join(f"{name} {ms:.2f}" for name, ms in costs.items())
            )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    worst_pil = min(r[1] / r[3] for r in rows)
    worst_model = min(r[1] / r[4] for r in rows)
    print(
        f"\ntargets: Loader >= 10x PIL: {'met' if worst_pil >= 10 else 'NOT met'} (worst {worst_pil:.1f}x); "
        f"Loader >= 20x training: {'met' if worst_model >= 20 else 'NOT met'} (worst {worst_model:.0f}x)"
    )


if __name__ == "__main__":
    main()
