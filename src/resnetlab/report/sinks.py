"""Where a training run goes: the one place that chooses its observers from the configuration.

    check_sinks(cfg)      what can fail before anything is made (a missing extra, an unreachable
                          server): one line, on every process alike, before data or a run folder
    make_observers(...)   the list `fit` tells, in the order they hear the loop

A Python caller adds its own observers (`train(cfg, observers=[...])`); they hear each epoch after
it is saved. Adding a sink: an Observer of its own module, one line in each function below.
"""

from __future__ import annotations

from collections.abc import Sequence

from resnetlab.report.console import Console
from resnetlab.report.observer import Observer
from resnetlab.report.run_figures import RunFigures
from resnetlab.report.run_report import RunReport


def check_sinks(cfg) -> None:
    """Refuse, with one line, a sink the configuration asks for that cannot work."""
    if cfg.tensorboard:
        from resnetlab.report.tensorboard import require_tensorboard

        require_tensorboard()
    if cfg.mlflow:
        from resnetlab.report.mlflow_sink import check_server

        check_server(cfg.mlflow)


def make_observers(
    cfg,
    *,
    run,
    state,
    console: Console,
    writer: Observer,
    extra: Sequence[Observer] = (),
    mistakes_figure=None,
) -> list[Observer]:
    """The run's observers: `console` (made before, as the parts are built it speaks), `writer`
    (the run folder's metrics, weights and checkpoints: the trainer's), the caller's `extra`, then
    the figures, events and report, TensorBoard and MLflow as `cfg` asks. `run` is the run folder
    (rank 0 writes: its `enabled`), `state` where the training starts; `mistakes_figure` draws one
    more figure of the mistakes with the model (RunReport)."""
    # the sinks that reach outside first: one that fails leaves no 'start' event behind
    outside: list[Observer] = []
    if cfg.tensorboard:
        from resnetlab.report.tensorboard import TensorBoard

        resumed = state.epoch > 0 or state.step_in_epoch > 0
        outside.append(TensorBoard(run.path, cfg.to_dict(), resumed=resumed, enabled=run.enabled))
    if cfg.mlflow:
        from resnetlab.report.mlflow_sink import MLflow

        outside.append(MLflow(cfg.mlflow, run, state, cfg.to_dict(), say=console.say))
    # The figures first: drawn before anything reports the end of the run (the closing lines,
    # report.html, TensorBoard's images, MLflow's artifacts); the report before the sinks that
    # send its files on.
    figures = RunFigures(run, state, title=f"{cfg.model} on {cfg.data}", say=console.say)
    report = RunReport(run, state, mistakes_figure=mistakes_figure)
    observers = [figures, console, writer, *extra, report, *outside]
    return observers
