"""Precise batch-norm statistics, probed on finished runs (BENCHMARKS.md, "Training presets").

For each run folder it rebuilds the run from its checkpoint.pt (weights and configuration),
evaluates the kept weights on validation and test (bf16 as the trainer does, no TTA), then
recomputes every batch norm's running mean and variance as a plain average over a pass of training batches
(pycls's "precise BN") and evaluates again. The statistics are recomputed from:
  * `aug`: 40 batches of the last epoch's augmented training loader;
  * `clean`, `clean200`: 40 and 200 unaugmented training batches of 256.

    python benchmarks/precise_bn.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import copy
import itertools
import sys

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from resnetlab.data.loader import Loader
from resnetlab.device import autocast
from resnetlab.train.checkpoint import load_checkpoint
from resnetlab.train.config import TrainConfig
from resnetlab.train.setup import build, normalization


def recompute_statistics(
    model: nn.Module, batches, limit: int, device: torch.device, amp: bool
) -> None:
    """Running statistics as the plain average over `limit` of `batches` (torch's own
    swa_utils.update_bn: reset, momentum None for the pass, momenta restored), under the run's autocast."""
    with autocast(device, amp):
        update_bn(itertools.islice(batches, limit), model)


def main(runs: list[str]) -> None:
    for run in runs:
        checkpoint = load_checkpoint(run)  # holds the run's configuration, as --resume reads it
        cfg = TrainConfig.from_dict(checkpoint["config"])
        parts = build(cfg, checkpoint=checkpoint)

        def val_and_test(parts=parts) -> tuple[float, float]:
            return tuple(
                round(parts.evaluator(loader)["acc"], 4)
                for loader in (parts.loaders.val, parts.loaders.test)
            )

        stored = copy.deepcopy(parts.raw_model.state_dict())
        clean = Loader(
            parts.splits.train,
            256,
            shuffle=True,
            seed=1,
            normalize=normalization(cfg),
            device=parts.device,
            channels_last=parts.channels_last,
        )
        parts.loaders.train.set_epoch(cfg.epochs - 1)
        results = {"stored": val_and_test()}
        for name, batches, limit in [
            ("aug", parts.loaders.train, 40),
            ("clean", clean, 40),
            ("clean200", clean, 200),
        ]:
            parts.raw_model.load_state_dict(stored)
            recompute_statistics(parts.raw_model, batches, limit, parts.device, parts.amp)
            results[name] = val_and_test()
        print(run, "(val, test):", results, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    main(sys.argv[1:])
