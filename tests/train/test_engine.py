"""train/engine.py's loop without a training run (fast enough for mutation testing): the learning
rate schedules, Ctrl-C's flag, and `fit` driven by a step that adds each batch's known loss,
correct and count, loaders of plain batches, a clock that moves only when a step (1 s) or an
evaluation (10 s) runs, and, for several processes, collectives that add a second process's known
share. One test runs the real EagerStep on a Linear layer against the same SGD written out."""

from __future__ import annotations

import math
import signal
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.data import Loaders
from resnetlab.distributed.group import DistInfo
from resnetlab.errors import Interrupted, TrainingError
from resnetlab.report.observer import Observer
from resnetlab.train import engine
from resnetlab.train.engine import Compressed, Schedule, StopFlag, TrainState, fit, position
from resnetlab.train.steps import EagerStep

# --- the schedules -----------------------------------------------------------------------------


def test_a_constant_rate_ignores_the_step_the_total_and_the_warm_up():
    constant = Schedule("constant", lr=0.3, warmup=0.5)
    assert {constant(s, t) for s, t in [(0, 10), (4, 10), (9, 10), (0, 1), (50, 7)]} == {0.3}
    assert Schedule() == Schedule("constant", 0.1, 0.0)  # the defaults: a constant 0.1


@pytest.mark.parametrize("kind", ["onecycle", "cosine"])
def test_the_warm_up_climbs_in_equal_steps_to_the_peak(kind):
    rate = Schedule(kind, lr=0.8, warmup=0.3)  # 3 warm-up steps of 10
    assert [rate(s, 10) for s in range(3)] == pytest.approx([0.8 / 3, 1.6 / 3, 0.8])
    assert rate(3, 10) == pytest.approx(0.8)  # the decay starts from the peak
    rate = Schedule(kind, lr=0.8, warmup=0.28)  # 2.8 steps: the warm-up's whole steps, 2
    assert [rate(s, 10) for s in range(3)] == pytest.approx([0.4, 0.8, 0.8])


def test_onecycle_decays_linearly_to_zero_at_the_last_step_and_stays_there():
    rate = Schedule("onecycle", lr=0.8, warmup=0.3)  # decay over steps 3..10
    decay = [rate(s, 10) for s in range(3, 11)]
    assert decay[0] == pytest.approx(0.8) and decay[-1] == 0.0
    assert rate(6.5, 10) == pytest.approx(0.4)  # half-way: half the rate
    gaps = [a - b for a, b in zip(decay, decay[1:])]
    assert gaps == pytest.approx([0.8 / 7] * 7)  # a straight line
    assert rate(12, 10) == 0.0  # past the end: zero, not negative


def test_cosine_decays_along_half_a_cosine_to_zero():
    rate = Schedule("cosine", lr=0.8, warmup=0.3)  # decay over steps 3..10, 7 steps
    assert rate(3, 10) == pytest.approx(0.8)
    assert rate(6.5, 10) == pytest.approx(0.4)
    assert rate(10, 10) == pytest.approx(0.0, abs=1e-12)
    assert rate(3 + 7 / 4, 10) == pytest.approx(0.4 * (1 + math.sqrt(0.5)))  # a quarter: cos 45°
    for d in (0.5, 1.0, 2.5):  # symmetric about the middle, as a cosine is
        assert rate(3 + d, 10) + rate(10 - d, 10) == pytest.approx(0.8)


@pytest.mark.parametrize("warmup", [0.0, 0.05])
def test_under_one_warm_up_step_the_first_step_takes_the_peak(warmup):
    # int(0.05 * 10) is 0 steps: the warm-up is one step, which already reaches the peak
    rate = Schedule("onecycle", lr=0.5, warmup=warmup)
    assert [rate(s, 10) for s in (0, 1, 10)] == pytest.approx([0.5, 0.5, 0.0])
    assert rate(5.5, 10) == pytest.approx(0.25)  # the decay over steps 1..10


