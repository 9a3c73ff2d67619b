"""`resnetlab predict`: the top-k classes of image files, from a run's weights or an exported ONNX model."""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.device import resolve_device
from resnetlab.errors import UsageError
from resnetlab.inference.images import load_image, preprocess
from resnetlab.inference.loading import inference_model, load_model
from resnetlab.inference.onnx import predict_onnx


def predict(
    source: str | Path, images: list[str | Path], *, top_k: int = 3, device: str = "auto"
) -> list[dict]:
    if top_k <= 0:
        raise UsageError(f"--top-k must be positive, got {top_k}")
    if (
        Path(source).suffix == ".onnx"
    ):  # an exported model: onnxruntime on the CPU (resnetlab.export)
        return predict_onnx(source, images, top_k=top_k)
    dev = resolve_device(device)
    model, meta = load_model(source, dev)
    x = preprocess([load_image(path, meta["in_chans"]) for path in images], meta, dev)
    with torch.inference_mode():
        probs = inference_model(model)(x).float().softmax(1)
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = meta["classes"]
    return [
        {
            "image": str(path),
            "top": [{"class": classes[i], "prob": p} for p, i in zip(ps.tolist(), idx.tolist())],
        }
        for path, ps, idx in zip(images, top.values, top.indices)
    ]


def format_predictions(results: list[dict]) -> str:
    """`resnetlab predict`'s text: one line per image, its top classes and probabilities."""
    return "\n".join(
        r["image"] + ": " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        for r in results
    )
