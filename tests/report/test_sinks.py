"""Output sinks from one factory (report/sinks.py): the list the configuration chooses, a caller's
own observers in it, and a capture that falls back told to every one of them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from resnetlab.report.console import Console
from resnetlab.report.observer import Observer
from resnetlab.report.run_figures import RunFigures
from resnetlab.report.run_report import RunReport
from resnetlab.report.sinks import make_observers
from resnetlab.train import make_config
from resnetlab.train.engine import TrainState
from resnetlab.train.run import RunDir


def test_the_configuration_chooses_the_sinks_and_a_callers_own_join_them(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    from resnetlab.report.tensorboard import TensorBoard

    console, writer, mine = Console(None, False), Observer(), Observer()
    kinds = {}
    for tensorboard in (False, True):
        cfg = make_config("quick", tensorboard=tensorboard)
        run = RunDir(tmp_path / str(tensorboard), enabled=False)  # another rank's: writes nothing
        observers = make_observers(
            cfg, run=run, state=TrainState(), console=console, writer=writer, extra=[mine]
        )
        kinds[tensorboard] = [type(o) for o in observers]
        # the figures before the console's closing lines; the saved epoch before the caller's
        assert observers[:4] == [observers[0], console, writer, mine]
    assert kinds[False] == [RunFigures, Console, Observer, Observer, RunReport]
    assert kinds[True] == [*kinds[False], TensorBoard]


@pytest.mark.needs_fashion_mnist
def test_a_capture_that_falls_back_is_told_to_every_observer(tmp_path, monkeypatch, capsys):
    """As a captured step whose capture fails at its first call: the console says it, config.json
    and events.jsonl record it, and a caller's observer hears it."""
    from resnetlab.report.events import read_events
    from resnetlab.train import graphs, train, trainer

    real_build = trainer.build

    def build(cfg, dist, **kwargs):
        parts = real_build(cfg, dist, **kwargs)
        fallback, step = graphs.CaptureFallback(), parts.step

        class FallsBack:
            failed = False

            def __getattr__(self, name):
                return getattr(step, name)

            def __call__(self, *args):
                if not FallsBack.failed:
                    FallsBack.failed = True
                    fallback("training step", RuntimeError("cannot capture here"))
                return step(*args)

        return dataclasses.replace(parts, step=FallsBack(), capture_fallback=fallback)

    monkeypatch.setattr(trainer, "build", build)
    heard = []

    class Mine(Observer):
        def on_fallback(self, reason: str) -> None:
            heard.append(reason)

    out = tmp_path / "run"
    cfg = make_config(
        "quick", model="resnet20", model_kwargs={"width": 8}, subset=128, batch_size=64,
        epochs=1, val_split=0, seed=3,
    )  # fmt: skip
    train(cfg, out=out, observers=[Mine()])
    reason = "capturing the training step failed (RuntimeError: cannot capture here)"
    assert heard == [reason]
    assert f"note: {reason}; running op by op" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["capture_fallback"] == reason
    assert [e["reason"] for e in read_events(out) if e["event"] == "capture_fallback"] == [reason]