def test_a_run_one_step_longer_than_its_warm_up_ends_at_zero():
    rate = Schedule("onecycle", lr=1.0, warmup=0.9)  # 9 warm-up steps of 10
    assert rate(8, 10) == pytest.approx(1.0)
    assert rate(9, 10) == pytest.approx(1.0) and rate(10, 10) == 0.0


def test_a_compressed_plan_keeps_its_start_and_squeezes_the_rest_into_the_steps_left():
    plan = Schedule("onecycle", lr=1.0, warmup=0.1)  # 100 steps: warm-up 10, decay 10..100
    short = Compressed(plan, at=40, planned_total=100)  # from step 40 on, 70 steps in all
    assert short(5, 70) == pytest.approx(0.6)  # the warm-up as planned
    assert short(20, 70) == pytest.approx(1 - 10 / 90)
    assert short(40, 70) == pytest.approx(1 - 30 / 90)  # goes on from where it was
    # the plan's rest (2/3 down to 0 over steps 40..100) in 30 steps: still a straight line
    assert short(55, 70) == pytest.approx((1 - 30 / 90) / 2)
    assert short(70, 70) == pytest.approx(0.0, abs=1e-12)
    # one step left: it takes the plan's end
    assert Compressed(plan, at=40, planned_total=100)(41, 41) == pytest.approx(0.0, abs=1e-12)


# --- Ctrl-C and where a run stopped --------------------------------------------------------------


class SecondCtrlC(Exception):
    """KeyboardInterrupt, re-raised as an ordinary exception so that pytest goes on."""


def ctrl_c() -> None:
    """A real SIGINT to this process, delivered to whatever handler is installed."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        raise SecondCtrlC from None


def test_the_first_ctrl_c_asks_to_stop_the_second_stops_at_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with StopFlag() as stop:
        assert isinstance(stop, StopFlag) and stop.requested is False
        ctrl_c()
        assert stop.requested is True
        with pytest.raises(SecondCtrlC):
            ctrl_c()
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_the_flag_leaves_signals_alone():
    seen = []

    def run():
        try:
            with StopFlag() as stop:
                seen.append(stop.requested)
        except Exception as error:  # noqa: BLE001  (the test reports it)
            seen.append(error)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [False]
    assert signal.getsignal(signal.SIGINT) is before


def test_position_names_the_step_inside_an_epoch_or_the_epoch_finished():
    assert position(TrainState(epoch=15, step_in_epoch=5)) == "at epoch 16, step 5"
    assert position(TrainState(epoch=15)) == "after epoch 15"
    assert position(TrainState()) == "after epoch 0"


# --- fit with fakes -------------------------------------------------------------------------------


class Clock:
    """The engine's `time`: the clock moves only when a step or an evaluation runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(engine, "time", fake)
    return fake


class Batches:
    """An in-memory loader: batch i holds `size` rows of (i, its loss) and i % 2 as every label;
    it records the epochs it was set to, and its loss weight tells the batches apart."""

    def __init__(self, losses, size=2) -> None:
        self.losses, self.size, self.epochs = list(losses), size, []

    def __len__(self) -> int:
        return len(self.losses)

    def __iter__(self):
        for i, loss in enumerate(self.losses):
            yield torch.tensor([[float(i), loss]] * self.size), torch.full((self.size,), i % 2)

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def loss_weight(self, i: int) -> float:
        return 1.0 + i / 8


class Streamed(Batches):
    """A streamed loader: told how many batches a resume has done; reports the images of the
    epoch that did not decode."""

    def __init__(self, losses, bad, size=2) -> None:
        super().__init__(losses, size)
        self.bad_indices, self.skipped = bad, []

    def skip_next(self, n: int) -> None:
        self.skipped.append(n)


def sums_of(loader: Batches, batches) -> list[float]:
    """(loss sum, correct, count) of those batches, from the loader's own numbers."""
    n = loader.size
    return [
        sum(loader.losses[i] * n for i in batches),
        sum(n * (i % 2) for i in batches),
        float(n * len(batches)),
    ]


