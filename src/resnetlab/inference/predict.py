"""`resnetlab predict`: the top-k classes of image files, from a run's weights or an exported ONNX model."""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.device import resolve_device
from resnetlab.errors import UsageError
from resnetlab.inference.images import in_order, preprocess, read_images
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
    pictures, read, failed = read_images(images, meta)
    x = preprocess(pictures, meta, dev)
    with torch.inference_mode():
        probs = inference_model(model)(x).float().softmax(1)
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = meta["classes"]
    results = [
        {
            "image": path,
            "top": [{"class": classes[i], "prob": p} for p, i in zip(ps.tolist(), idx.tolist())],
        }
        for path, ps, idx in zip(read, top.values, top.indices)
    ]
    return in_order(images, results, failed)


def format_predictions(results: list[dict]) -> str:
    """`resnetlab predict`'s text: one line per image read, its top classes and probabilities
    (an image that could not be read has an "error" instead, which the CLI prints on stderr)."""
    return "\n".join(
        r["image"] + ": " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        for r in results
        if "top" in r
    )
