"""The test images a net gets most confidently wrong: `mistakes_from_evaluation` (from an
evaluation's per-example results: a finished run reuses its kept weights' test evaluation),
`find_mistakes` (one evaluation pass, for `resnetlab eval` and older runs), `plot_mistakes`
(mistakes.png, a labelled grid) and `write_mistakes_csv` (mistakes.csv).

Streamed test sets may hold images that do not decode: the evaluation leaves them out and names
them ("unreadable"), the per-example results are matched to the labels of the others, and the
images left out are listed in unreadable.csv (index, true class, file).

The evaluation keeps, per example, only the top probability and its class; the same pass counts
the confusion matrix, so a run folder's `confusion.csv` (and the report's per-class table) comes
at no extra cost.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resnetlab.fileio import write_text
from resnetlab.report.plots import have_matplotlib, new_figure, save_png
from resnetlab.rundir import CONFUSION_CSV, MISTAKES_CSV, MISTAKES_PNG

if TYPE_CHECKING:  # torch is imported where it is used: reading the CSVs (the report) needs none
    import torch

MISTAKES_K = 32  # images in mistakes.png (and rows in mistakes.csv)
GRID_COLUMNS = 8
CELL_INCHES = 1.65  # the width of a cell in mistakes.png
MISTAKE_COLUMNS = ["index", "true", "predicted", "probability"]
UNREADABLE_COLUMNS = ["index", "true", "file"]
UNREADABLE_CSV = "unreadable.csv"


@dataclass
class Mistakes:
    """The result of one pass over a test set."""

    items: list[dict]  # {index, true, predicted, probability}, most confident first
    count: int  # examples seen
    wrong: int  # examples misclassified
    loss: float  # mean cross-entropy, as engine.evaluate computes it
    confusion: torch.Tensor  # int64 [classes, classes], rows: true, columns: predicted
    classes: list[str] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)  # {index, true, file}: left out

    @property
    def acc(self) -> float:
        return (self.count - self.wrong) / max(self.count, 1)


def mistakes_from_evaluation(
    result: dict,
    labels: torch.Tensor,
    classes: list[str],
    k: int = MISTAKES_K,
    describe=None,
) -> Mistakes:
    """The top-`k` confident mistakes in an evaluation's per-example results (engine.evaluate with
    `per_example=True`: "top_prob", "pred", in the order of `labels` less the images listed in
    "unreadable"), with its figures: no pass of its own, so a run's kept weights are not
    evaluated again for them. An item's `index` is its position in `labels`; `describe(index)`
    names the file of an unreadable image."""
    import torch

    prob, pred, label = result["top_prob"], result["pred"], labels.cpu()
    left_out = result.get("unreadable") or []
    unreadable = [
        {"index": i, "true": classes[int(label[i])], "file": describe(i) if describe else ""}
        for i in left_out
    ]
    index = torch.arange(len(label))
    if left_out:  # the per-example results hold the readable images only
        keep = torch.ones(len(label), dtype=torch.bool)
        keep[torch.tensor(left_out, dtype=torch.int64)] = False
        index, label = index[keep], label[keep]
    if len(pred) != len(label):
        raise ValueError(
            f"{len(pred)} per-example results for {len(label)} test labels: not the same examples"
        )
    if len(label) == 0:
        return Mistakes([], 0, 0, float("nan"), result["confusion"], list(classes), unreadable)
    wrong = pred != label
    score = torch.where(wrong, prob, torch.full_like(prob, -1.0))  # right answers sort last
    wrong_count = int(wrong.sum())
    top = score.topk(min(max(k, 0), wrong_count))
    items = [
        {"index": i, "true": classes[a], "predicted": classes[b], "probability": float(v)}
        for i, v, a, b in zip(
            index[top.indices].tolist(),
            top.values.tolist(),
            label[top.indices].tolist(),
            pred[top.indices].tolist(),
        )
    ]
    return Mistakes(
        items,
        len(label),
        wrong_count,
        result["loss"],
        result["confusion"],
        list(classes),
        unreadable,
    )


def write_mistakes_csv(mistakes: Mistakes, path: str | Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MISTAKE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in mistakes.items:
        writer.writerow(dict(row, probability=f"{row['probability']:.4f}"))
    write_text(path, buf.getvalue())


def write_unreadable_csv(mistakes: Mistakes, path: str | Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=UNREADABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(mistakes.unreadable)
    write_text(path, buf.getvalue())


def read_unreadable_csv(path: str | Path) -> list[dict]:
    """The test images an evaluation could not read ([] when it read them all)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(r, index=int(r["index"])) for r in csv.DictReader(f)]
    except FileNotFoundError:
        return []


