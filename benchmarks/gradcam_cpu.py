"""Grad-CAM seconds per image on the CPU (resnetlab.explain.grad_cam, Captum's LayerGradCam at the
last residual stage): the median of 5 calls (3 for resnet50) after a warm-up, random weights and
inputs, beside one plain forward pass of the same batch.

    OMP_NUM_THREADS=1 python benchmarks/gradcam_cpu.py
"""

from __future__ import annotations

import statistics
import time

import torch

from resnetlab.explain import grad_cam
from resnetlab.models import create_model

CASES = [  # model, input size, channels, batches
    ("resnet20", 28, 1, (1, 32)),
    ("resnet18_d2l", 96, 1, (1, 32)),
    ("resnet50", 224, 3, (1, 8)),
]


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, size, chans, batches in CASES:
        extra = {"num_classes": 10} if name == "resnet50" else {}
        model = create_model(name, in_chans=chans, **extra).eval()
        for n in batches:
            x = torch.rand(n, chans, size, size)
            grad_cam(model, x)  # warm-up
            times = []
            for _ in range(3 if name == "resnet50" else 5):
                started = time.perf_counter()
                grad_cam(model, x)
                times.append(time.perf_counter() - started)
            with torch.no_grad():
                started = time.perf_counter()
                model(x)
                forward = time.perf_counter() - started
            print(
                f"| {name} | {size} px | {n} | {statistics.median(times) / n * 1000:.1f} "
                f"| {forward / n * 1000:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
