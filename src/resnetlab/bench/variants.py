"""The variants `resnetlab bench` measures: the textbook's code, and resnetlab's path in fp32 or
bf16 with suffixes that turn one trick off or on (see resnetlab.bench)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from resnetlab.errors import UsageError
from resnetlab.train.graphs import capture_problem
from resnetlab.train.precision import bf16_pays
from resnetlab.train.presets import PRESETS

DEFAULT_VARIANTS = ("textbook", "fp32", "bf16")
# What each suffix of a variant name changes (see the module docstring).
MODIFIERS = {
    "nchw": {"channels_last": False},
    "nofuse": {"fuse": False},
    "noforeach": {"foreach": False},
    "compile": {"compile": True},
    "nograph": {"capture": False},
}


@dataclass(frozen=True)
class Variant:
    name: str
    textbook: bool = False
    amp: bool = False  # bf16 autocast
    channels_last: bool = True
    fuse: bool = True  # evaluate with fuse_bn
    foreach: bool = True  # multi-tensor optimizer step
    compile: bool = False  # torch.compile the training and the evaluation model
    capture: bool | None = (
        None  # CUDA graphs for the step and evaluation; None: as the trainer decides
    )


def parse_variant(name: str, device: torch.device | None = None) -> Variant:
    """ "textbook", or "fp32"/"bf16" followed by any of -nchw -nofuse -noforeach -compile -nograph;
    with `device`, a combination that means nothing there is refused."""
    if name == "textbook":
        return Variant(name, textbook=True, channels_last=False, fuse=False, foreach=False)
    head, *mods = name.split("-")
    if head not in ("fp32", "bf16"):
        raise UsageError(
            f"unknown bench variant {name!r}: use textbook, fp32 or bf16, optionally "
            f"followed by {', '.join('-' + m for m in MODIFIERS)} (e.g. bf16-compile)"
        )
    variant = Variant(name, amp=head == "bf16")
    for mod in mods:
        if mod not in MODIFIERS:
            raise UsageError(
                f"unknown suffix -{mod} in bench variant {name!r}; "
                f"known: {', '.join('-' + m for m in MODIFIERS)}"
            )
        variant = replace(variant, **MODIFIERS[mod])
    # A captured step's update is always foreach (train/graphs.py SGDUpdate): refuse a label
    # that would report foreach: False for it.
    if (
        device is not None
        and not variant.foreach
        and variant.capture is not False
        and capture_problem(device, 1, "sgd", variant.compile) is None
    ):
        raise UsageError(
            f"bench variant {name!r}: -noforeach means nothing with captured steps (their update "
            f"is always foreach); add -nograph ({name}-nograph)"
        )
    return variant


def preset_defaults(
    device: torch.device, figures: dict[str, float] | None = None
) -> dict[str, str]:
    """The variant each training preset runs by default on `device`: the fastest setting the
    timed probe measured (`figures`: seconds per step by "bf16 channels_last", "fp32 NCHW", ...,
    as train/precision.py measures them) among those the preset allows (d2l: fp32), or where none
    was measured the instruction-set policy (bf16 where bf16_pays, channels_last)."""
    pays = bf16_pays(device)
    out = {}
    for name, preset in PRESETS.items():
        amp = preset.get("amp")
        allowed = {
            setting: seconds
            for setting, seconds in (figures or {}).items()
            if amp is None or setting.startswith("bf16") == amp
        }
        if allowed:
            best = min(allowed, key=allowed.get)
            use_amp, channels_last = best.startswith("bf16"), best.endswith("channels_last")
        else:
            use_amp, channels_last = (pays if amp is None else amp), True
        out[name] = (
            ("bf16" if use_amp else "fp32")
            + ("" if channels_last else "-nchw")
            + ("-compile" if preset.get("compile") else "")
        )
    return out