class FakeStep:
    """Stands for EagerStep: a real tiny module (trained and evaluated, with buffers), running
    sums that each call adds its batch's loss, correct and count to, `seconds` of the clock a
    step, and a Ctrl-C during the calls numbered in `ctrl_c_at` (1-based)."""

    def __init__(self, clock, ctrl_c_at=(), average=False, seconds=1.0) -> None:
        self.model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval()
        self.average = SimpleNamespace(model=nn.BatchNorm1d(2)) if average else None
        self.sums = torch.zeros(3, dtype=torch.float64)
        self.clock, self.ctrl_c_at, self.seconds = clock, set(ctrl_c_at), seconds
        self.calls, self.starts, self.training = [], [], []

    def start_epoch(self, partial) -> None:
        self.starts.append(list(partial))
        self.sums = torch.tensor(partial, dtype=torch.float64)

    def __call__(self, x, y, lr, loss_weight) -> None:
        self.training.append(self.model.training)
        self.calls.append((int(x[0, 0]), lr, loss_weight))
        n = len(x)
        self.sums += torch.tensor([float(x[0, 1]) * n, float(y.sum()), n], dtype=torch.float64)
        self.clock.now += self.seconds
        if len(self.calls) in self.ctrl_c_at:
            ctrl_c()


class Evaluator:
    """Ten seconds of the clock an evaluation; the results given for each loader, epoch by epoch;
    leaves the model in eval mode, as the real one does."""

    def __init__(self, clock, step, results) -> None:
        self.clock, self.step, self.results, self.seen = clock, step, results, []

    def __call__(self, loader):
        self.step.model.eval()
        self.clock.now += 10.0
        self.seen.append(loader)
        return self.results[id(loader)].pop(0)


class Record(Observer):
    """Every call, in order, with what the state held then."""

    def __init__(self) -> None:
        self.events = []

    def on_progress(self, state, step, total, stats):
        self.events.append(("progress", state.epoch, step, total, dict(stats)))

    def on_evaluate(self, epoch, split, result):
        self.events.append(("evaluate", epoch, split, result))

    def on_epoch_end(self, state, row, is_best):
        self.events.append(("epoch_end", state.epoch, row["epoch"], is_best))

    def on_replan(self, event):
        self.events.append(("replan", event))

    def on_interrupt(self, state):
        self.events.append(("interrupt", state.epoch, state.step_in_epoch))

    def of(self, kind):
        return [e[1:] for e in self.events if e[0] == kind]


def rate(step, total):
    """A schedule whose rate spells out the step and the total it was asked for."""
    return step * 1000 + total


