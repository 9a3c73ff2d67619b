"""The run's precision and memory layout where its configuration says `auto`: explicit settings
win, a resumed run keeps what it ran with, and otherwise a short timed probe of the run's own
model, batch and input shape decides (resnetlab/probe.py: bounded, cached per machine).

Candidates: bf16 autocast or fp32 where `amp` is auto and the device has native bf16
(device.bf16_pays; elsewhere bf16 is emulated and fp32 is kept without measuring), channels_last
or NCHW where `channels_last` is auto on a CPU or CUDA. The instruction-set policy's pick
(device.py) comes first: it is what a probe that measures nothing keeps. Several processes
(torch.distributed) keep that policy too: their decisions must agree and their timings would not.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from resnetlab.device import bf16_pays, channels_last_pays
from resnetlab.inference.evaluation import autocast
from resnetlab.models import create_model
from resnetlab.probe import Candidate, ProbeResult, machine_key, probe
from resnetlab.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Policy:
    amp: bool
    channels_last: bool
    probe: ProbeResult | None = None  # None: nothing was left to measure (or several processes)


def candidates(cfg: TrainConfig, device: torch.device) -> list[Candidate]:
    """The settings worth measuring for `cfg` on `device`, the instruction-set policy's first."""
    if cfg.amp is not None:
        amps = [cfg.amp]
    else:
        amps = [True, False] if bf16_pays(device) else [False]
    if cfg.channels_last is not None:
        layouts = [cfg.channels_last]
    elif channels_last_pays(device):
        layouts = [True, False]
    else:
        layouts = [False]
    return [Candidate(a, c) for a, c in itertools.product(amps, layouts)]


def probe_step(
    cfg: TrainConfig, shape: tuple[int, ...], num_classes: int, device: torch.device
) -> Callable[[Candidate], Callable[[], None]]:
    """make_step for probe(): a copy of the run's model in the candidate's setting, plain SGD
    with momentum, and one random batch of the run's shape; a step drains the device. The model
    is built once, here, outside the probe's clock, with a first optimizer: the run builds both
    anyway, and the first of each in a process pays for lazy imports (measured on this 2-core
    machine: 2.7 s for the first model, 3.6 s for the first SGD, then 0.02 s a copy)."""
    template = create_model(
        cfg.model, num_classes=num_classes, in_chans=shape[1], **cfg.model_kwargs
    )
    torch.optim.SGD(template.parameters(), lr=0.0, momentum=0.9, foreach=True)

    def make_step(candidate: Candidate) -> Callable[[], None]:
        model = copy.deepcopy(template).to(device)
        x = torch.randn(shape, device=device)
        if candidate.channels_last:
            model, x = (
                model.to(memory_format=torch.channels_last),
                x.contiguous(memory_format=torch.channels_last),
            )
        y = torch.randint(0, num_classes, (shape[0],), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, candidate.amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return step

    return make_step


def resolve_policy(
    cfg: TrainConfig,
    device: torch.device,
    shape: tuple[int, ...],
    num_classes: int,
    *,
    expected_steps: int | None,
    world_size: int = 1,
    resumed: dict | None = None,
    say: Callable[[str], None] | None = None,
) -> Policy:
    """amp and channels_last for a run of `cfg` whose batches have `shape` ([batch, C, H, W]):
    `resumed` (a checkpoint's "policy") when given, else explicit settings, else the probe's
    pick (its line told to `say`)."""
    if resumed is not None:
        return Policy(
            cfg.amp if cfg.amp is not None else resumed["amp"],
            cfg.channels_last if cfg.channels_last is not None else resumed["channels_last"],
        )
    options = candidates(cfg, device)
    if len(options) == 1 or world_size > 1:
        return Policy(options[0].amp, options[0].channels_last)
    key = dict(
        machine_key(device),
        model=cfg.model,
        model_kwargs=cfg.model_kwargs,
        shape=list(shape),
    )
    # the probe's random batches leave the run's random numbers as they were
    cuda = device.type == "cuda"
    index = (torch.cuda.current_device() if device.index is None else device.index) if cuda else 0
    with torch.random.fork_rng(devices=[index] if cuda else []):
        result = probe(key, options, probe_step(cfg, shape, num_classes, device), expected_steps)
    if say is not None and result.figures:  # a run too short to measure anything stays quiet
        say(result.line())
    return Policy(result.choice.amp, result.choice.channels_last, result)
