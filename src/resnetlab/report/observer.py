"""What a training run tells whoever watches it: the console, the run folder, the event log,
TensorBoard (as Lightning's callbacks and loggers). The trainer hands `fit` one list of observers
and calls each method on every one of them, in the list's order; each observer decides for itself
what its process does (most act on rank 0 alone). Every method here does nothing, so an observer
overrides only what it needs.
"""

from __future__ import annotations


class Observer:
    def on_progress(self, state, step: int, total: int, stats: dict) -> None:
        """At each sync point: `step` of `total` steps of the epoch `state.epoch + 1`; `stats` holds
        the running loss, accuracy and learning rate, summed over the processes."""

    def on_evaluate(self, epoch: int, split: str, result: dict) -> None:
        """An evaluation of epoch `epoch` on "val" or "test" (with its confusion matrix)."""

    def on_epoch_end(self, state, row: dict, is_best: bool) -> None:
        """After epoch `row["epoch"]`: its metrics row; `is_best` on validation so far."""

    def on_fallback(self, reason: str) -> None:
        """Capture chosen by default failed (`reason`): the run goes on op by op (train/graphs.py)."""

    def on_replan(self, event: dict) -> None:
        """Under --time-limit, the machine ran slower than planned: the rest of the run was
        shortened to `event["epochs"]` epochs (`event["line"]` says how; train/timing.py)."""

    def on_interrupt(self, state) -> None:
        """The run stops early (Ctrl-C): `state` is what resumes it."""

    def on_failure(self, error: BaseException) -> None:
        """The run failed with `error` (a non-finite loss, a lost peer, a failed write, ...)."""

    def on_finish(self, summary: dict, final: dict, test_set) -> None:
        """After the last epoch and summary.json: `final` is the kept weights' test evaluation
        (with per-example results), `test_set` the data it ran on."""
