"""curves.png and confusion.png of a run, drawn when it ends (report/plots.py draws them) on rank
0 (`run.enabled`). A failed write fails the run: it is not finished then (no report.html), and its
resume draws them again."""

from __future__ import annotations

from resnetlab.report.observer import Observer
from resnetlab.report.plots import (
    curve_marks,
    have_matplotlib,
    plot_confusion,
    plot_curves,
    preload_matplotlib,
)
from resnetlab.report.runs import NO_TEST


class RunFigures(Observer):
    """The figures of the run folder `run` (its `file(name)` and `enabled`); `state.history` holds
    every epoch's row (resumes included); `title` heads the curves; `say` prints a line."""

    def __init__(self, run, state, *, title: str, say) -> None:
        self.run, self.state, self.title, self.say = run, state, title, say
        self.enabled = run.enabled
        if self.enabled:
            preload_matplotlib()  # in the background, while the run trains

    def on_finish(self, summary: dict, final: dict, test_set) -> None:
        if not self.enabled:
            return
        if not have_matplotlib():
            self.say("matplotlib is not installed: plots skipped (pip install 'resnetlab[plot]')")
            return
        plot_curves(
            self.state.history,
            self.run.file("curves.png"),
            title=self.title,
            **curve_marks(summary),
        )
        if not final:  # --no-final-test: no test predictions to draw
            self.say(f"confusion matrix not drawn: {NO_TEST}")
            return
        plot_confusion(
            final["confusion"],
            list(test_set.classes),
            self.run.file("confusion.png"),
            title=f"{summary['kept_weights']}: test acc {final['acc']:.4f}",
        )
