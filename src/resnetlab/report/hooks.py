"""What the trainer calls: `RunReporter`, one object per run, every method a no-op on ranks other
than 0 (the run folder's `enabled` is False there).

    rep = RunReporter(run, cfg, resumed=..., state=state)   # 'start'/'resume' event; TensorBoard writer
    rep.on_progress(state.global_step, stats)               # at the sync points (TensorBoard scalars)
    rep.on_epoch_end(row)                                   # epoch metrics (TensorBoard)
    rep.on_interrupt(state)                                 # 'interrupt' event
    rep.on_failure(error)                                   # 'failed' event
    rep.finish(final, test_set, summary)                    # mistakes.png/.csv, confusion.csv,
                                                            #   report.html, TensorBoard images, 'finish'
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time

from resnetlab.errors import first_line
from resnetlab.report.events import record_event
from resnetlab.report.html import write_report
from resnetlab.report.mistakes import MISTAKES_K, mistakes_from_evaluation, write_analysis
from resnetlab.train.tensorboard import TensorBoardLogger, require_tensorboard


class RunReporter:
    def __init__(self, run, cfg, *, resumed: bool, state) -> None:
        self.run, self.cfg = run, cfg
        self.enabled = run.enabled
        self.tb = None
        if cfg.tensorboard:
            require_tensorboard()  # on every rank: all fail alike, before any training
            if self.enabled:
                self.tb = TensorBoardLogger(run.path, cfg.to_dict(), resumed=resumed)
        if self.enabled:
            record_event(
                run.path,
                "resume" if resumed else "start",
                epoch=state.epoch,
                step_in_epoch=state.step_in_epoch,
                global_step=state.global_step,
                host=platform.node(),
                pid=os.getpid(),
                argv=sys.argv[1:],
            )

    def on_progress(self, global_step: int, stats: dict) -> None:
        if self.tb is not None:
            self.tb.on_progress(global_step, stats)

    def on_epoch_end(self, row: dict) -> None:
        if self.tb is not None:
            self.tb.on_epoch_end(row)

    def on_interrupt(self, state) -> None:
        if self.enabled:
            record_event(
                self.run.path,
                "interrupt",
                epoch=state.epoch,
                step_in_epoch=state.step_in_epoch,
                global_step=state.global_step,
            )
        self._close_tb()

    def on_failure(self, error: BaseException) -> None:
        if (
            self.enabled and self.run.path.is_dir()
        ):  # a removed folder is not made again for this record
            # The failure may be the disk's (full, read-only): then this record cannot be written
            # either, and the run's own error is the one to report.
            with contextlib.suppress(OSError):
                record_event(
                    self.run.path,
                    "failed",
                    error=type(error).__name__,
                    message=first_line(error, 300),
                )
        self._close_tb()

    def finish(self, final: dict, test_set, summary: dict, k: int | None = None) -> dict:
        """After the run (rank 0): the mistakes of the kept weights, taken from their test
        evaluation `final` (with per-example results: no second pass), the report, the TensorBoard
        images, the 'finish' event. Returns the seconds each took. A failure here leaves the
        finished run as it is and is reported on stderr and in events.jsonl."""
        if not self.enabled:
            return {}
        seconds = {}
        try:
            started = time.perf_counter()
            mistakes = mistakes_from_evaluation(
                final, test_set.labels, list(test_set.classes), MISTAKES_K if k is None else k
            )
            kept = summary.get("kept_weights", "model.safetensors")
            write_analysis(
                self.run.path,
                mistakes,
                test_set.images,
                title=f"{kept}: {mistakes.wrong} of {mistakes.count} test images wrong; "
                f"the {len(mistakes.items)} most confident",
            )
            seconds["mistakes_seconds"] = time.perf_counter() - started
            if self.tb is not None:
                started = time.perf_counter()
                self.tb.on_finish(
                    summary,
                    {
                        "confusion": self.run.file("confusion.png"),
                        "mistakes": self.run.file("mistakes.png"),
                    },
                )
                seconds["tensorboard_seconds"] = time.perf_counter() - started
        except Exception as e:  # noqa: BLE001 - the run itself is finished and saved
            print(
                f"resnetlab: warning: mistakes not written: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
            seconds["error"] = f"{type(e).__name__}: {e}"
        self._close_tb()
        try:  # the report's Grad-CAM row (needs Captum: the [explain] extra; else the report says so)
            started = time.perf_counter()
            from resnetlab.explain_run import write_mistakes_cam

            kept = self.run.path / summary.get("kept_weights", "model.safetensors")
            if write_mistakes_cam(self.run.path, kept, mistakes.items, test_set.images):
                seconds["gradcam_seconds"] = time.perf_counter() - started
        except Exception as e:  # noqa: BLE001 - the run itself is finished and saved
            print(
                f"resnetlab: warning: Grad-CAM row not drawn: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
        record_event(
            self.run.path,
            "finish",
            epoch=summary.get("epochs"),
            kept_test_acc=summary.get("kept_test_acc"),
            **seconds,
        )
        try:  # last, so that it shows the 'finish' event
            started = time.perf_counter()
            write_report(self.run.path)
            seconds["report_seconds"] = time.perf_counter() - started
        except Exception as e:  # noqa: BLE001
            print(
                f"resnetlab: warning: report.html not written: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
        return seconds

    def _close_tb(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
