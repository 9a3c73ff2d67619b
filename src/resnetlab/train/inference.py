"""Using a trained model: `evaluate_run` (test loss, accuracy, per-class table, confusion) and
`predict` (top-k classes of image files), both seeing data exactly as training did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.errors import UsageError
from resnetlab.train.engine import evaluate
from resnetlab.train.report import per_class_table
from resnetlab.train.run import load_model
from resnetlab.train.trainer import resolve_device


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-only copy for inference: batch norms folded into the convolutions (one pass over each
    activation instead of two) and channels_last memory, as `resnetlab bench` measures evaluation."""
    from resnetlab.models.fuse import fuse_bn

    return fuse_bn(model).to(memory_format=torch.channels_last)


class _FlipAveraged(torch.nn.Module):
    """Test-time augmentation: average the logits of the image and its mirror image."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


def evaluate_run(source: str | Path, *, data: str | None = None, data_dir: str | None = None, tta: bool = False,
                 device: str = "auto", batch_size: int = 256) -> dict:
    from resnetlab.data import Loader, load_dataset

    dev = resolve_device(device)
    model, meta = load_model(source, dev)
    test_set = load_dataset(data or meta["data"], train=False, root=data_dir)
    if test_set.images.shape[1] != meta["in_chans"] or len(test_set.classes) != meta["num_classes"]:
        raise UsageError(
            f"{data or meta['data']} has {test_set.images.shape[1]} channels and {len(test_set.classes)} classes, "
            f"but the model takes {meta['in_chans']} channels and predicts {meta['num_classes']} classes; pick a matching --data"
        )
    norm = meta.get("normalize")
    loader = Loader(test_set, batch_size, shuffle=False, resize=meta.get("resize"), device=dev,
                    normalize=(norm["mean"], norm["std"]) if norm else None)
    model = inference_model(model)
    result = evaluate(_FlipAveraged(model) if tta else model, loader, dev, num_classes=meta["num_classes"])
    return {
        "weights": str(source), "data": data or meta["data"], "tta": tta, "loss": result["loss"], "acc": result["acc"],
        "count": result["count"], "per_class": per_class_table(result["confusion"], test_set.classes),
        "confusion": result["confusion"].tolist(), "classes": test_set.classes,
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
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise UsageError(f"image {path} is {width} x {height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel "
                                     "limit (a decompression bomb, or a picture to shrink first)")
                img = img.convert("L" if channels == 1 else "RGB")
                t = torch.from_numpy(np.array(img, dtype=np.uint8)).view(img.height, img.width, channels)
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as e:
        raise UsageError(f"image {path} is too large to decode safely ({e})".replace("\n", " ")) from None
    except Exception as e:  # Pillow fails on damaged files in many ways (OSError, ValueError, SyntaxError, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot read image {path}: {first}") from None
    return t.permute(2, 0, 1).contiguous()


def predict(source: str | Path, images: list[str | Path], *, top_k: int = 3, device: str = "auto") -> list[dict]:
    dev = resolve_device(device)
    model, meta = load_model(source, dev)
    _, height, width = meta["input_size"]
    norm = meta.get("normalize")
    batch = []
    for path in images:
        x = load_image(path, meta["in_chans"]).to(dev).unsqueeze(0).float() / 255
        if x.shape[-2:] != (height, width):  # the same bilinear, antialiased resize the loader uses
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        batch.append(x)
    x = torch.cat(batch)
    if norm:
        x = (x - torch.tensor(norm["mean"], device=dev).view(1, -1, 1, 1)) / torch.tensor(norm["std"], device=dev).view(1, -1, 1, 1)
    with torch.inference_mode():
        probs = inference_model(model)(x).float().softmax(1)
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = meta["classes"]
    return [
        {"image": str(path), "top": [{"class": classes[i], "prob": p} for p, i in zip(ps.tolist(), idx.tolist())]}
        for path, ps, idx in zip(images, top.values, top.indices)
    ]
