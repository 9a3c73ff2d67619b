"""Fitting a run to `--time-limit`: how many epochs, and at which image sizes, from measured times.

Pure arithmetic, no clock and no torch: train/timing.py measures the step times and keeps the
clock, this module turns numbers into a plan. A run's time is its start-up (spent before the plan),
its epochs (each one's training steps at its image side, then its evaluation) and its finish
(the kept weights' final test, with --tta's views, plots, report). `plan_run` takes the most epochs
whose estimate fits what is left of the limit; the recipe's progressive-resize ramp keeps its
shape (its first side, and the fraction of the run it spans) over the planned epochs. `shorten` is
the per-epoch check: when the epochs left, slowed as much as the last one was, would end past the
limit, the rest of the schedule is resampled into fewer epochs (still ending at the full size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from resnetlab.errors import UsageError

MAX_EPOCHS = 1000  # the most a plan asks for (a tiny subset under a long limit)
# The plan aims at this fraction of the time left: step times measured in a few steps miss some of
# the data pipeline's cost, and a per-epoch check that cut with no margin would cut again at the
# next epoch's noise.
PLAN_FRACTION = 0.95

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration written as hours, minutes and seconds: 90s, 10m, 1h, 1h30m, 2m30s."""
    match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise UsageError(
            f"--time-limit takes a duration such as 90s, 10m, 1h or 1h30m, got {text!r}"
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise UsageError(f"--time-limit must be longer than zero, got {text!r}")
    return total


def format_seconds(seconds: float) -> str:
    """ "95 s" under two minutes, else "9 min 41 s"."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def resize_schedule(start: int, full: int, until: float, epochs: int) -> list[int]:
    """Each epoch's training image side under progressive resizing: from `start` in the first
    epoch, linearly to `full`, reached at epoch `until` * (epochs - 1) (counted from 0), then kept."""
    ramp = max(1, round(until * (epochs - 1)))
    return [round(start + (full - start) * min(e, ramp) / ramp) for e in range(epochs)]


@dataclass(frozen=True)
class Recipe:
    """What the plan may change and what it keeps: the steps of an epoch, the side trained at the
    end, and the progressive-resize ramp (`start_size` 0: every epoch at `full_size`)."""

    steps_per_epoch: int
    full_size: int
    start_size: int = 0
    until: float = 0.5

    def sizes(self, epochs: int) -> list[int]:
        if not self.start_size:
            return [self.full_size] * epochs
        return resize_schedule(self.start_size, self.full_size, self.until, epochs)


@dataclass(frozen=True)
class Timings:
    """Measured on this machine: seconds per training step at the sides measured, the evaluations
    after each epoch, and the finish (final test with its views, plots, report)."""

    step_seconds: dict[int, float]
    eval_seconds: float
    finish_seconds: float

    def step_at(self, side: int) -> float:
        """Seconds per step at `side`: a step costs about a constant plus a part in proportion to
        the pixels, so between (and beyond) the sides measured it is linear in side squared."""
        known = sorted(self.step_seconds.items())
        if side in self.step_seconds or len(known) == 1:
            return self.step_seconds.get(side, known[0][1] * side**2 / known[0][0] ** 2)
        below = [k for k in known if k[0] < side]
        above = [k for k in known if k[0] > side]
        (a, ta), (b, tb) = (
            (below[-1], above[0]) if below and above else known[:2] if above else known[-2:]
        )
        slope = (tb - ta) / (b * b - a * a)
        return max(ta + slope * (side * side - a * a), 0.0)

    def epoch_seconds(self, side: int, steps: int) -> float:
        return steps * self.step_at(side) + self.eval_seconds


@dataclass(frozen=True)
class Plan:
    """The epochs planned, each one's image side (None: no progressive resizing) and estimated
    seconds (its evaluation included), and the finish's estimate."""

    epochs: int
    sizes: list[int] | None
    epoch_seconds: list[float]
    finish_seconds: float

    def seconds(self, start: int = 0, slowdown: float = 1.0) -> float:
        """The estimate from epoch `start` (counted from 0) to the end, finish included, each
        part `slowdown` times as long as planned."""
        return slowdown * (sum(self.epoch_seconds[start:]) + self.finish_seconds)


class NoTime(UsageError):
    """Not even one epoch (with its evaluation and the finish) fits in the time limit."""


def plan_run(seconds_left: float, recipe: Recipe, timings: Timings) -> Plan:
    """The most epochs (at most MAX_EPOCHS) whose estimate fits PLAN_FRACTION of `seconds_left`;
    NoTime when one epoch does not fit."""
    budget = PLAN_FRACTION * seconds_left
    best = None
    for epochs in range(1, MAX_EPOCHS + 1):
        plan = plan_epochs(epochs, recipe, timings)
        if plan.seconds() <= budget:
            best = plan
        # the smallest epoch of a longer run costs at least this: no longer run fits either
        elif epochs * min(plan.epoch_seconds) + plan.finish_seconds > budget:
            break
    if best is None:
        one = plan_epochs(1, recipe, timings).seconds()
        raise NoTime(
            f"--time-limit leaves {format_seconds(seconds_left)} after start-up, and one epoch "
            f"with its evaluation and the final test take an estimated {format_seconds(one)} "
            "here: give a longer --time-limit or train on less (--subset)"
        )
    return best


def plan_epochs(epochs: int, recipe: Recipe, timings: Timings) -> Plan:
    sizes = recipe.sizes(epochs)
    per_side = {s: timings.epoch_seconds(s, recipe.steps_per_epoch) for s in set(sizes)}
    return Plan(
        epochs=epochs,
        sizes=sizes if recipe.start_size else None,
        epoch_seconds=[per_side[s] for s in sizes],
        finish_seconds=timings.finish_seconds,
    )


def shorten(plan: Plan, done: int, seconds_left: float, slowdown: float) -> Plan | None:
    """The per-epoch check, after `done` epochs with `seconds_left` of the limit: None while the
    epochs left and the finish, `slowdown` times as long as planned, fit; else a shorter plan,
    whose epochs after `done` are the rest of `plan` resampled (first and last kept: the ramp
    still ends at the full size), as many as fit PLAN_FRACTION of what is left (none: finish
    now): a margin, so that the next epoch's noise does not cut again."""
    if done >= plan.epochs or plan.seconds(done, slowdown) <= seconds_left:
        return None  # at the end, only the finish is left: nothing to shorten
    keep, budget = done, PLAN_FRACTION * seconds_left
    for epochs in range(plan.epochs - 1, done, -1):
        if _resampled(plan, done, epochs).seconds(done, slowdown) <= budget:
            keep = epochs
            break
    return _resampled(plan, done, keep)


def _resampled(plan: Plan, done: int, epochs: int) -> Plan:
    rest = plan.epochs - done
    new = epochs - done
    picks = (
        [plan.epochs - 1]
        if new == 1
        else [done + round(j * (rest - 1) / (new - 1)) for j in range(new)]
    )
    picks = list(range(done)) + (picks if new > 0 else [])
    return Plan(
        epochs=epochs,
        sizes=[plan.sizes[i] for i in picks] if plan.sizes is not None else None,
        epoch_seconds=[plan.epoch_seconds[i] for i in picks],
        finish_seconds=plan.finish_seconds,
    )