def test_an_epoch_s_row_holds_the_step_s_sums_the_evaluations_and_the_time_of_training(clock):
    train, val, test = Batches([0.5, 1.0, 3.0]), Batches([9.0]), Batches([9.0])
    step = FakeStep(clock)
    results = {
        id(val): [{"loss": 0.7, "acc": 0.25}, {"loss": 0.6, "acc": 0.25}],
        id(test): [{"loss": 0.9, "acc": 0.5}, {"loss": 0.8, "acc": 0.75}],
    }
    evaluator, record = Evaluator(clock, step, results), Record()
    state, before = TrainState(train_seconds=4.0), signal.getsignal(signal.SIGINT)
    assert (
        fit(step, evaluator, Loaders(train, val, test), state, rate, 2, observers=[record]) is state
    )

    assert train.epochs == [0, 1] and step.training == [True] * 6
    assert step.starts == [[0.0, 0.0, 0.0]] * 2
    assert [c[0] for c in step.calls] == [0, 1, 2] * 2
    assert [c[1] for c in step.calls] == [s * 1000 + 6 for s in range(6)]  # of 6 steps in all
    assert [c[2] for c in step.calls] == [1.0, 1.125, 1.25] * 2  # batch i's loss weight
    assert evaluator.seen == [val, test] * 2
    loss, correct, count = sums_of(train, [0, 1, 2])
    first = {
        "epoch": 1,
        "train_loss": loss / count,
        "train_acc": correct / count,
        "examples": count,
        "val_loss": 0.7,
        "val_acc": 0.25,
        "test_loss": 0.9,
        "test_acc": 0.5,
        "lr": 2006,  # the rate of the epoch's last step
        "examples_per_sec": count / 3,  # 3 steps of 1 s; the evaluations' 20 s not counted
        "epoch_seconds": 23.0,
    }
    second = dict(first, epoch=2, val_loss=0.6, test_loss=0.8, test_acc=0.75, lr=5006)
    assert state.history == [first, second]
    assert (state.epoch, state.step_in_epoch, state.global_step) == (2, 0, 6)
    assert state.partial == [0.0, 0.0, 0.0] and state.partial_bad == []
    assert state.train_seconds == 4.0 + 6.0  # training steps only
    # the first epoch's 0.25 beats the start's -1; the second's equal 0.25 does not
    assert (state.best_val_acc, state.best_epoch) == (0.25, 1)
    assert record.events == [
        ("progress", 0, 3, 3, {"loss": loss / count, "acc": correct / count, "lr": 2006}),
        ("evaluate", 1, "val", {"loss": 0.7, "acc": 0.25}),
        ("evaluate", 1, "test", {"loss": 0.9, "acc": 0.5}),
        ("epoch_end", 1, 1, True),
        ("progress", 1, 3, 3, {"loss": loss / count, "acc": correct / count, "lr": 5006}),
        ("evaluate", 2, "val", {"loss": 0.6, "acc": 0.25}),
        ("evaluate", 2, "test", {"loss": 0.8, "acc": 0.75}),
        ("epoch_end", 2, 2, False),
    ]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_better_validation_accuracy_is_the_new_best_and_no_validation_is_never_best(clock):
    train, val = Batches([1.0]), Batches([1.0])
    step = FakeStep(clock)
    accs = [0.0, 0.5, 0.4, 0.6]
    evaluator = Evaluator(clock, step, {id(val): [{"loss": 1.0, "acc": a} for a in accs]})
    record, state = Record(), TrainState()
    fit(step, evaluator, Loaders(train, val, None), state, rate, 4, observers=[record])
    assert [e[2] for e in record.of("epoch_end")] == [True, True, False, True]
    assert (state.best_val_acc, state.best_epoch) == (0.6, 4)
    assert "test_acc" not in state.history[0]
    assert [row["lr"] for row in state.history] == [4, 1004, 2004, 3004]  # one step an epoch

    step, record, state = FakeStep(clock), Record(), TrainState()
    evaluator = Evaluator(clock, step, {})
    fit(step, evaluator, Loaders(Batches([1.0]), None, None), state, rate, 2, observers=[record])
    assert [e[2] for e in record.of("epoch_end")] == [False, False]
    assert (state.best_val_acc, state.best_epoch) == (-1.0, -1) and evaluator.seen == []
    assert set(state.history[0]) == {
        "epoch",
        "train_loss",
        "train_acc",
        "examples",
        "lr",
        "examples_per_sec",
        "epoch_seconds",
    }


def test_throughput_is_over_the_training_time_however_short_and_none_when_it_took_none(clock):
    step = FakeStep(clock, seconds=0.25)  # 2 steps: half a second
    state = TrainState()
    fit(step, None, Loaders(Batches([1.0, 2.0]), None, None), state, rate, 1)
    assert state.history[0]["examples_per_sec"] == 4 / 0.5
    step, state = FakeStep(clock, seconds=0.0), TrainState()
    fit(step, None, Loaders(Batches([1.0, 2.0]), None, None), state, rate, 1)
    assert state.history[0]["examples_per_sec"] == 0.0
    assert state.history[0]["epoch_seconds"] == 0.0


