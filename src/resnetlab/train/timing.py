"""`--time-limit` at run time: measure this machine's step times, plan the run with train/plan.py,
and check the plan after each epoch (engine.fit's `pace`).

The limit counts from the process's start (`resnetlab train`'s imports included; `train()` called
from Python counts from its call) to the run's last file. The plan's record (a dict of plain
values) goes to config.json beside the configuration, whose `epochs` are the planned ones and whose
`time_limit` is gone: `train --config` reruns the plan as it was made, without planning again. The
record also goes into the checkpoint, with the time used so far, so `--resume` keeps what the first
run left, and a schedule shortened before the stop stays shortened.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from resnetlab.data import eval_batch_size
from resnetlab.data.mixing import MixedLoader
from resnetlab.device import autocast
from resnetlab.distributed.group import DistInfo
from resnetlab.errors import plural
from resnetlab.models import create_model
from resnetlab.train.config import TrainConfig
from resnetlab.train.engine import Compressed, Schedule
from resnetlab.train.plan import (
    NoTime,
    Plan,
    Recipe,
    Timings,
    format_seconds,
    parse_duration,
    plan_run,
    shorten,
)
from resnetlab.train.presets import imagenet_ema

TIMED_STEPS = 2  # per image side, after one untimed warm-up step (as the probe's)
# Of the limit: the most the measurement spends past its first two sides. Every side a plan may
# train at is measured while this holds (13 sides of `quick` take about 5 s on 2 cores): a step's
# time is not smooth in the side (20 px took longer than 22 px here), so sides interpolated
# between a few measured ones were off by up to 20 %, and every run shortened itself after its
# second epoch; the sides left unmeasured are interpolated (plan.Timings.step_at).
MEASURE_FRACTION = 0.03
# After the last epoch, besides the test evaluations: plots, report.html, the mistakes' Grad-CAM
# row and the weight files, which do not grow with the data. Measured: 3.3 s for a 2,000-image
# subset of `quick` on the shared 2-core machine under load (the files' times in the run folder).
REPORT_SECONDS = 5.0
TTA_PASSES = {"none": 0, "flip": 2, "flip-shift": 6}  # forward passes per image (inference/tta.py)


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), 0 where that cannot be read: what
    `resnetlab train` spent importing before `train()` was called."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in ticks
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class Timekeeper:
    """The clock a time-limited run reads, what it spent before `train()` (`startup`), and the
    measurement of its step times. Tests hand in one with a fake clock and made-up timings."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, startup: float = 0.0):
        self.clock, self.startup = clock, startup

    def now(self) -> float:
        return self.clock()

    def measure(self, cfg, device, splits, policy, dist, sides, bound) -> tuple[Timings, dict]:
        """Seconds per training step at each of `sides` (in order; after the first two only while
        the measurement has spent less than `bound`), per evaluation batch, and so per epoch's
        evaluations and per finish; with what was measured how, for the record."""
        return measure(cfg, device, splits, policy, dist, sides, bound, self.clock)


