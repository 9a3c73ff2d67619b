"""Using a trained model: `evaluate_run` (test loss, accuracy, per-class table, confusion) and
`predict` (top-k classes of image files), both seeing data exactly as training did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resnetlab.data import Dataset, load_dataset, make_loaders
from resnetlab.errors import UsageError
from resnetlab.models.fuse import fuse_bn
from resnetlab.report.mistakes import eval_mistakes
from resnetlab.train.device import resolve_device
from resnetlab.train.engine import evaluate
from resnetlab.train.report import per_class_table
from resnetlab.train.run import load_model
from resnetlab.train.tta import with_tta


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-only copy for inference: batch norms folded into the convolutions (one pass over each
    activation instead of two) and channels_last memory, as `resnetlab bench` measures evaluation."""
    return fuse_bn(model).to(memory_format=torch.channels_last)


def input_transform(meta: dict) -> dict:
    """The loader settings that show a model its input as training did (from the weights' metadata)."""
    norm = meta.get("normalize")
    return {
        "resize": meta.get("resize"),
        "normalize": (norm["mean"], norm["std"]) if norm else None,
    }


def evaluate_run(
    source: str | Path,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    tta: str = "none",
    device: str = "auto",
    batch_size: int = 256,
    mistakes: int = 0,
    out: str | Path | None = None,
) -> dict:
    dev = resolve_device(device)
    model, meta = load_model(source, dev)
    test_set = load_dataset(data or meta["data"], train=False, root=data_dir)
    if test_set.images.shape[1] != meta["in_chans"] or len(test_set.classes) != meta["num_classes"]:
        raise UsageError(
            f"{data or meta['data']} has {test_set.images.shape[1]} channels and {len(test_set.classes)} classes, "
            f"but the model takes {meta['in_chans']} channels and predicts {meta['num_classes']} classes; pick a matching --data"
        )
    loader = make_loaders(
        test=test_set, batch_size=batch_size, device=dev, **input_transform(meta)
    ).test
    model = inference_model(model)
    net = with_tta(model, tta)  # the trainer's final test figure uses the same views
    found = {}
    if (
        mistakes > 0
    ):  # one pass gives these figures and the mistakes, written to `out` (default RUN/eval/)
        result, found = eval_mistakes(net, loader, dev, test_set, source, out=out, k=mistakes)
    else:
        result = evaluate(net, loader, dev, num_classes=meta["num_classes"])
    return {
        "weights": str(source),
        "data": data or meta["data"],
        "tta": tta,
        "loss": result["loss"],
        "acc": result["acc"],
        "count": result["count"],
        "per_class": per_class_table(result["confusion"], test_set.classes),
        "confusion": result["confusion"].tolist(),
        "classes": test_set.classes,
        **found,
    }


# The largest image `predict` decodes: Pillow's own decompression-bomb threshold (~89.5 million
# pixels). Above it a small file could claim gigabytes; the header is checked before decoding.
MAX_IMAGE_PIXELS = 89_478_485


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """An image file as uint8 [C, H, W], converted to the model's channels (grey or RGB)."""
    import warnings

    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install 'resnetlab[images]'") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", Image.DecompressionBombWarning
            )  # refused below, in one line
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise UsageError(
                        f"image {path} is {width} x {height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel "
                        "limit (a decompression bomb, or a picture to shrink first)"
                    )
                img = img.convert("L" if channels == 1 else "RGB")
                t = torch.from_numpy(np.array(img, dtype=np.uint8)).view(
                    img.height, img.width, channels
                )
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as e:
        raise UsageError(
            f"image {path} is too large to decode safely ({e})".replace("\n", " ")
        ) from None
    except (
        Exception
    ) as e:  # Pillow fails on damaged files in many ways (OSError, ValueError, SyntaxError, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot read image {path}: {first}") from None
    return t.permute(2, 0, 1).contiguous()


def preprocess(
    images: list[torch.Tensor], meta: dict, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 [C, H, W] images of any size -> the model's float batch, through the loader's own
    transform: resized (bilinear, antialiased) to the model's input size and normalised as in training."""
    _, height, width = meta["input_size"]
    settings = dict(input_transform(meta), resize=(height, width))
    batches = []
    for img in images:
        one = Dataset("images", img.unsqueeze(0), torch.zeros(1, dtype=torch.int64))
        batches.append(
            next(iter(make_loaders(test=one, batch_size=1, device=device, **settings).test))[0]
        )
    return torch.cat(batches)


def predict(
    source: str | Path, images: list[str | Path], *, top_k: int = 3, device: str = "auto"
) -> list[dict]:
    if (
        Path(source).suffix == ".onnx"
    ):  # an exported model: onnxruntime on the CPU (resnetlab.export)
        from resnetlab.export import predict_onnx  # deferred: export imports this module

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