def test_a_run_resumed_at_an_epoch_s_end_trains_the_epochs_left_on_the_whole_run_s_schedule(clock):
    train = Batches([1.0, 2.0, 3.0])
    step = FakeStep(clock)
    state = TrainState(epoch=1, global_step=3, history=[{"epoch": 1}], best_val_acc=0.5)
    fit(step, None, Loaders(train, None, None), state, rate, 3)
    assert train.epochs == [1, 2]
    assert [c[1] for c in step.calls] == [s * 1000 + 9 for s in range(3, 9)]
    assert [row["epoch"] for row in state.history] == [1, 2, 3]
    assert state.history[-1]["lr"] == 8009
    fit(step, None, Loaders(train, None, None), state, rate, 3)  # finished: nothing to do
    assert len(step.calls) == 6 and len(state.history) == 3


def test_a_resume_inside_a_streamed_epoch_skips_the_steps_done_and_keeps_their_sums(clock):
    train = Streamed([1.0, 2.0, 3.0, 4.0, 5.0], bad=[20, 3])
    step = FakeStep(clock)
    done = sums_of(train, [0, 1])  # the first two steps, before the stop
    state = TrainState(
        epoch=1,
        step_in_epoch=2,
        global_step=7,
        partial=list(done),
        partial_bad=[11],
        bad_images=[3, 11],
    )
    fit(step, None, Loaders(train, None, None), state, rate, 2)
    assert train.skipped == [2] and train.epochs == [1]
    assert step.starts == [done]
    assert [c[:2] for c in step.calls] == [(2, 7010), (3, 8010), (4, 9010)]
    loss, correct, count = sums_of(train, range(5))
    row = state.history[0]
    assert (row["train_loss"], row["train_acc"], row["examples"]) == (
        loss / count,
        correct / count,
        count,
    )
    assert row["skipped"] == 3  # 11 before the stop, 20 and 3 after
    assert state.bad_images == [3, 11, 20] and state.partial_bad == []
    assert row["examples_per_sec"] == count / 3  # the 3 steps run now


def test_a_resume_inside_an_epoch_in_memory_replays_the_loader_to_its_step(clock):
    train = Batches([1.0, 2.0, 3.0])
    step = FakeStep(clock)
    state = TrainState(step_in_epoch=1, global_step=1, partial=sums_of(train, [0]))
    fit(step, None, Loaders(train, None, None), state, rate, 1)
    assert [c[0] for c in step.calls] == [1, 2]
    assert "skipped" not in state.history[0] and state.bad_images == []


def test_progress_is_read_every_25_steps_and_at_the_epoch_s_end(clock):
    losses = [float(i % 7) for i in range(51)]
    train, step, record = Batches(losses), FakeStep(clock), Record()
    fit(step, None, Loaders(train, None, None), TrainState(), rate, 1, observers=[record])
    expected = []
    for done in (25, 50, 51):
        loss, correct, count = sums_of(train, range(done))
        stats = {"loss": loss / count, "acc": correct / count, "lr": (done - 1) * 1000 + 51}
        expected.append((0, done, 51, stats))
    assert record.of("progress") == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_the_run_at_the_next_sync_point_in_one_line(clock, bad):
    train = Batches([1.0] * 30)
    train.losses[1] = bad
    step, record = FakeStep(clock), Record()
    state = TrainState(epoch=2, global_step=60)
    with pytest.raises(TrainingError) as raised:
        fit(step, None, Loaders(train, None, None), state, rate, 4, observers=[record])
    shown = "nan" if math.isnan(bad) else str(bad)
    assert str(raised.value) == (
        f"the training loss became {shown} at epoch 3, step 25; the last good checkpoint "
        "(epoch 2) is kept; lower --lr or check the data"
    )
    assert raised.value.shared is True  # every process decides it alike
    assert len(step.calls) == 25 and record.events == []


