"""A trained model from its weights file: rebuilt from the metadata saved beside the tensors (model,
classes, input size, normalisation), and the loader that shows it data as training did. Evaluation,
prediction, export and the report all load through here."""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.data import Dataset, Loader, load_dataset, make_loaders
from resnetlab.data.datasets import IMAGEFOLDER
from resnetlab.data.decode import decode_image
from resnetlab.data.eval_view import EvalView, default_view
from resnetlab.data.shards import LazyImages, StreamSplit, is_stream_name, open_stream
from resnetlab.data.stream import StreamLoader
from resnetlab.errors import CheckpointError
from resnetlab.models import create_model
from resnetlab.models.fuse import fuse_bn
from resnetlab.rundir import BEST_WEIGHTS, MODEL_WEIGHTS
from resnetlab.weights import load_weights


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-only copy for inference: batch norms folded into the convolutions (one pass over each
    activation instead of two) and channels_last memory, as `resnetlab bench` measures evaluation."""
    return fuse_bn(model).to(memory_format=torch.channels_last)


def input_transform(meta: dict) -> dict:
    """The loader settings that show a model its input as training did (from the weights' metadata)."""
    norm = meta.get("normalize")
    evaluation = {k: meta[k] for k in ("eval_resize", "eval_crop") if meta.get(k) is not None}
    return {
        "resize": meta.get("resize"),
        "normalize": (norm["mean"], norm["std"]) if norm else None,
        **evaluation,  # --eval-resize, --eval-crop: the run evaluated at these sizes
    }


def resolve_weights(source: str | Path) -> Path:
    """A run folder (its best.safetensors if any, else model.safetensors) or a .safetensors path."""
    source = Path(source)
    if source.is_dir():
        for name in (BEST_WEIGHTS, MODEL_WEIGHTS):
            if (source / name).exists():
                return source / name
        raise CheckpointError(
            f"{source} holds no model.safetensors; train it to the end or pass a weights file"
        )
    if not source.exists():
        raise CheckpointError(f"{source} does not exist; pass a run folder or a .safetensors file")
    return source


def load_model(source: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a trained model from a run folder or weights file: (model in eval mode, metadata)."""
    path = resolve_weights(source)
    state_dict, meta = load_weights(path)
    if "model" not in meta:
        raise CheckpointError(
            f"{path} has no resnetlab metadata (model name, classes); it was not saved by resnetlab"
        )
    model = create_model(
        meta["model"],
        num_classes=meta["num_classes"],
        in_chans=meta["in_chans"],
        **meta.get("model_kwargs", {}),
    )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not fit model {meta['model']}: {str(e).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta


def eval_view(meta: dict) -> EvalView | None:
    """The evaluation view a streamed run recorded in its weights (None: an in-memory run, or a
    file from before views were recorded: evaluated at its resize and eval sizes, as before)."""
    return EvalView.from_metadata(meta)


def view_for_stream(meta: dict, split: StreamSplit) -> EvalView:
    """How a model sees a streamed test set: its run's view; for a model trained in memory, the
    whole image, square, at its input size (the view of its evaluation, fixed-size images)."""
    view = eval_view(meta)
    if view is not None:
        return view
    side = meta.get("eval_crop") or meta.get("resize") or meta["input_size"][-1]
    return default_view(side, meta.get("eval_resize"), meta.get("eval_crop"), resized_crop=False)


class WholeImages:
    """A streamed split's images decoded whole, one at a time when asked for: what `preprocess`
    takes to show them through the run's view once (not a view of the view)."""

    def __init__(self, split: StreamSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode_image(self.split.read(int(i)), self.split.channels, accurate=True)


def whole_images(images):
    """`images` (a test set's) as `preprocess` takes them: a streamed split's decoded whole."""
    return WholeImages(images.split) if isinstance(images, LazyImages) else images


def shown_images(meta: dict, test_set: Dataset | StreamSplit):
    """`test_set`'s images as the model of `meta` sees them (for drawing, not batching)."""
    if isinstance(test_set, StreamSplit):
        return LazyImages(test_set, view_for_stream(meta, test_set))
    return test_set.images


def open_test_set(
    meta: dict,
    data: str | None = None,
    *,
    root: str | None = None,
    subset: int | None = None,
    seed: int = 0,
    remote: dict | None = None,
) -> Dataset | StreamSplit:
    """The test split of `data` (default: the run's) as eval reads it: a packed set (shards:PATH)
    streamed from disk, an image folder streamed when the run streamed it (a view recorded), and
    anything else into memory; `subset`: the seeded random subset a run's --subset takes;
    `remote`: the shard cache and its size for shards:URL (data/remote.py)."""
    name = data or meta["data"]
    if is_stream_name(name) or (eval_view(meta) and name.startswith(IMAGEFOLDER)):
        split = open_stream(name, False, **(remote or {}))
        return split.take(min(subset, len(split)), seed=seed) if subset is not None else split
    return load_dataset(name, train=False, root=root, subset=subset, seed=seed)


def loader_for(
    meta: dict,
    dataset: Dataset | StreamSplit,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    resize=None,
    workers: int = 0,
) -> Loader | StreamLoader:
    """`dataset` in order, in batches, as the model of `meta` was shown its data in training
    (resized, normalised; `resize` overrides the size). A streamed split is shown through the
    run's evaluation view (view_for_stream), decoded by `workers` processes; an in-memory one
    through the view's sizes when the run recorded one."""
    transform = input_transform(meta)
    if isinstance(dataset, StreamSplit):
        return StreamLoader(
            dataset,
            batch_size,
            shuffle=False,
            view=view_for_stream(meta, dataset),
            normalize=transform["normalize"],
            device=device,
            channels_last=channels_last,
            workers=workers,
        )
    view = eval_view(meta)
    if view is not None and resize is None:  # a streamed run's model on an in-memory set
        transform = {
            "normalize": transform["normalize"],
            "eval_resize": view.resize,
            "eval_crop": view.crop,
        }
    if resize is not None:  # the caller's size replaces the run's evaluation sizes too
        transform = {"resize": resize, "normalize": transform["normalize"]}
    return make_loaders(
        test=dataset,
        batch_size=batch_size,
        device=device,
        channels_last=channels_last,
        **transform,
    ).test
