"""Evaluating a model: loss, accuracy, a confusion matrix and each example's prediction, summed on the
device and over the processes. The trainer's per-epoch evaluation, `resnetlab eval`, the report
and the bench all measure through `evaluate` (or its CUDA-graph kind, train/graphs.py)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.device import autocast
from resnetlab.distributed.collectives import (
    all_reduce_sum,
    gather_concat,
)
from resnetlab.distributed.group import DistInfo


def batch_sums(
    out: torch.Tensor, y: torch.Tensor, sums: torch.Tensor, confusion: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a batch's (loss sum, correct, count) to `sums` and its (true, predicted) pairs to
    `confusion`, on the device: no host read (index_add_, unlike bincount, needs no size from the
    host). Returns each example's top probability and predicted class."""
    logits = out.float()
    top_prob, pred = logits.softmax(1).max(1)
    loss = F.cross_entropy(logits, y, reduction="sum")
    count = torch.full(
        (), float(len(y)), dtype=torch.float64, device=out.device
    )  # a fill, not a host copy
    sums += torch.stack([loss.double(), (pred == y).sum().double(), count])
    if confusion is not None:
        n = confusion.shape[0]
        confusion.view(-1).index_add_(0, y * n + pred, torch.ones_like(y))
    return top_prob, pred


def evaluation_result(
    sums: torch.Tensor,
    confusion: torch.Tensor | None,
    dist: DistInfo,
    per_example: tuple[list, list] | None = None,
    unreadable: list[int] | None = None,
) -> dict:
    """The figures of an evaluation, summed (and per-example results gathered) over the processes:
    loss, acc, count; "confusion" when counted; "top_prob" and "pred" (each example's top
    probability and predicted class, in dataset order, on the CPU) when `per_example` was collected.
    `unreadable`: the dataset indices of this process's images that could not be read (streamed
    data leaves them out), gathered into "unreadable" (sorted; the per-example results skip them)."""
    all_reduce_sum(sums, dist)
    if confusion is not None:
        all_reduce_sum(confusion, dist)
    loss_sum, correct, count = sums.tolist()
    result = {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1), "count": int(count)}
    if confusion is not None:
        result["confusion"] = confusion.cpu()
    if (
        per_example is not None
    ):  # a process may have no example (a split smaller than the processes)
        for (name, dtype), parts in zip(
            (("top_prob", torch.float32), ("pred", torch.int64)), per_example
        ):
            local = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=sums.device)
            result[name] = gather_concat(local.to(dtype), dist).cpu()
    if unreadable is not None:
        local = torch.tensor(unreadable, dtype=torch.int64, device=sums.device)
        result["unreadable"] = sorted(gather_concat(local, dist).tolist())
    return result


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    amp: bool = False,
    num_classes: int | None = None,
    dist: DistInfo = DistInfo(),
    per_example: bool = False,
) -> dict:
    """Loss, accuracy and count over the loader (summed over all processes); a confusion
    matrix (rows: true class, columns: predicted) when `num_classes` is given; each example's top
    probability and predicted class with `per_example` (see `evaluation_result`)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    confusion = (
        torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        if num_classes
        else None
    )
    collected = ([], []) if per_example else None
    for x, y in loader:
        with autocast(device, amp):
            out = model(x)
        top_prob, pred = batch_sums(out, y, sums, confusion)
        if collected is not None:
            collected[0].append(top_prob)
            collected[1].append(pred)
    # streamed data: the images that did not decode, left out of the figures
    return evaluation_result(sums, confusion, dist, collected, getattr(loader, "bad_indices", None))


@dataclass(eq=False)  # one evaluator per run (the graph kind holds buffers): compared by identity
class Evaluator:
    """`evaluate` bound to a model and its options: what `fit` calls after each epoch
    (train/graphs.py has the CUDA-graph kind, with the same call)."""

    model: nn.Module
    device: torch.device
    _: KW_ONLY
    amp: bool = False
    num_classes: int | None = None
    dist: DistInfo = DistInfo()
    per_example: bool = False

    def __call__(self, loader) -> dict:
        return evaluate(
            self.model,
            loader,
            self.device,
            amp=self.amp,
            num_classes=self.num_classes,
            dist=self.dist,
            per_example=self.per_example,
        )