def test_ctrl_c_inside_an_epoch_stops_after_that_step_with_its_sums_saved(clock):
    train = Streamed([1.0, 2.0, 3.0, 4.0, 5.0], bad=[7])
    step, record = FakeStep(clock, ctrl_c_at={2}), Record()
    state, before = TrainState(train_seconds=5.0, bad_images=[1]), signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as raised:
        fit(step, None, Loaders(train, None, None), state, rate, 3, observers=[record])
    assert str(raised.value) == "interrupted at epoch 1, step 2" and raised.value.shared is True
    assert len(step.calls) == 2
    assert (state.epoch, state.step_in_epoch, state.global_step) == (0, 2, 2)
    assert state.partial == sums_of(train, [0, 1]) and state.partial_bad == [7]
    assert state.bad_images == [1] and state.history == []
    assert state.train_seconds == 5.0 + 2.0
    loss, correct, count = sums_of(train, [0, 1])
    stats = {"loss": loss / count, "acc": correct / count, "lr": 1015}
    assert record.events == [("progress", 0, 2, 5, stats), ("interrupt", 0, 2)]
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_in_memory_saves_no_undecodable_images(clock):
    step = FakeStep(clock, ctrl_c_at={1})
    state = TrainState(partial_bad=[4])
    with pytest.raises(Interrupted):
        fit(step, None, Loaders(Batches([1.0, 2.0]), None, None), state, rate, 1)
    assert state.partial_bad == []


def test_ctrl_c_on_an_epoch_s_last_step_stops_after_the_epoch_unless_it_was_the_last(clock):
    step, record = FakeStep(clock, ctrl_c_at={3}), Record()
    state = TrainState()
    with pytest.raises(Interrupted) as raised:
        fit(step, None, Loaders(Batches([1.0] * 3), None, None), state, rate, 2, observers=[record])
    assert str(raised.value) == "interrupted after epoch 1" and raised.value.shared is True
    assert (state.epoch, state.step_in_epoch, len(state.history)) == (1, 0, 1)
    assert [e[0] for e in record.events] == ["progress", "epoch_end", "interrupt"]

    step, record, state = FakeStep(clock, ctrl_c_at={3}), Record(), TrainState()
    loaders = Loaders(Batches([1.0] * 3), None, None)
    assert fit(step, None, loaders, state, rate, 1, observers=[record]) is state
    assert state.epoch == 1 and [e[0] for e in record.events] == ["progress", "epoch_end"]


def test_a_shorter_plan_from_pace_takes_over_after_the_epoch_is_saved(clock):
    train, step, record = Batches([1.0, 2.0]), FakeStep(clock), Record()
    event = {"epochs": 3, "line": "shortened"}
    asked = []

    def shorter(step, total):
        return -(step * 1000 + total)

    def pace(state):
        asked.append((state.epoch, len(state.history), len(record.events)))
        if state.epoch == 2:
            return SimpleNamespace(schedule=shorter, epochs=3, event=event)
        return None

    state = TrainState()
    fit(step, None, Loaders(train, None, None), state, rate, 5, observers=[record], pace=pace)
    # asked after each epoch's row, before the observers see (and save) it
    assert asked == [(1, 1, 1), (2, 2, 3), (3, 3, 6)]
    assert [e[0] for e in record.events] == [
        "progress",
        "epoch_end",
        "progress",
        "epoch_end",
        "replan",
        "progress",
        "epoch_end",
    ]
    assert record.of("replan") == [(event,)]
    assert [c[1] for c in step.calls] == [10, 1010, 2010, 3010, -4006, -5006]
    assert [row["lr"] for row in state.history] == [1010, 3010, -5006]
    assert state.epoch == 3


def test_a_shorter_plan_ending_now_finishes_the_run_despite_a_ctrl_c(clock):
    step = FakeStep(clock, ctrl_c_at={2})  # on the first epoch's last step

    def pace(state):
        return SimpleNamespace(schedule=rate, epochs=1, event={})

    state = TrainState()
    fit(step, None, Loaders(Batches([1.0, 2.0]), None, None), state, rate, 4, pace=pace)
    assert state.epoch == 1


