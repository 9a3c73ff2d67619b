"""Every figure resnetlab draws (matplotlib, an optional extra; on bare Figures, written as PNG
atomically): a run's curves and confusion matrix, the Grad-CAM grid (`resnetlab explain`, the
report's row of mistakes) and the degradation experiment's two figures."""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from resnetlab.errors import UsageError
from resnetlab.fileio import write_bytes
from resnetlab.rundir import BEST_WEIGHTS

if TYPE_CHECKING:  # the figures take tensors; importing this module does not import torch
    import torch


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def preload_matplotlib() -> None:
    """Import what the plots need in a background thread, so that the end of a run does not wait
    for it: the import (about 0.6 s here) runs while training's kernels have released the GIL."""
    if have_matplotlib():
        threading.Thread(
            target=lambda: [importlib.import_module(m) for m in PLOT_MODULES], daemon=True
        ).start()


PLOT_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")


def new_figure(**kwargs):
    # A bare Figure renders to PNG without pyplot, so a notebook's backend is left alone.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def png_bytes(fig, dpi: int = 110) -> bytes:
    """The figure as PNG. Characters its font lacks (a class or file named in Japanese, say) are
    drawn as boxes: said in one warning line, once per process, instead of matplotlib's two
    lines per character and figure."""
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=_MISSING_GLYPH.pattern, category=UserWarning)
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    for w in caught:
        found = _MISSING_GLYPH.match(str(w.message))
        if found is None:  # not ours to swallow: passed on as it came
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        else:
            _missing_glyphs.add(chr(int(found.group(1))))
    unsaid = sorted(_missing_glyphs - _said_glyphs)
    if unsaid:
        _said_glyphs.update(unsaid)
        print(
            f"resnetlab: warning: the figures draw {' '.join(unsaid)} as boxes: matplotlib's font "
            "has no such characters (add an installed font that has them to its font.family in "
            "matplotlibrc, e.g. `font.family: DejaVu Sans, Noto Sans CJK JP`)",
            file=sys.stderr,
        )
    return buf.getvalue()


_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")
_missing_glyphs: set[str] = set()
_said_glyphs: set[str] = set()


def save_png(fig, path: Path) -> None:
    write_bytes(path, png_bytes(fig))


def plot_curves(
    rows: list[dict],
    path: str | Path | None,
    title: str = "",
    *,
    kept_epoch: int | None = None,
    final_test: tuple[str, float] | None = None,
):
    """Loss and accuracy per epoch, train and test (and val), like the textbook's animated plot.

    Every epoch is a marker (a one-epoch run shows points), the epoch axis has whole-number
    ticks, `kept_epoch` (the epoch whose weights were kept) is a grey vertical line, and
    `final_test` (label, accuracy: the kept weights' final test figure, e.g. with TTA) a star at
    the kept epoch. Written to `path` as PNG (None: not written); the figure is returned."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = new_figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "-o", ms=4, label="train loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], "-o", ms=4, label="train acc")
    for split, style in (("val", "--s"), ("test", ":^")):
        if rows and f"{split}_acc" in rows[0]:
            ax_loss.plot(
                epochs, [r[f"{split}_loss"] for r in rows], style, ms=4, label=f"{split} loss"
            )
            ax_acc.plot(
                epochs, [r[f"{split}_acc"] for r in rows], style, ms=4, label=f"{split} acc"
            )
    if kept_epoch is not None and kept_epoch in epochs:
        for ax in (ax_loss, ax_acc):
            ax.axvline(kept_epoch, color="grey", lw=1, alpha=0.6, label=f"kept: epoch {kept_epoch}")
    if final_test is not None and kept_epoch is not None:
        label, acc = final_test
        ax_acc.plot([kept_epoch], [acc], "*", ms=12, color="C3", label=f"{label} {acc:.4f}")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:  # a margin around one epoch too, so that its ticks are whole numbers
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.tight_layout()
    if path is not None:
        save_png(fig, Path(path))
    return fig


def curve_marks(summary: dict) -> dict:
    """plot_curves' marks from a run's summary.json: the kept epoch and the final test figure."""
    if not summary:
        return {}
    if summary.get("kept_weights") == BEST_WEIGHTS:
        kept_epoch = summary.get("best_epoch")
    else:
        kept_epoch = summary.get("epochs")
    acc = summary.get("kept_test_acc")
    tta = summary.get("tta")
    label = f"final test ({tta} TTA)" if tta else "final test"
    return {"kept_epoch": kept_epoch, "final_test": (label, acc) if acc is not None else None}


def curves_png(rows: list[dict], title: str = "", **marks) -> bytes:
    """plot_curves' figure as PNG bytes, written nowhere (report.html of an unfinished run)."""
    return png_bytes(plot_curves(rows, None, title, **marks))


