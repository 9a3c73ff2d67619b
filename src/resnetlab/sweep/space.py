"""The search space: `--space 'name=kind:args'`, one per searched setting of `resnetlab train`.

    lr=log:0.02:1                      a float, log-uniform between 0.02 and 1
    warmup=float:0:0.3                 a float, uniform
    epochs=int:2:8                     an integer, uniform (int:2:8:2 in steps of 2)
    model=choice:resnet20,resnet32     one of these values (the setting's type: 1e-4, true, 32)

`name` is a TrainConfig field (`weight_decay` or `weight-decay`). Everything here is plain Python:
Optuna is imported by the code that suggests values, not by the parser.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from resnetlab.errors import UsageError
from resnetlab.train.config import TrainConfig, field_types, flag_name

KINDS = ("log", "float", "int", "choice")
FORMS = "log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH[:STEP] or choice:A,B,..."
# settings a sweep does not search: the starting recipe, and the split the trials are compared on
NOT_SEARCHED = {
    "preset": "give it as --preset",
    "val_split": "the trials are compared on the validation split: fix it with --val-split",
    "epoch_test": "the trials never look at the test set",
    "final_test": "the trials never look at the test set (the best one is tested at the end)",
}


@dataclass(frozen=True)
class Param:
    """One searched setting: `kind` and its range (low, high, step) or its choices."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    choices: tuple = ()

    def spec(self) -> str:
        """The `name=kind:args` text this was parsed from (normalised)."""
        if self.kind == "choice":
            return f"{self.name}=choice:" + ",".join(_show(c) for c in self.choices)
        step = f":{self.step}" if self.step not in (None, 1) else ""
        return f"{self.name}={self.kind}:{_show(self.low)}:{_show(self.high)}{step}"

    def grid(self) -> list:
        """Every value, for the grid sampler (ranges have none: it needs choice:)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))
        raise UsageError(
            f"the grid sampler needs every value listed; write --space "
            f"'{self.name}=choice:...' instead of {self.kind}:"
        )

    def suggest(self, trial):
        """Optuna's suggestion for this setting in `trial`."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step or 1)
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def parse_space(specs) -> dict[str, Param]:
    """`specs`: `name=kind:args` strings, or a dict {name: "kind:args"}; returns {field: Param}."""
    if isinstance(specs, dict):
        specs = [f"{k}={v}" for k, v in specs.items()]
    if isinstance(specs, str):
        specs = [specs]
    space: dict[str, Param] = {}
    for spec in specs or ():
        param = parse_param(str(spec))
        if param.name in space:
            raise UsageError(f"--space names {param.name} twice; give each setting once")
        space[param.name] = param
    if not space:
        raise UsageError(
            "a sweep needs at least one --space 'setting=kind:args', e.g. --space 'lr=log:0.02:1'"
        )
    return space


def parse_param(spec: str) -> Param:
    """One `name=kind:args` (see the module's docstring); a one-line UsageError otherwise."""
    name, sep, rest = spec.partition("=")
    name = name.strip().replace("-", "_")
    kind, _, args = rest.partition(":")
    kind = kind.strip()
    if not sep or not name or kind not in KINDS or not args:
        raise UsageError(f"--space {spec!r} is not name=kind:args; write one of name={FORMS}")
    types = field_types()
    if name not in types:
        known = ", ".join(f.name for f in dataclasses.fields(TrainConfig) if f.name != "preset")
        raise UsageError(f"--space {spec!r}: {name} is not a train setting; choose from {known}")
    if name in NOT_SEARCHED:
        raise UsageError(f"--space {spec!r}: {name} is not searched; {NOT_SEARCHED[name]}")
    kinds = types[name]
    if kind == "choice":
        return Param(name, kind, choices=_choices(spec, name, kinds, args))
    return _range(spec, name, kind, kinds, args)


def _choices(spec: str, name: str, kinds: tuple, args: str) -> tuple:
    values = [a.strip() for a in args.split(",")]
    if len(values) < 2 or "" in values:
        raise UsageError(f"--space {spec!r}: choice: needs two or more values, e.g. choice:A,B")
    if dict in kinds:
        raise UsageError(f"--space {spec!r}: {name} takes a JSON object and cannot be searched")
    out = tuple(_convert(spec, name, kinds, v) for v in values)
    if len(set(out)) < len(out):
        raise UsageError(f"--space {spec!r}: a value is listed twice")
    choices = {f.name: f for f in dataclasses.fields(TrainConfig)}[name].metadata["choices"]
    for v in out:
        if choices and v not in choices:
            raise UsageError(f"--space {spec!r}: {name} {v!r} is unknown; use {', '.join(choices)}")
    return out


def _convert(spec: str, name: str, kinds: tuple, text: str):
    """`text` as a value of the setting's type (none for an optional one)."""
    if type(None) in kinds and text.lower() in ("none", "null"):
        return None
    for kind in (bool, int, float, str):
        if kind not in kinds:
            continue
        if kind is bool:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            continue
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is float and not math.isfinite(value):
            continue
        return value
    wanted = " or ".join("none" if k is type(None) else k.__name__ for k in kinds)
    raise UsageError(f"--space {spec!r}: --{flag_name(name)} takes {wanted}, not {text!r}")


def _range(spec: str, name: str, kind: str, kinds: tuple, args: str) -> Param:
    parts = args.split(":")
    numeric = float if kind in ("log", "float") else int
    if numeric not in kinds:
        have = "/".join(k.__name__ for k in kinds if k is not type(None))
        hint = (
            "int:LOW:HIGH"
            if int in kinds
            else "log:LOW:HIGH or float:LOW:HIGH"
            if float in kinds
            else "choice:A,B"
        )
        raise UsageError(f"--space {spec!r}: {name} takes {have} values; write {name}={hint}")
    if len(parts) not in ((2, 3) if kind == "int" else (2,)):
        raise UsageError(f"--space {spec!r} is malformed; write {name}={FORMS}")
    try:
        values = [numeric(p) for p in parts]
    except ValueError:
        raise UsageError(
            f"--space {spec!r}: {kind}: takes numbers, e.g. {name}={kind}:1:4"
        ) from None
    low, high = values[0], values[1]
    step = values[2] if len(values) == 3 else None
    if not all(math.isfinite(v) for v in values) or not low < high:
        raise UsageError(f"--space {spec!r}: the range must have LOW < HIGH, both finite")
    if kind == "log" and low <= 0:
        raise UsageError(f"--space {spec!r}: log: needs LOW > 0; use float: for a range from 0")
    if step is not None and step <= 0:
        raise UsageError(f"--space {spec!r}: the step must be positive")
    return Param(name, kind, low=low, high=high, step=step)
