"""Every registered model through `resnetlab.export.export_onnx`, with each torch.onnx exporter.

Weights are random, with batch-norm statistics gathered on two random batches (so activations have
ordinary size, as in a trained net); the check runs on 8 other random inputs. For each model it
prints, as one JSON line: PyTorch's own float32 rounding on those inputs (max abs difference of its
float32 logits from float64 ones), and per exporter the max abs difference of onnxruntime's logits
from PyTorch's float32 ones, top-1 agreement, export time and file size. The check's tolerance is
set to 1.0 so that every figure is printed (the CLI's default is 1e-4).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/onnx_export.py [PATTERN]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from resnetlab.inference import onnx as export
from resnetlab.models import create_model, get_model_info, list_models


def main(pattern: str = "*") -> None:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    for name in list_models(pattern):
        c, h, w = get_model_info(name).default_input_size
        size = (
            (c, 64, 64) if h >= 64 else (c, h, w)
        )  # the ImageNet nets at 64 px: fast, 2x2 at the end
        torch.manual_seed(0)
        model = create_model(name)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # a plain average over the batches below
        with torch.no_grad():
            for _ in range(2):
                model.train()(torch.randn(8, *size))
        model.eval()
        x = torch.randn(8, *size)
        row = {
            "model": name,
            "size": size,
            "float32_noise": float(f"{export.float32_noise(model, x):.2e}"),
        }
        for exporter in ("dynamo", "torchscript"):
            started = time.perf_counter()
            try:
                r = export.export_onnx(
                    model,
                    tmp / f"{name}.onnx",
                    input_size=size,
                    exporter=exporter,
                    check_inputs=x,
                    tolerance=1.0,
                )
                ck = r["check"]
                row[exporter] = {
                    "diff": float(f"{ck['max_abs_diff']:.2e}"),
                    "agree": f"{ck['top1_agree']}/{ck['count']}",
                    "mb": round(r["bytes"] / 1e6, 1),
                    "export_s": round(r["export_seconds"], 1),
                    "total_s": round(time.perf_counter() - started, 1),
                }
            except Exception as e:
                row[exporter] = {"error": f"{type(e).__name__}: {e}"[:300]}
            (tmp / f"{name}.onnx").unlink(missing_ok=True)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
