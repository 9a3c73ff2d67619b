"""What a run leaves for people to read, on rank 0 (`run.enabled`): events.jsonl (start, resume,
capture_fallback, interrupt, failed, finish), and after the last epoch the kept weights' mistakes
and report.html (the curves and the confusion matrix: run_figures.py, before). A failure while writing these leaves the finished run as it
is: it is reported on stderr and in events.jsonl."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time

from resnetlab.errors import first_line
from resnetlab.report.html import write_report
from resnetlab.report.mistakes import MISTAKES_K, mistakes_from_evaluation, write_analysis
from resnetlab.report.observer import Observer
from resnetlab.rundir import kept_weights, record_event


class RunReport(Observer):
    """`run` is the run folder (its `path`, `file(name)` and `enabled`); `state` where the run
    starts (a 'resume' event when past its beginning)."""

    def __init__(self, run, state, *, mistakes: int = MISTAKES_K, mistakes_figure=None) -> None:
        self.run, self.state, self.mistakes = run, state, mistakes
        # mistakes_figure(folder, kept_weights, items, images): one more figure of the mistakes,
        # drawn with the model (the Grad-CAM row, inference/explain.py); the trainer hands it in
        self.mistakes_figure = mistakes_figure
        self.enabled = run.enabled
        if self.enabled:
            resumed = state.epoch > 0 or state.step_in_epoch > 0
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

    def on_fallback(self, reason: str) -> None:
        if self.enabled:
            record_event(self.run.path, "capture_fallback", reason=reason)

    def on_replan(self, event: dict) -> None:
        if self.enabled:  # --time-limit: the machine slowed down, the rest of the run was shortened
            record_event(self.run.path, "plan_shortened", **event)

    def on_interrupt(self, state) -> None:
        if self.enabled:
            record_event(
                self.run.path,
                "interrupt",
                epoch=state.epoch,
                step_in_epoch=state.step_in_epoch,
                global_step=state.global_step,
            )

    def on_failure(self, error: BaseException) -> None:
        # A removed folder is not made again for this record. The failure may be the disk's (full,
        # read-only): then this record cannot be written either, and the run's own error is the
        # one to report.
        if self.enabled and self.run.path.is_dir():
            with contextlib.suppress(OSError):
                record_event(
                    self.run.path,
                    "failed",
                    error=type(error).__name__,
                    message=first_line(error, 300),
                )

    def on_finish(self, summary: dict, final: dict, test_set) -> None:
        """The mistakes of the kept weights taken from their test evaluation `final` (with
        per-example results: no second pass), the 'finish' event, then report.html. (The curves
        and the confusion matrix are drawn before, by RunFigures: a failure to write them fails
        the run, which then resumes to draw them.)"""
        if not self.enabled:
            return
        seconds: dict = {}
        kept = kept_weights(summary)
        if final:
            mistakes = self._mistakes(kept, final, test_set, seconds)
        else:  # --no-final-test: no test predictions, so no mistakes
            mistakes, seconds["test"] = None, "not evaluated"
        if mistakes is not None and self.mistakes_figure is not None:
            try:  # needs Captum (the [explain] extra); without it the report says so
                started = time.perf_counter()
                kept_path = self.run.file(kept)
                if self.mistakes_figure(self.run.path, kept_path, mistakes.items, test_set.images):
                    seconds["gradcam_seconds"] = time.perf_counter() - started
            except Exception as e:  # noqa: BLE001
                _warn("Grad-CAM row not drawn", e)
        if final:
            seconds["kept_test_acc"] = summary.get("kept_test_acc")
        record_event(self.run.path, "finish", epoch=summary.get("epochs"), **seconds)
        try:  # last, so that it shows the 'finish' event
            write_report(self.run.path)
        except Exception as e:  # noqa: BLE001
            _warn("report.html not written", e)

    def _mistakes(self, kept: str, final: dict, test_set, seconds: dict):
        """mistakes.csv, confusion.csv and mistakes.png from the kept weights' test evaluation;
        None (and a warning) when they cannot be written."""
        try:
            started = time.perf_counter()
            mistakes = mistakes_from_evaluation(
                final,
                test_set.labels,
                list(test_set.classes),
                self.mistakes,
                getattr(test_set, "describe", None),  # streamed data names unreadable files
            )
            write_analysis(
                self.run.path,
                mistakes,
                test_set.images,
                title=f"{kept}: {mistakes.wrong} of {mistakes.count} test images wrong; "
                f"the {len(mistakes.items)} most confident",
            )
            seconds["mistakes_seconds"] = time.perf_counter() - started
            return mistakes
        except Exception as e:  # noqa: BLE001 - the run itself is finished and saved
            _warn("mistakes not written", e)
            seconds["error"] = f"{type(e).__name__}: {e}"
            return None


def _warn(what: str, error: BaseException) -> None:
    print(f"resnetlab: warning: {what}: {type(error).__name__}: {error}", file=sys.stderr)