def plot_confusion(confusion, classes: list[str], path: str | Path, title: str = "") -> None:
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    n = len(classes)
    fig = new_figure(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax = fig.subplots()
    m = confusion.numpy() if hasattr(confusion, "numpy") else confusion
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        vmax = m.max() if m.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] > vmax / 2 else "black",
                )
    if title:
        ax.set_title(title)
    save_png(fig, Path(path))


# --- Grad-CAM (`resnetlab explain`, the report's Grad-CAM row: inference/explain.py) ------------

COLUMNS = 6
CELL_INCHES = 1.9


def plot_cam_grid(
    images: torch.Tensor,
    cams: torch.Tensor,
    titles: list[str],
    path: str | Path,
    title: str = "",
    columns: int = COLUMNS,
) -> Path:
    """A grid of images ([N, C, H, W] in [0, 1]) each with its Grad-CAM map ([N, H, W] in [0, 1])
    laid over it in the `jet` colours (red: most evidence for the class), titled; one PNG."""
    if not have_matplotlib():
        raise UsageError("drawing Grad-CAM needs matplotlib: pip install 'resnetlab[plot]'")
    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    fig = new_figure(
        figsize=(CELL_INCHES * cols, (CELL_INCHES + 0.35) * rows + (0.4 if title else 0))
    )
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, img, cam, text in zip(axes, images, cams, titles):
        pixels = img[0] if img.shape[0] == 1 else img[:3].permute(1, 2, 0)
        ax.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(text, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_png(fig, Path(path))
    return Path(path)


# --- the degradation experiment (experiments/degradation.py; its caller checks have_matplotlib) -


def _degradation_style(net: str, depths: list[int], depth: int, residual: bool) -> dict:
    # As in the paper's figures: one colour per depth; here plain dashed, residual solid.
    # Markers tell the nets apart where lines cannot (one epoch: a point each): residual filled
    # circles, plain open squares, a little apart so that equal errors do not hide each other.
    colour = "tab:red" if depth == max(depths) else "tab:blue"
    marker = (
        dict(marker="o", markersize=6)
        if residual
        else dict(marker="s", markersize=8, markerfacecolor="none", markeredgewidth=1.5)
    )
    return dict(color=colour, linestyle="-" if residual else "--", label=net, **marker)


def plot_degradation(rows: list[dict], path: str | Path, title: str = ""):
    """Training error (left) and test error (right) in percent against epoch, one line per net."""
    depths = sorted({r["depth"] for r in rows})
    fig = new_figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2, sharex=True)
    for net in dict.fromkeys(r["net"] for r in rows):
        mine = [r for r in rows if r["net"] == net]
        style = _degradation_style(net, depths, mine[0]["depth"], mine[0]["residual"])
        for ax, key in zip(axes, ("train_err", "test_err")):
            ax.plot([r["epoch"] for r in mine], [100 * r[key] for r in mine], **style)
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    for ax, name in zip(axes, ("training error (%)", "test error (%)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"plain (dashed, open squares) vs residual (solid, dots): {title}")
    fig.tight_layout()
    save_png(fig, Path(path))
    return fig


def plot_gradients(
    norms: dict[str, list[tuple[str, float]]], path: str | Path, title: str = ""
) -> None:
    """Gradient norm per layer (log scale), input layer first, one line per net."""
    fig = new_figure(figsize=(7, 3.8))
    ax = fig.subplots()
    for net, layers in norms.items():
        residual = net.startswith("resnet")
        ax.plot(
            range(1, len(layers) + 1),
            [n for _, n in layers],
            marker=".",
            linestyle="-" if residual else "--",
            color="tab:green" if residual else "tab:purple",
            label=net,
        )
    ax.set_yscale("log")
    ax.set_xlabel("layer (1 = first conv, last = classifier)")
    ax.set_ylabel("weight gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(f"per-layer gradient norm {title}")
    fig.tight_layout()
    save_png(fig, Path(path))
