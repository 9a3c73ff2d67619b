"""Issue 39: `--time-limit` plans the run to this machine's measured speed (train/plan.py, the
arithmetic; train/timing.py, the clock and the per-epoch check). Timing never decides a test:
the runs here take a Timekeeper whose clock moves only when the test moves it, and made-up step
times."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from resnetlab import cli
from resnetlab.distributed.group import DistInfo
from resnetlab.errors import Interrupted, UsageError
from resnetlab.report.events import read_events
from resnetlab.report.observer import Observer
from resnetlab.report.runs import describe_run
from resnetlab.train import make_config, train
from resnetlab.train.config import read_config_file
from resnetlab.train.engine import Compressed, Schedule
from resnetlab.train.plan import (
    MAX_EPOCHS,
    PLAN_FRACTION,
    NoTime,
    Recipe,
    Timings,
    parse_duration,
    plan_epochs,
    plan_run,
    shorten,
)
from resnetlab.train.timing import Pacer, Timekeeper

# --- the planner: pure arithmetic on made-up numbers -------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2m30s", 150), ("1.5m", 90)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "10x", "m", "0s", "-5m", "1m1h", "10 m 5"])
def test_bad_durations_are_one_line(text):
    with pytest.raises(UsageError) as e:
        parse_duration(text)
    assert "--time-limit" in str(e.value) and "\n" not in str(e.value)


def test_step_time_is_linear_in_the_pixels_between_and_beyond_the_sides_measured():
    cost = lambda side: 0.01 + 2e-4 * side * side  # a constant, and a part per pixel
    timings = Timings({16: cost(16), 28: cost(28)}, eval_seconds=0.0, finish_seconds=0.0)
    for side in (16, 20, 22, 28, 32):
        assert timings.step_at(side) == pytest.approx(cost(side))


FLAT = Recipe(steps_per_epoch=10, full_size=28)
ONE_SECOND = Timings({28: 1.0}, eval_seconds=2.0, finish_seconds=6.0)  # 12 s an epoch


def test_the_plan_takes_the_most_epochs_that_fit():
    plan = plan_run(100.0, FLAT, ONE_SECOND)
    assert plan.epochs == math.floor((PLAN_FRACTION * 100 - 6) / 12)
    assert plan.seconds() <= PLAN_FRACTION * 100
    assert plan_epochs(plan.epochs + 1, FLAT, ONE_SECOND).seconds() > PLAN_FRACTION * 100
    assert plan.sizes is None  # no progressive resizing in this recipe


def test_a_progressive_recipe_keeps_its_ramp_over_the_planned_epochs():
    recipe = Recipe(steps_per_epoch=10, full_size=28, start_size=16, until=0.5)
    timings = Timings({16: 0.3, 28: 1.0}, eval_seconds=1.0, finish_seconds=5.0)
    short, long = plan_run(80.0, recipe, timings), plan_run(400.0, recipe, timings)
    assert 1 < short.epochs < long.epochs
    for plan in (short, long):
        assert plan.sizes == recipe.sizes(plan.epochs)
        assert plan.sizes[0] == 16 and plan.sizes[-1] == 28
        assert plan_epochs(plan.epochs + 1, recipe, timings).seconds() > PLAN_FRACTION * (
            80.0 if plan is short else 400.0
        )


def test_a_tiny_run_under_a_long_limit_stops_at_the_most_epochs():
    fast = Timings({28: 1e-6}, eval_seconds=0.0, finish_seconds=0.0)
    assert plan_run(3600.0, FLAT, fast).epochs == MAX_EPOCHS


def test_no_epoch_fits_is_one_line():
    with pytest.raises(NoTime) as e:
        plan_run(15.0, FLAT, ONE_SECOND)  # one epoch and the finish: 18 s
    message = str(e.value)
    assert "\n" not in message and "--time-limit" in message and "18 s" in message


def test_shorten_leaves_a_plan_that_fits_alone():
    plan = plan_run(100.0, FLAT, ONE_SECOND)
    left = 100.0 - 2 * 12  # two epochs done as planned
    assert shorten(plan, 2, left, slowdown=1.0) is None


def test_a_slower_machine_shortens_the_rest_to_the_most_epochs_that_fit():
    recipe = Recipe(steps_per_epoch=10, full_size=28, start_size=16, until=0.5)
    timings = Timings({16: 0.3, 28: 1.0}, eval_seconds=1.0, finish_seconds=5.0)
    plan = plan_run(400.0, recipe, timings)
    done, slowdown = 3, 2.0
    left = 400.0 - slowdown * sum(plan.epoch_seconds[:done])
    short = shorten(plan, done, left, slowdown)
    assert done < short.epochs < plan.epochs
    assert short.seconds(done, slowdown) <= PLAN_FRACTION * left  # a margin: no second cut
    assert short.sizes[:done] == plan.sizes[:done]  # what was trained stays as it was
    assert short.sizes[-1] == 28 and short.sizes == sorted(short.sizes)
    longer = shorten(plan, done, left + 2 * slowdown * max(plan.epoch_seconds), slowdown)
    assert longer is None or longer.epochs > short.epochs  # the most that fit, not fewer
    gone = shorten(plan, done, 1.0, slowdown)  # nothing more fits: finish now
    assert gone.epochs == done
    assert shorten(plan, plan.epochs, 0.0, slowdown) is None  # at the end: nothing to shorten


def test_a_compressed_schedule_goes_on_from_where_it_was_and_ends_at_zero():
    base = Schedule("onecycle", lr=0.2, warmup=0.2)
    planned, at, shortened = 1000, 400, 600
    rest = Compressed(base, at, planned)
    assert [rest(s, shortened) for s in range(at)] == [base(s, planned) for s in range(at)]
    assert rest(at, shortened) == base(at, planned)
    assert rest(shortened - 1, shortened) < base(at, planned) / 100  # decays to about zero
    assert rest(at + 100, shortened) < base(at + 100, planned)  # faster than planned


# --- runs on a fake clock ----------------------------------------------------------------------

TINY = dict(
    model_kwargs={"width": 8},
    subset=512,
    batch_size=64,  # 8 steps an epoch
    val_split=0,
    tta="none",
    seed=3,
    device="cpu",
)


class FakeTime(Timekeeper):
    """A clock that moves only when `advance` moves it; `measure` returns made-up timings."""

    def __init__(self, timings: Timings, start: float = 0.0, startup: float = 0.0):
        self.t = start
        super().__init__(clock=lambda: self.t, startup=startup)
        self.timings = timings

    def measure(self, cfg, device, splits, policy, dist, sides, bound):
        return self.timings, {"fake": True}


class Steps(Observer):
    """Moves the fake clock as the steps go: `cost(epoch)` fake seconds a step in each epoch
    (counted from 1)."""

    def __init__(self, clock: FakeTime, cost) -> None:
        self.clock, self.cost, self.done = clock, cost, 0

    def on_progress(self, state, step, total, stats):
        self.clock.t += (step - self.done) * self.cost(state.epoch + 1)
        self.done = 0 if step == total else step


def per_step(seconds: float, finish: float = 5.0) -> Timings:
    return Timings({16: seconds, 28: seconds}, eval_seconds=0.0, finish_seconds=finish)


@pytest.mark.needs_fashion_mnist
def test_the_plan_is_printed_saved_and_rerun_from_config_without_planning(tmp_path, capsys):
    clock = FakeTime(per_step(1.0))  # 8 s an epoch, 5 s the finish
    out = tmp_path / "run"
    summary = train(
        make_config("quick", time_limit="40s", **TINY), out=out, timekeeper=clock,
        observers=[Steps(clock, lambda epoch: 1.0)],
    )  # fmt: skip
    printed = capsys.readouterr().out
    planned = math.floor((PLAN_FRACTION * 40 - 5) / 8)
    assert summary["epochs"] == planned and f"time limit 40s: {planned} epochs" in printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["epochs"] == planned and saved["config"]["time_limit"] is None
    assert saved["plan"]["time_limit"] == "40s" and saved["plan"]["shortened"] is None
    # the plan against the clock: 8 s an epoch as planned, and the fake finish took no time
    limit = summary["time_limit"]
    assert limit["planned_epochs"] == planned and limit["shortened_after_epoch"] is None
    assert limit["actual_seconds"] == pytest.approx(8 * planned)
    assert limit["planned_seconds"] == pytest.approx(8 * planned + 5)
    # `train --config` reruns the planned recipe: no planning, the same training
    again = make_config(base=read_config_file(out / "config.json"))
    assert again.time_limit is None and again.epochs == planned
    rerun = train(again, out=tmp_path / "again")
    assert "time limit" not in capsys.readouterr().out and "time_limit" not in rerun
    first = (out / "metrics.csv").read_text().splitlines()
    second = (tmp_path / "again" / "metrics.csv").read_text().splitlines()
    column = first[0].split(",").index("train_loss")
    assert [r.split(",")[column] for r in first] == [r.split(",")[column] for r in second]


@pytest.mark.needs_fashion_mnist
def test_a_machine_that_slows_down_shortens_the_rest_once(tmp_path, capsys):
    clock = FakeTime(per_step(1.0))
    # epoch 1 as planned, then twice as slow to the end: one cut, whose margin holds after it
    cost = lambda epoch: 1.0 if epoch == 1 else 2.0
    out = tmp_path / "run"
    summary = train(
        make_config("quick", time_limit="120s", **TINY), out=out, timekeeper=clock,
        observers=[Steps(clock, cost)],
    )  # fmt: skip
    planned = math.floor((PLAN_FRACTION * 120 - 5) / 8)  # 13
    # after epoch 2: 96 s left; the rest at 16 s an epoch and the finish at 10 s, in 95 % of it
    kept = 2 + math.floor((PLAN_FRACTION * (120 - 24) - 2 * 5) / 16)
    assert summary["epochs"] == kept < planned
    assert summary["time_limit"]["shortened_after_epoch"] == 2
    assert summary["time_limit"]["times_shortened"] == 1
    assert summary["time_limit"]["actual_seconds"] <= 120
    events = [e for e in read_events(out) if e["event"] == "plan_shortened"]
    assert len(events) == 1 and events[0]["epochs"] == kept
    printed = capsys.readouterr().out
    assert printed.count("the rest of the run shortened") == 1 and "again" not in printed
    assert f"to {kept} epochs instead of {planned}" in printed
    assert f"epoch {kept}/{kept}," in printed  # the console counts to the new end
    saved = json.loads((out / "config.json").read_text())["plan"]["shortened"]
    assert saved["after_epoch"] == 2 and saved["epochs"] == kept and "earlier" not in saved
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["plan"]["shortened"]["epochs"] == kept
    report = (out / "report.html").read_text()
    assert "the rest of the run shortened" in report and "run time, limit 120 s" in report
    assert describe_run(out)["epochs_planned"] == kept  # `resnetlab runs`: kept of kept, not of 13
    # the learning rate decays to the shortened end, not the planned one
    rows = (out / "metrics.csv").read_text().splitlines()
    lr = [float(r.split(",")[rows[0].split(",").index("lr")]) for r in rows[1:]]
    assert lr[-1] < lr[1] / 5


@pytest.mark.needs_fashion_mnist
def test_a_machine_that_keeps_slowing_down_is_cut_again_and_ends_within_the_limit(tmp_path, capsys):
    """Twice as slow in epoch 2, four times from epoch 3: the first cut fits 2x, so epoch 3
    shows the plan overrunning again and the rest is cut again (one cut only: 184 s of 120)."""
    clock = FakeTime(per_step(1.0))
    cost = lambda epoch: 1.0 if epoch == 1 else 2.0 if epoch == 2 else 4.0
    out = tmp_path / "run"
    summary = train(
        make_config("quick", time_limit="120s", **TINY), out=out, timekeeper=clock,
        observers=[Steps(clock, cost)],
    )  # fmt: skip
    first = 2 + math.floor((PLAN_FRACTION * (120 - 24) - 2 * 5) / 16)  # 7, as above
    # after epoch 3 (32 s): 64 s left; the rest at 32 s an epoch and the finish at 20 s
    second = 3 + math.floor((PLAN_FRACTION * (120 - 56) - 4 * 5) / 32)
    assert summary["epochs"] == second < first
    limit = summary["time_limit"]
    assert limit["times_shortened"] == 2 and limit["shortened_after_epoch"] == 3
    assert limit["actual_seconds"] <= 120
    events = [e["epochs"] for e in read_events(out) if e["event"] == "plan_shortened"]
    assert events == [first, second]
    printed = capsys.readouterr().out
    assert f"shortened again, to {second} epochs instead of {first}" in printed
    saved = json.loads((out / "config.json").read_text())["plan"]["shortened"]
    assert saved["after_epoch"] == 3 and saved["earlier"]["after_epoch"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    lr = [float(r.split(",")[rows[0].split(",").index("lr")]) for r in rows[1:]]
    assert lr[-1] < lr[1] / 5  # the twice-compressed schedule still decays to its new end


def test_a_twice_shortened_schedule_composes_both_cuts():
    """The schedule a resume rebuilds from the record: each cut compresses what the one before
    left; continuous at each cut, ending where the base schedule ends."""
    base = Schedule("onecycle", lr=0.2, warmup=0.2)
    record = {
        "epochs": 10, "steps_per_epoch": 100, "sizes": None, "epoch_seconds": [1.0] * 10,
        "finish_seconds": 1.0,
        "shortened": {
            "at_step": 500, "epochs": 7, "sizes": None, "epoch_seconds": [1.0] * 7,
            "finish_seconds": 1.0,
            "earlier": {"at_step": 200, "epochs": 8, "sizes": None, "epoch_seconds": [1.0] * 8,
                        "finish_seconds": 1.0},
        },
    }  # fmt: skip
    pacer = Pacer(record, base, SimpleNamespace(epoch_sizes=None), FakeTime(per_step(1.0)),
                  lambda: 0.0, DistInfo())  # fmt: skip
    schedule = pacer.schedule()
    once = Compressed(base, 200, 1000)
    assert [schedule(s, 700) for s in range(500)] == [once(s, 800) for s in range(500)]
    assert schedule(500, 700) == once(500, 800)
    assert schedule(699, 700) < base(200, 1000) / 100  # the end: about zero
    assert schedule(600, 700) < once(600, 800)  # faster than after the first cut alone


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("first_epoch_cost, kept", [(2.0, 13), (6.0, 1)])
def test_a_slow_first_epoch_waits_for_the_second_unless_that_is_too_late(
    tmp_path, first_epoch_cost, kept
):
    """Epoch 1 twice as slow, then as planned: its one-off costs shorten nothing. Six times as
    slow: at that speed one more epoch would not fit, so the plan is cut at once."""
    clock = FakeTime(per_step(1.0))
    summary = train(
        make_config("quick", time_limit="120s", **TINY), out=tmp_path / "run", timekeeper=clock,
        observers=[Steps(clock, lambda epoch: first_epoch_cost if epoch == 1 else 1.0)],
    )  # fmt: skip
    assert summary["time_limit"]["planned_epochs"] == 13
    assert summary["epochs"] == kept
    assert summary["time_limit"]["shortened_after_epoch"] == (None if kept == 13 else 1)


@pytest.mark.needs_fashion_mnist
def test_a_resumed_run_has_what_the_first_run_left(tmp_path, monkeypatch, ctrl_c_at, capsys):
    out = tmp_path / "run"
    first = FakeTime(per_step(1.0), startup=2.0)
    ctrl_c_at(9 * 5 + 3)  # the flag is read once a step and once an epoch: Ctrl-C in epoch 6
    with pytest.raises(Interrupted):
        train(
            make_config("quick", time_limit="120s", **TINY), out=out, timekeeper=first,
            observers=[Steps(first, lambda epoch: 1.0)],
        )  # fmt: skip
    monkeypatch.undo()
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    state, plan = checkpoint["state"], checkpoint["plan"]
    done = state["epoch"] * 8 + state["step_in_epoch"]  # fake seconds: one a step
    assert state["epoch"] == 5 and plan["shortened"] is None
    assert plan["startup_seconds"] + state["wall_seconds"] == pytest.approx(2.0 + done)
    capsys.readouterr()
    # later, on a clock that reads something else: the budget is the 120 s less what was used,
    # and the resumed process's own start-up (30 s) leaves too little for the plan's rest
    again = FakeTime(per_step(1.0), start=1e6, startup=30.0)
    summary = train(resume=out, timekeeper=again, observers=[Steps(again, lambda epoch: 1.0)])
    printed = capsys.readouterr().out
    assert "left at the resume" in printed
    left = 120 - 2 - 30 - done
    assert summary["epochs"] == 5 + math.floor((PLAN_FRACTION * left - 5) / 8) < plan["epochs"]
    assert summary["time_limit"]["actual_seconds"] <= 120


# --- the command line and the sweep ------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--time-limit", "10x"], "--time-limit takes a duration"),
        (["--time-limit", "10m", "--epochs", "3"], "drop --epochs or --time-limit"),
    ],
)
def test_refusals_are_one_line(flags, says, tmp_path, capsys):
    assert cli.main(["train", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.needs_fashion_mnist
def test_a_limit_that_fits_no_epoch_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    clock = FakeTime(per_step(1.0))  # an epoch 8 s, the finish 5 s: a limit of 10 s fits none
    with pytest.raises(NoTime) as e:
        train(make_config("quick", time_limit="10s", **TINY), out=out, timekeeper=clock)
    assert "\n" not in str(e.value) and "--time-limit 10s" in str(e.value)
    assert not out.exists()  # nothing trained, no run folder
    # and on the command line: exit 2, one line (the finish alone is estimated at over 1 s)
    assert cli.main(["train", "--time-limit", "1s", "--subset", "512", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--time-limit 1s" in err and len(err.strip().splitlines()) == 1


def test_a_limit_does_not_change_the_quick_preset():
    assert make_config("quick").epochs == 12 and make_config("quick").time_limit is None


def test_the_sweep_gives_each_trial_the_limit(tmp_path):
    pytest.importorskip("optuna")
    from sweep_tools import TINY as SWEEP_TINY

    from resnetlab.sweep.search import make_plan
    from resnetlab.sweep.study import trial_config

    args = cli.build_parser().parse_args(
        ["sweep", "--space", "lr=log:0.01:1", "--time-limit", "5m"]
    )
    assert args.time_limit == "5m"
    fixed = dict(SWEEP_TINY, time_limit="5m")
    del fixed["epochs"]
    opts = dict(
        sampler="tpe", pruner="median", objective="val_acc", jobs=1, budget=None,
        heartbeat=30, verbose=False,
    )  # fmt: skip
    plan, _, _ = make_plan(
        ["lr=log:0.01:1"], 2, out=tmp_path / "sw", preset=None, config=None, fixed=fixed,
        storage=None, study="sweep", **opts,
    )  # fmt: skip
    assert trial_config(plan.base, {"lr": 0.1}).time_limit == "5m"
    with pytest.raises(UsageError, match="drop epochs from --space"):
        make_plan(
            ["epochs=int:1:3"], 2, out=tmp_path / "sw2", preset=None, config=None, fixed=fixed,
            storage=None, study="sweep", **opts,
        )  # fmt: skip


def test_measuring_leaves_the_runs_random_numbers_as_they_were():
    from resnetlab.data import Dataset
    from resnetlab.distributed.group import DistInfo
    from resnetlab.train.precision import Policy
    from resnetlab.train.setup import Splits
    from resnetlab.train.timing import measure

    images = torch.zeros(64, 1, 12, 12, dtype=torch.uint8)
    data = Dataset("tiny", images, torch.zeros(64, dtype=torch.long), classes=["a", "b"])
    cfg = make_config("quick", model_kwargs={"width": 4}, batch_size=16, device="cpu")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    timings, how = measure(
        cfg, torch.device("cpu"), Splits(data, None, data), Policy(False, False), DistInfo(),
        [12, 8], bound=1.0, clock=iter(range(10**6)).__next__,
    )  # fmt: skip
    assert torch.equal(torch.get_rng_state(), before)
    assert set(timings.step_seconds) == {12, 8} and not how["probe_reused"]


def test_a_saved_limit_gives_way_to_epochs_only_when_unset(tmp_path, capsys):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"config": make_config("quick", time_limit="5m").to_dict()}))
    flags = ["train", "--config", str(saved), "--epochs", "3", "--show-config"]
    assert cli.main(flags) == 2
    assert "drop --epochs or --time-limit" in capsys.readouterr().err
    assert cli.main([*flags, "--time-limit", "none"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["epochs"] == 3 and shown["time_limit"] is None


@pytest.mark.parametrize("fresh", [True, False])
def test_a_probe_figure_is_reused_only_when_this_process_measured_it(fresh):
    """The emulated no-bf16 run planned with the bf16 run's cached 81 ms a step at 28 px where a
    step took 147 ms, and ran 726 s of a 600 s limit: a cached figure is timed again."""
    from resnetlab.data import Dataset
    from resnetlab.train.precision import Candidate, Policy, ProbeResult
    from resnetlab.train.setup import Splits
    from resnetlab.train.timing import measure

    images = torch.zeros(64, 1, 12, 12, dtype=torch.uint8)
    data = Dataset("tiny", images, torch.zeros(64, dtype=torch.long), classes=["a", "b"])
    cfg = make_config("quick", model_kwargs={"width": 4}, batch_size=16, device="cpu")
    choice = Candidate(False, False)
    probe = ProbeResult(
        choice, {choice.name: 123.0}, cached=not fresh,
        fresh=frozenset({choice.name}) if fresh else frozenset(),
    )  # fmt: skip
    timings, how = measure(
        cfg, torch.device("cpu"), Splits(data, None, data), Policy(False, False, probe),
        DistInfo(), [12, 8], bound=1.0, clock=iter(range(10**6)).__next__,
    )  # fmt: skip
    assert how["probe_reused"] is fresh
    assert (timings.step_seconds[12] == 123.0) is fresh  # else timed here: 1 tick a step


def test_the_probes_cache_key_names_the_instruction_sets(monkeypatch):
    """ONEDNN_MAX_CPU_ISA (and ATEN_CPU_CAPABILITY) narrow what the same processor runs: a
    figure measured with AVX-512 must not answer for a run limited to AVX2."""
    from resnetlab.train.precision import machine_key

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    full = machine_key(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine_key(torch.device("cpu")) != full
    assert torch.backends.cpu.get_cpu_capability() in full["isa"]


@pytest.mark.needs_fashion_mnist
def test_every_side_of_the_ramp_is_offered_for_measuring_full_and_first_before_the_rest(
    tmp_path,
):
    """A step's time is not smooth in the side, so every side a plan may train at is measured
    while the bound allows: the full side, the first, then the rest halving the largest gap."""

    class Recording(FakeTime):
        def measure(self, cfg, device, splits, policy, dist, sides, bound):
            self.sides = list(sides)
            return super().measure(cfg, device, splits, policy, dist, sides, bound)

    clock = Recording(per_step(1.0))
    train(
        make_config("quick", time_limit="40s", **TINY), out=tmp_path / "run", timekeeper=clock,
        observers=[Steps(clock, lambda epoch: 1.0)],
    )  # fmt: skip
    assert clock.sides[:3] == [28, 16, 22]
    assert sorted(clock.sides) == list(range(16, 29))