# --- several processes: engine's collectives patched to add a second process's share ----------


class OtherProcess:
    """The second of two processes, as the collectives show it: its running sums at every sync,
    whether its Ctrl-C came (at which sync, or at an epoch's end), its images that did not decode.
    Each fake checks what the real collective needs (a tensor on the step's device; int64
    indices, as every process's must match) and records the buffers averaged."""

    def __init__(self, step, rank, sums=(0.0, 0.0, 0.0), stop_at_sync=None, stop_at_end=False):
        self.step, self.rank = step, rank
        self.sums, self.stop_at_sync, self.stop_at_end = list(sums), stop_at_sync, stop_at_end
        self.bad, self.syncs, self.averaged = [5], 0, []

    def sum_and_any(self, sums, flag, info):
        assert info.enabled and sums is self.step.sums
        self.syncs += 1
        totals = [a + b for a, b in zip(sums.tolist(), self.sums)]
        return totals, flag or self.syncs == self.stop_at_sync

    def any_rank(self, flag, info, device):
        assert info.enabled and device == self.step.sums.device
        return flag or self.stop_at_end

    def all_reduce_sum(self, t, info):
        assert info.enabled
        t += torch.tensor(self.sums, dtype=t.dtype)  # in place, as torch.distributed's
        return t

    def gather_concat(self, t, info):
        assert info.enabled and t.dtype == torch.int64 and t.device == self.step.sums.device
        other = torch.tensor(self.bad, dtype=torch.int64)
        return torch.cat([t, other] if self.rank == 0 else [other, t])

    def average_buffers(self, model, info):
        assert info.enabled
        self.averaged.append(model)


@pytest.fixture
def two_processes(monkeypatch):
    def make(step, rank, **kwargs):
        other = OtherProcess(step, rank, **kwargs)
        for name in ("sum_and_any", "any_rank", "all_reduce_sum", "gather_concat"):
            monkeypatch.setattr(engine, name, getattr(other, name))
        monkeypatch.setattr(engine, "average_buffers", other.average_buffers)
        return other, DistInfo(rank=rank, world_size=2)

    return make


@pytest.mark.parametrize("rank", [0, 1])
def test_only_the_first_process_carries_the_sums_of_a_stopped_epoch(clock, two_processes, rank):
    train = Batches([1.0, 2.0])
    step = FakeStep(clock)
    other, dist = two_processes(step, rank)
    saved = [6.0, 2.0, 4.0]  # all processes' sums at the stop
    state = TrainState(step_in_epoch=1, global_step=1, partial=list(saved))
    fit(step, None, Loaders(train, None, None), state, rate, 1, dist=dist)
    assert step.starts == [saved if rank == 0 else [0.0, 0.0, 0.0]]


def test_the_row_holds_both_processes_sums_and_the_step_keeps_its_own(clock, two_processes):
    train, record = Batches([1.0, 2.0, 3.0]), Record()
    step = FakeStep(clock, average=True)
    other, dist = two_processes(step, 0, sums=(12.0, 3.0, 6.0))
    state = TrainState()
    fit(step, None, Loaders(train, None, None), state, rate, 1, dist=dist, observers=[record])
    loss, correct, count = [a + b for a, b in zip(sums_of(train, range(3)), other.sums)]
    row = state.history[0]
    assert (row["train_loss"], row["train_acc"], row["examples"]) == (
        loss / count,
        correct / count,
        count,
    )
    assert row["examples_per_sec"] == count / 3
    assert step.sums.tolist() == sums_of(train, range(3))  # the reduction worked on a copy
    assert record.of("progress") == [
        (0, 3, 3, {"loss": loss / count, "acc": correct / count, "lr": 2003})
    ]
    # before evaluation, both models' batch-norm statistics are made equal
    assert other.averaged == [step.model, step.average.model]


