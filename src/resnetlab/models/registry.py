"""One registry of model names: `register_model`, `create_model`, `list_models`, `get_model_info`.

A registration stores a builder (any callable taking `num_classes=`, `in_chans=` and options)
with a small record of what the model expects, so tools can list and summarize models without
knowing how each is built.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from resnetlab.errors import UsageError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name."""

    name: str
    builder: Builder
    default_input_size: tuple[int, int, int]  # (C, H, W) it was designed for
    default_num_classes: int
    paper: str  # short citation of where the architecture comes from

    @property
    def default_in_chans(self) -> int:
        return self.default_input_size[0]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None,
    builder: Builder | None = None,
    *,
    paper: str,
    default_input_size: tuple[int, int, int] = (3, 224, 224),
    default_num_classes: int = 1000,
):
    """Register `builder` as `name`; without `builder`, decorate a function (named by default
    after it): `@register_model(paper="...")`. Returns the builder."""

    def register(fn: Builder) -> Builder:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelInfo(key, fn, tuple(default_input_size), default_num_classes, paper)
        return fn

    return register if builder is None else register(builder)


def _natural_key(name: str):
    # resnet18 < resnet34 < resnet101, not the string order resnet101 < resnet18
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern (`resnet*`, `*resnext*`), in natural order."""
    return sorted(fnmatch.filter(_REGISTRY, pattern), key=_natural_key)


def get_model_info(name: str) -> ModelInfo:
    """The record of a registered name; an unknown name raises UsageError naming close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f"; did you mean: {', '.join(close)}?" if close else "; see `resnetlab models`"
        raise UsageError(f"unknown model {name!r}{hint}") from None


def _check_count(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")


def _check_options(info: ModelInfo, options: dict[str, Any]) -> None:
    params = inspect.signature(info.builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        accepted = ", ".join(p for p in params if p not in ("num_classes", "in_chans"))
        raise UsageError(
            f"model {info.name!r} has no option {unknown[0]!r}; it accepts: {accepted}"
        )


def build(name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any):
    """A registered model, freshly initialised; `None` means the model's default classes / input
    channels. Extra keyword arguments go to the builder. (`create_model` adds loading weights.)"""
    info = get_model_info(name)
    num_classes = info.default_num_classes if num_classes is None else num_classes
    in_chans = info.default_in_chans if in_chans is None else in_chans
    _check_count("num_classes", num_classes)
    _check_count("in_chans", in_chans)
    _check_options(info, kwargs)
    return info.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
