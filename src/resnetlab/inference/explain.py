"""Grad-CAM for trained runs: `explain_images` (what `resnetlab explain RUN IMAGE...` does: load the
weights, read the images as training saw them, draw one PNG grid of overlays) and
`write_mistakes_cam` / `ensure_mistakes_cam` (the report's Grad-CAM row of the most confident
mistakes, mistakes_gradcam.png in the run folder).

The maps come from `resnetlab.explain.grad_cam` and the grid is drawn by report/plots.py; this
module only wires runs, files and plots to them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from resnetlab.errors import UsageError
from resnetlab.explain import grad_cam, require_captum, resolve_layer
from resnetlab.inference.images import in_order, preprocess, read_images
from resnetlab.inference.loading import load_model, open_test_set, whole_images
from resnetlab.report.mistakes import read_mistakes_csv
from resnetlab.report.plots import have_matplotlib, plot_cam_grid
from resnetlab.rundir import (
    MISTAKES_CAM,
    MISTAKES_CSV,
    SUMMARY_FILE,
    kept_weights,
    read_config,
    read_summary,
)
from resnetlab.weights import load_weights

MISTAKES_CAM_K = 8  # the most confident mistakes it shows


def have_captum() -> bool:
    return importlib.util.find_spec("captum") is not None


def _display(batch: torch.Tensor, meta: dict) -> torch.Tensor:
    """The model's input batch back in [0, 1] for display (the training normalisation undone)."""
    norm = meta.get("normalize")
    x = batch.detach().float().cpu()
    if norm:
        mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
        x = x * std + mean
    return x.clamp(0, 1)


def _class_index(name: str, classes: list[str]) -> int:
    lowered = [c.lower() for c in classes]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    raise UsageError(f"--class {name!r} is not one of the model's classes: {', '.join(classes)}")


def default_out(source: str | Path) -> Path:
    source = Path(source)
    return (
        source / "explain.png"
        if source.is_dir()
        else source.with_name(f"{source.stem}-explain.png")
    )


def explain_images(
    source: str | Path,
    images: list[str | Path],
    *,
    class_name: str | None = None,
    layer: str | None = None,
    out: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Grad-CAM overlays of the predicted class (or `class_name`) for each image file, at `layer`
    (default: the last residual stage), drawn as one PNG grid (default RUN/explain.png).
    Returns {"out", "layer", "images": [{"image", "predicted", "prob", "explained"}]}, in the
    order given; an image that cannot be read is {"image", "error"} there and the others are
    explained, as `predict` does (none read: the first one's UsageError)."""
    require_captum()  # before any work: a missing extra is one line
    model, meta = load_model(source, device)
    classes = list(meta["classes"])
    target = None if class_name is None else _class_index(class_name, classes)
    layer_name, _ = resolve_layer(model, layer)
    pictures, read, failed = read_images(images, meta)
    batch = preprocess(pictures, meta, device)
    with torch.no_grad():
        probs = model(batch).float().softmax(1).cpu()
    cams = grad_cam(model, batch, target=target, layer=layer_name)
    pred = probs.argmax(1).tolist()
    explained = pred if target is None else [target] * len(pred)
    rows = [
        {
            "image": str(p),
            "predicted": classes[k],
            "prob": float(probs[i, k]),
            "explained": classes[e],
        }
        for i, (p, k, e) in enumerate(zip(read, pred, explained))
    ]
    titles = [
        f"{Path(r['image']).name[:22]}\npred {r['predicted']} ({r['prob']:.2f})"
        + ("" if target is None else f"\nmap of {r['explained']}")
        for r in rows
    ]
    path = Path(out) if out is not None else default_out(source)
    what = "the predicted class" if target is None else f"class {classes[target]}"
    plot_cam_grid(
        _display(batch, meta),
        cams,
        titles,
        path,
        title=f"Grad-CAM of {what} at {layer_name} ({meta['model']})",
    )
    return {"out": str(path), "layer": layer_name, "images": in_order(images, rows, failed)}


def write_mistakes_cam(
    folder: str | Path,
    weights: str | Path,
    items: list[dict],
    test_images: torch.Tensor,
    k: int = MISTAKES_CAM_K,
) -> Path | None:
    """mistakes_gradcam.png in `folder`: Grad-CAM of the predicted (wrong) class for the `k` most
    confident mistakes (`items` as mistakes.csv holds them, `test_images` uint8 [N, C, H, W]
    indexed by their `index`), at the last residual stage of `weights`. None (nothing written)
    without Captum or matplotlib, or without mistakes."""
    items = items[:k]
    if not items or not have_captum() or not have_matplotlib():
        return None
    model, meta = load_model(weights, "cpu")
    classes = list(meta["classes"])
    whole = whole_images(test_images)  # a streamed split's: shown through the run's view once
    batch = preprocess([whole[r["index"]] for r in items], meta, "cpu")
    target = [classes.index(r["predicted"]) for r in items]
    cams = grad_cam(model, batch, target=target)
    titles = [
        f"#{r['index']} true: {r['true']}\npred: {r['predicted']} ({r['probability']:.2f})"
        for r in items
    ]
    return plot_cam_grid(
        _display(batch, meta),
        cams,
        titles,
        Path(folder) / MISTAKES_CAM,
        title=f"Grad-CAM of the predicted class at {resolve_layer(model)[0]}",
        columns=k,
    )


def ensure_mistakes_cam(folder: str | Path) -> bool:
    """For a finished run with mistakes.csv but no mistakes_gradcam.png (made before it existed, or
    without Captum then): draw it from the kept weights and the run's own test set. False when
    not needed or not possible (no Captum, no matplotlib, no mistakes.csv, no weights)."""
    folder = Path(folder)
    summary_path, csv_path = folder / SUMMARY_FILE, folder / MISTAKES_CSV
    if (folder / MISTAKES_CAM).exists() or not summary_path.exists() or not csv_path.exists():
        return False
    if not have_captum() or not have_matplotlib():
        return False
    kept = folder / kept_weights(read_summary(folder))
    if not kept.exists():
        return False
    cfg = read_config(folder)["config"]
    _, meta = load_weights(kept)
    test_set = open_test_set(  # a packed set streamed, as eval reads it
        meta, cfg["data"], root=cfg.get("data_dir"), subset=cfg.get("subset"), seed=cfg["seed"]
    )
    items = read_mistakes_csv(csv_path)
    return write_mistakes_cam(folder, kept, items, test_set.images) is not None