def test_without_a_weight_average_only_the_model_s_buffers_are_averaged(clock, two_processes):
    step = FakeStep(clock)
    other, dist = two_processes(step, 1)
    fit(step, None, Loaders(Batches([1.0]), None, None), TrainState(), rate, 1, dist=dist)
    assert other.averaged == [step.model]


@pytest.mark.parametrize("rank", [0, 1])
def test_the_undecodable_images_of_both_processes_are_counted(clock, two_processes, rank):
    step = FakeStep(clock)
    other, dist = two_processes(step, rank)
    train = Streamed([1.0], bad=[])  # none here: an empty list must still be int64
    state = TrainState(bad_images=[9])
    fit(step, None, Loaders(train, None, None), state, rate, 1, dist=dist)
    assert state.history[0]["skipped"] == 1 and state.bad_images == [5, 9]


def test_ctrl_c_on_one_process_stops_them_all_at_the_next_sync_point(clock, two_processes):
    train, record = Streamed([1.0] * 30, bad=[8]), Record()
    step = FakeStep(clock, ctrl_c_at={3})  # the processes see it at different steps
    other, dist = two_processes(step, 0, sums=(50.0, 10.0, 50.0))
    state = TrainState()
    with pytest.raises(Interrupted) as raised:
        fit(step, None, Loaders(train, None, None), state, rate, 2, dist=dist, observers=[record])
    assert str(raised.value) == "interrupted at epoch 1, step 25"
    assert len(step.calls) == 25 and state.step_in_epoch == 25
    assert state.partial == [a + b for a, b in zip(sums_of(train, range(25)), other.sums)]
    assert state.partial_bad == [8, 5]
    assert [e[0] for e in record.events] == ["progress", "interrupt"]


def test_a_ctrl_c_on_the_other_process_stops_this_one_too(clock, two_processes):
    step = FakeStep(clock)
    other, dist = two_processes(step, 1, stop_at_sync=1)
    state = TrainState()
    with pytest.raises(Interrupted, match="at epoch 1, step 25$"):
        fit(step, None, Loaders(Batches([1.0] * 30), None, None), state, rate, 1, dist=dist)
    assert len(step.calls) == 25


def test_a_ctrl_c_between_the_other_process_s_epochs_stops_this_one_after_the_epoch(
    clock, two_processes
):
    step, record = FakeStep(clock), Record()
    other, dist = two_processes(step, 0, stop_at_end=True)
    state = TrainState()
    with pytest.raises(Interrupted, match="after epoch 1$"):
        loaders = Loaders(Batches([1.0]), None, None)
        fit(step, None, loaders, state, rate, 3, dist=dist, observers=[record])
    assert state.epoch == 1
    assert [e[0] for e in record.events] == ["progress", "epoch_end", "interrupt"]


# --- the real step ---------------------------------------------------------------------------


def test_fit_with_the_eager_step_is_plain_sgd_at_the_schedule_s_rates():
    torch.manual_seed(0)
    xs = [torch.randn(4, 3) for _ in range(3)]
    ys = [torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 0, 1])]

    class Data(Batches):
        def __iter__(self):
            return iter(zip(xs, ys))

        def loss_weight(self, i):
            return 1.0

    model = nn.Linear(3, 2)
    reference = nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)
    step = EagerStep(model, optimizer, torch.device("cpu"), amp=False)
    schedule = Schedule("onecycle", lr=0.5, warmup=0.34)  # 2 warm-up steps of 6
    state = TrainState()
    fit(step, None, Loaders(Data([0.0] * 3), None, None), state, schedule, 2)

    lrs = [0.25, 0.5, 0.5, 0.375, 0.25, 0.125]  # up in 2 steps, then down to 0 at step 6
    losses = []
    for k in range(6):
        x, y = xs[k % 3], ys[k % 3]
        loss = F.cross_entropy(reference(x), y)
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads):
                p -= lrs[k] * g
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    assert state.history[1]["train_loss"] == pytest.approx(sum(losses[3:]) / 3)
    assert state.history[1]["lr"] == pytest.approx(0.125)