def measure(cfg, device, splits, policy, dist, sides, bound, clock) -> tuple[Timings, dict]:
    """Timekeeper.measure on this machine: the run's model (a copy: the run's weights and random
    numbers are untouched) in the run's precision and layout on random batches of its shape, as
    the probe (train/precision.py) times it; the probe's figure at the full side is reused when
    the probe measured it in this process (a cached figure may be another day's load)."""
    started = clock()
    world = dist.world_size
    channels, classes = splits.train.images.shape[1], len(splits.train.classes)
    steps, reused = {}, False
    probe = policy.probe
    full = sides[0]
    if probe is not None and probe.choice.name in probe.fresh:
        steps[full], reused = probe.figures[probe.choice.name], True
    cuda = device.type == "cuda"
    index = (torch.cuda.current_device() if device.index is None else device.index) if cuda else 0
    # the copies' initial weights and random batches leave the run's random numbers as they were
    with torch.random.fork_rng(devices=[index] if cuda else []):
        template = create_model(
            cfg.model, num_classes=classes, in_chans=channels, **cfg.model_kwargs
        )
        for i, side in enumerate(sides):
            if side in steps:
                continue
            if i >= 2 and clock() - started > bound:
                break
            steps[side] = _time_step(
                template,
                (max(1, cfg.batch_size // world), channels, side, side),
                classes,
                device,
                policy,
                clock,
            )
        eval_batch = max(1, eval_batch_size(cfg.batch_size) // world)
        eval_side = cfg.eval_crop or cfg.eval_resize or full
        per_batch = _time_eval(
            template, (eval_batch, channels, eval_side, eval_side), device, policy, clock
        )
    batches = lambda data: math.ceil(len(data) / (eval_batch * world)) if data is not None else 0
    per_epoch = batches(splits.val) + (batches(splits.test) if cfg.epoch_test else 0)
    timings = Timings(
        step_seconds=steps,
        eval_seconds=per_epoch * per_batch,
        finish_seconds=finish_passes(cfg, splits.val is not None) * batches(splits.test) * per_batch
        + REPORT_SECONDS,
    )
    how = {
        "step_seconds": {str(k): round(v, 5) for k, v in sorted(steps.items())},
        "eval_batch_seconds": round(per_batch, 5),
        "probe_reused": reused,
        "seconds": round(clock() - started, 3),
    }
    return timings, how


def finish_passes(cfg: TrainConfig, has_val: bool) -> int:
    """Passes over the test set after the last epoch (trainer.finish), at most: the last weights'
    plain figure where no epoch tested them, the kept weights' where they may be another epoch's,
    and --tta's views."""
    if not cfg.final_test:
        return 0
    plain = (0 if cfg.epoch_test else 1) + (1 if has_val else 0)
    return plain + TTA_PASSES[cfg.tta]


def _time_step(template, shape, classes, device, policy, clock) -> float:
    model = copy.deepcopy(template).to(device)
    x, y = torch.randn(shape, device=device), torch.randint(0, classes, (shape[0],), device=device)
    if policy.channels_last:
        model, x = _channels_last(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)
    times = []
    for i in range(1 + TIMED_STEPS):
        start = clock()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, policy.amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        _drain(device)
        if i:
            times.append(clock() - start)
    return min(times)


def _time_eval(template, shape, device, policy, clock) -> float:
    model = copy.deepcopy(template).to(device).eval()
    x = torch.randn(shape, device=device)
    if policy.channels_last:
        model, x = _channels_last(model, x)
    times = []
    with torch.no_grad():
        for i in range(1 + TIMED_STEPS):
            start = clock()
            with autocast(device, policy.amp):
                model(x)
            _drain(device)
            if i:
                times.append(clock() - start)
    return min(times)


def _channels_last(model, x):
    return (
        model.to(memory_format=torch.channels_last),
        x.contiguous(memory_format=torch.channels_last),
    )


def _drain(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plan_for_time(
    cfg: TrainConfig, dist: DistInfo, device, splits, policy, say, *, timekeeper, spent
) -> tuple[TrainConfig, dict]:
    """The configuration planned to fit `cfg.time_limit` (its epochs, and the imagenet preset's
    EMA decay, which depends on them; the limit itself dropped) and the plan's record. `spent()`:
    seconds of the limit used so far. Raises NoTime (one line, exit 2) when one epoch does not fit."""
    limit = parse_duration(cfg.time_limit)
    full = cfg.resize or int(splits.train.images.shape[2])
    batches = len(splits.train) / cfg.batch_size
    recipe = Recipe(
        steps_per_epoch=max(1, math.floor(batches) if cfg.compile else math.ceil(batches)),
        full_size=full,
        start_size=cfg.progressive_resize,
        until=cfg.progressive_until,
    )
    start = min(recipe.sizes(1))  # the ramp's first side (the full one without a ramp)
    sides = [full, *([start] if start != full else []), *_spread(list(range(start + 1, full)))]
    timings, measured = timekeeper.measure(
        cfg, device, splits, policy, dist, sides, MEASURE_FRACTION * limit
    )
    used = spent()
    try:
        plan = plan_run(limit - used, recipe, timings)
    except NoTime as e:
        plan = NoTime(f"--time-limit {cfg.time_limit}: {e}")
    if dist.enabled:  # rank 0's plan on every rank: their measurements differ, their runs must not
        holder = [plan]
        torch.distributed.broadcast_object_list(holder, src=0)
        plan = holder[0]
    if isinstance(plan, NoTime):
        raise plan
    changes = {"epochs": plan.epochs, "time_limit": None}
    if cfg.preset == "imagenet" and cfg.ema == imagenet_ema(cfg.batch_size, cfg.epochs):
        changes["ema"] = imagenet_ema(cfg.batch_size, plan.epochs)  # the preset's, for these epochs
    planned = dataclasses.replace(cfg, **changes)
    record = {
        "time_limit": cfg.time_limit,
        "limit_seconds": limit,
        "startup_seconds": round(timekeeper.startup, 3),
        "planned_at_seconds": round(used, 3),
        "steps_per_epoch": recipe.steps_per_epoch,
        "recipe_epochs": cfg.epochs,
        **plan_fields(plan),
        "estimate_seconds": round(used + plan.seconds(), 3),
        "measured": measured,
        "shortened": None,
    }
    record["line"] = _plan_line(record, plan, timings)
    if say is not None:
        say(record["line"])
    return planned, record


def _spread(middle: list[int]) -> list[int]:
    """The sides between the first and the full one in the order that halves the largest gap
    left each time (the centre, then the quarters, ...): where the measurement's time bound cuts
    the list, the sides measured still span the ramp evenly."""
    order, gaps = [], [middle]
    while gaps:
        gap = max(gaps, key=len)
        gaps.remove(gap)
        if gap:
            centre = len(gap) // 2
            order.append(gap[centre])
            gaps += [gap[:centre], gap[centre + 1 :]]
    return order


def plan_fields(plan: Plan) -> dict:
    return {
        "epochs": plan.epochs,
        "sizes": plan.sizes,
        "epoch_seconds": [round(s, 3) for s in plan.epoch_seconds],
        "finish_seconds": round(plan.finish_seconds, 3),
    }


def current_plan(record: dict) -> Plan:
    """The plan the run follows: the record's, or its shortened one."""
    fields = record.get("shortened") or record
    return Plan(
        epochs=fields["epochs"],
        sizes=fields["sizes"],
        epoch_seconds=list(fields["epoch_seconds"]),
        finish_seconds=fields["finish_seconds"],
    )


def _plan_line(record: dict, plan: Plan, timings: Timings) -> str:
    sizes = (
        f" ({plan.sizes[0]}-{plan.sizes[-1]} px progressive resize)"
        if plan.sizes and plan.sizes[0] != plan.sizes[-1]
        else ""
    )
    steps = ", ".join(
        f"{side} px {seconds * 1000:.0f} ms"
        for side, seconds in sorted(timings.step_seconds.items())
    )
    return (
        f"time limit {record['time_limit']}: {plan.epochs} epochs{sizes} instead of the recipe's "
        f"{record['recipe_epochs']}, estimated to end at {format_seconds(record['estimate_seconds'])} "
        f"(measured per step: {steps}; evaluations {format_seconds(timings.eval_seconds)} an epoch, "
        f"finish {format_seconds(timings.finish_seconds)})"
    )


class Replan(NamedTuple):
    """A shortened plan, as fit applies it: the schedule and epochs from here, and what observers
    are told (the console's line, the event's fields)."""

    schedule: Schedule | Compressed
    epochs: int
    event: dict


class Pacer:
    """engine.fit's `pace`: after each epoch, whether the rest of the plan in `record` still fits
    the limit at the speed of the last epoch; if not, the shorter plan (plan.shorten) for what is
    left: fewer epochs, the resize schedule resampled, and the learning-rate schedule's rest
    compressed into the steps left (engine.Compressed; resume rebuilds it from the record). A
    shortened plan keeps a margin (plan.PLAN_FRACTION), so a machine that slows down once cuts
    once; one that keeps slowing down cuts again rather than overrun (record["shortened"]: the
    last cut, its "earlier" the one before)."""

    def __init__(self, record: dict, schedule: Schedule, loader, timekeeper, used, dist):
        """`used()`: seconds of the limit used so far (start-ups and every process's run)."""
        self.record, self.base, self.loader = record, schedule, loader
        self.timekeeper, self.used, self.dist = timekeeper, used, dist
        self.last = timekeeper.now()
        self.first = True  # the next epoch is the first this process trains
        self.plan = current_plan(record)
        _set_sizes(loader, self.plan.sizes)

    @property
    def epochs(self) -> int:
        return self.plan.epochs

    def schedule(self) -> Schedule | Compressed:
        cuts, cut = [], self.record.get("shortened")
        while cut is not None:
            cuts.append(cut)
            cut = cut.get("earlier")
        schedule, epochs = self.base, self.record["epochs"]
        for cut in reversed(cuts):  # each cut compresses the schedule the one before left
            schedule = Compressed(schedule, cut["at_step"], epochs * self.record["steps_per_epoch"])
            epochs = cut["epochs"]
        return schedule

    def __call__(self, state, *, starting: bool = False) -> Replan | None:
        """After epoch `state.epoch` (or, `starting`, before a resumed run's first step)."""
        now = self.timekeeper.now()
        took, self.last = now - self.last, now
        done = state.epoch
        planned = self.plan.epoch_seconds[done - 1] if done and not starting else None
        slowdown = max(took / planned, 1.0) if planned else 1.0
        left = self.record["limit_seconds"] - self.used()
        new = shorten(self.plan, done, left, slowdown)
        # The first epoch a process trains pays one-off costs (the allocator, the kernels' choice,
        # the first batches): its slowness is acted on only where waiting one more epoch could
        # already overrun the limit.
        first, self.first = self.first and not starting, self.first and starting
        if first and new is not None and new.epochs > done + 1:
            new = None
        new = _agree(new, self.dist)
        if new is None:
            return None
        earlier = self.record.get("shortened")
        self.record["shortened"] = {
            "after_epoch": done,
            "at_step": state.global_step,
            "slowdown": round(slowdown, 3),
            **plan_fields(new),
            **({"earlier": earlier} if earlier is not None else {}),
        }
        before, self.plan = self.plan.epochs, new
        _set_sizes(self.loader, new.sizes)
        end = self.used() + new.seconds(done, slowdown)
        why = (
            f"epoch {done} took {slowdown:.1f}x its planned {format_seconds(planned)}"
            if planned
            else f"{format_seconds(left)} of the limit left at the resume"
        )
        line = (
            f"time limit {self.record['time_limit']}: {why}; the rest of the run shortened"
            f"{' again' if earlier else ''}, to {new.epochs} {plural(new.epochs, 'epoch')} "
            f"instead of {before} "
            "(the learning-rate "
            f"schedule's rest compressed into the steps left), estimated to end at "
            f"{format_seconds(end)}"
        )
        self.record["shortened"]["line"] = line
        event = {"line": line, "epochs": new.epochs, "after_epoch": done, "slowdown": slowdown}
        return Replan(self.schedule(), new.epochs, event)


def _agree(plan: Plan | None, dist: DistInfo) -> Plan | None:
    """Rank 0's decision, on every rank: their clocks differ, their schedules must not."""
    if not dist.enabled:
        return plan
    holder = [plan]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def _set_sizes(loader, sizes: list[int] | None) -> None:
    if sizes is None:
        return
    if isinstance(loader, MixedLoader):
        loader = loader.loader
    loader.epoch_sizes = list(sizes)


def time_summary(record: dict, total_seconds: float, epochs: int) -> dict:
    """summary.json's "time_limit": the plan's estimate against the time the run took, from the
    command's start to report.html (written before the report with the time until then, and
    again after it)."""
    cut = record.get("shortened")
    return {
        "limit_seconds": record["limit_seconds"],
        "planned_seconds": record["estimate_seconds"],
        "actual_seconds": round(record["startup_seconds"] + total_seconds, 3),
        "planned_epochs": record["epochs"],
        "epochs": epochs,
        "shortened_after_epoch": cut["after_epoch"] if cut else None,
        "times_shortened": _count(cut),
    }


def _count(cut: dict | None) -> int:
    return 0 if cut is None else 1 + _count(cut.get("earlier"))