def read_mistakes_csv(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [
            dict(r, index=int(r["index"]), probability=float(r["probability"]))
            for r in csv.DictReader(f)
        ]


def plot_mistakes(
    items: list[dict], images: torch.Tensor, path: str | Path, title: str = ""
) -> None:
    """A grid of the mistaken images (uint8 [N, C, H, W], indexed by each item's `index`), each
    labelled above with its true class, predicted class and probability, 1.65 inches a cell.

    Drawn as one mosaic in one axes, with the labels as text: a subplot per cell took ~0.9 s for 32
    cells, which a short run would feel."""
    import torch

    cols = min(GRID_COLUMNS, max(len(items), 1))
    rows = max(1, math.ceil(len(items) / cols))
    c, h, w = images.shape[1:] if len(images) else (1, 28, 28)
    gap = max(2, w // 8)  # white margin between cells
    cell_w = w + gap
    points_per_pixel = 72 * CELL_INCHES / cell_w
    band = math.ceil(26 / points_per_pixel)  # room above each image for two lines of 8-point text
    cell_h = band + h + gap
    mosaic = torch.full((rows * cell_h, cols * cell_w, 3), 255, dtype=torch.uint8)
    for n, item in enumerate(items):
        img = images[item["index"]].expand(3, h, w) if c == 1 else images[item["index"]][:3]
        top, left = (n // cols) * cell_h + band, (n % cols) * cell_w
        mosaic[top : top + h, left : left + w] = img.permute(1, 2, 0)
    width = CELL_INCHES * cols
    height = width * mosaic.shape[0] / mosaic.shape[1]
    title_inches = 0.4 if title else 0.0
    fig = new_figure(figsize=(width, height + title_inches))
    ax = fig.add_axes((0, 0, 1, height / (height + title_inches)))
    ax.imshow(
        mosaic.numpy(), interpolation="nearest", aspect="auto"
    )  # the axes has the mosaic's aspect
    ax.axis("off")
    for n, item in enumerate(items):
        x, y = (n % cols) * cell_w + w / 2, (n // cols) * cell_h + band - 1
        ax.text(
            x,
            y,
            f"#{item['index']} true: {item['true']}\npred: {item['predicted']} ({item['probability']:.2f})",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if not items:
        ax.text(
            mosaic.shape[1] / 2,
            mosaic.shape[0] / 2,
            "no mistakes",
            ha="center",
            va="center",
            fontsize=12,
        )
    if title:
        fig.suptitle(title, fontsize=11)
    save_png(fig, Path(path))


def write_confusion_csv(confusion, classes: list[str], path: str | Path) -> None:
    """The confusion matrix as CSV: a `true` column, then one column per predicted class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true", *classes])
    m = confusion.tolist() if hasattr(confusion, "tolist") else confusion
    for name, row in zip(classes, m):
        writer.writerow([name, *row])
    write_text(path, buf.getvalue())


def read_confusion_csv(path: str | Path) -> tuple[list[str], list[list[int]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0][1:], [[int(v) for v in row[1:]] for row in rows[1:]]


def write_analysis(
    folder: str | Path, mistakes: Mistakes, images: torch.Tensor, *, title: str = ""
) -> list[Path]:
    """mistakes.csv, confusion.csv, unreadable.csv (when test images could not be read) and (with
    matplotlib) mistakes.png in `folder`; the paths written."""
    folder = Path(folder)
    written = [folder / MISTAKES_CSV, folder / CONFUSION_CSV]
    write_mistakes_csv(mistakes, written[0])
    write_confusion_csv(mistakes.confusion, mistakes.classes, written[1])
    if mistakes.unreadable:
        written.append(folder / UNREADABLE_CSV)
        write_unreadable_csv(mistakes, written[-1])
    elif (folder / UNREADABLE_CSV).exists():  # an earlier evaluation's list, no longer true
        (folder / UNREADABLE_CSV).unlink()
    if have_matplotlib():
        plot_mistakes(mistakes.items, images, folder / MISTAKES_PNG, title=title)
        written.append(folder / MISTAKES_PNG)
    return written


def per_class_table(confusion, classes: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(classes):
        total = int(confusion[i].sum())
        rows.append(
            {
                "class": name,
                "count": total,
                "acc": (int(confusion[i, i]) / total) if total else float("nan"),
            }
        )
    return rows
