"""Precision and memory layout: bf16 autocast or fp32, channels_last or NCHW, for a run whose
configuration says `auto` (None). Three parts, one concept:

- the instruction-set policy (`bf16_pays`, `channels_last_pays`): where bf16 is native (so worth
  measuring) and what a run keeps when its timed probe measured nothing;
- the probe (`probe`): a short timed probe of a run's own training step in each candidate
  setting, cached per machine;
- the decision (`resolve_policy`): explicit settings win, a resumed run keeps what it ran with,
  and otherwise the probe of the run's own model, batch and input shape decides.

The autocast context itself is `resnetlab.device.autocast`, on the ground floor, since inference
evaluates under it too and never imports train/.

The probe. Which setting is fastest depends on the CPU, the model and the shape, not on an
instruction-set flag: on one Xeon with AMX, one thread, resnet18_d2l at 28 px trained fastest in
fp32 NCHW, at 96 px in bf16 channels_last (2.5x fp32 NCHW; BENCHMARKS.md). So `probe` takes a
function that builds one training step of the run's model, batch and input shape in a candidate
setting (`probe_step`), and times a few steps of each:

- bounded: at most `max_seconds` (3 s) in all, and at most `max_fraction` (2 %) of the run's
  expected time. A probe step costs about what a step of the run costs, so the probe takes at
  most 2 % of the run's steps (a run of fewer than 150 steps probes nothing), and before each
  step the time it would take (the last step of this candidate, or the fastest seen) must fit
  in what is left of min(3 s, 2 % x the run's steps x the fastest step seen). Only the very
  first step is not predicted: where one step takes longer than the bound, the probe takes one;
- cached in the user cache (`$XDG_CACHE_HOME/resnetlab/probe.json`, the data cache's folder, or
  `$RESNETLAB_PROBE_CACHE`), keyed
  by the machine (CPU model or GPU name, threads, torch version), the model, the input shape and
  the batch: the next run with the same key pays nothing. A probe cut short by its bound keeps
  what it measured, and the next run measures the rest;
- the fastest measured candidate wins; none measured: the first (the instruction-set policy's).

The decision's candidates: bf16 autocast or fp32 where `amp` is auto and the device has native
bf16 (`bf16_pays`; elsewhere bf16 is emulated and fp32 is kept without measuring), channels_last
or NCHW where `channels_last` is auto on a CPU or CUDA. The instruction-set policy's pick comes
first: it is what a probe that measures nothing keeps. Several processes (torch.distributed) keep
that policy too: their decisions must agree and their timings would not.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetlab.device import autocast
from resnetlab.fileio import write_json
from resnetlab.models import create_model
from resnetlab.train.config import TrainConfig

# --- the instruction-set policy --------------------------------------------------------------------


def bf16_pays(device: torch.device) -> bool:
    """bf16 autocast pays on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX): measured ~2x here."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    return False


def channels_last_pays(device: torch.device) -> bool:
    """channels_last memory: measured faster on the CPU (oneDNN) and on CUDA (cuDNN)."""
    return device.type in ("cpu", "cuda")


# --- the probe: bounded, cached per machine; the step it times comes from its caller ---------------

MAX_SECONDS = 3.0  # the most a probe costs a run
MAX_FRACTION = 0.02  # ... and the most of its expected time
TIMED_STEPS = 2  # per candidate, after one untimed warm-up step (kernels chosen, memory touched)
CACHE_FILE = "probe.json"


@dataclass(frozen=True)
class Candidate:
    amp: bool  # bf16 autocast
    channels_last: bool

    @property
    def name(self) -> str:
        return ("bf16" if self.amp else "fp32") + (
            " channels_last" if self.channels_last else " NCHW"
        )


@dataclass
class ProbeResult:
    """The decision, with the seconds per step each candidate measured (all runs together)."""

    choice: Candidate
    figures: dict[str, float] = field(default_factory=dict)  # candidate name -> s per step
    seconds: float = 0.0  # what this run spent probing (0 when the cache answered)
    cached: bool = False  # every candidate's figure came from the cache
    fresh: frozenset[str] = frozenset()  # the candidates this process measured
    complete: bool = True  # every candidate measured

    def line(self) -> str:
        """The one line a run prints."""
        figures = ", ".join(
            f"{name} {s * 1000:.0f} ms"
            for name, s in sorted(self.figures.items(), key=lambda kv: kv[1])
        )
        how = (
            "from the cache, probe 0 s"
            if self.cached
            else f"probe {self.seconds:.1f} s{'' if self.complete else ', cut short by its bound'}"
        )
        return f"precision and layout: {self.choice.name} (per step: {figures or 'none measured'}; {how})"

    def describe(self) -> dict:
        """What config.json and the report keep."""
        return {
            "choice": self.choice.name,
            "seconds_per_step": self.figures,
            "probe_seconds": round(self.seconds, 3),
            "cached": self.cached,
            "complete": self.complete,
            "line": self.line(),
        }


def cache_path() -> Path:
    """The user cache's probe file (the same folder as the datasets' cache, data/sources.py), or
    `$RESNETLAB_PROBE_CACHE` (the test suite keeps its own)."""
    if os.environ.get("RESNETLAB_PROBE_CACHE"):
        return Path(os.environ["RESNETLAB_PROBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnetlab" / CACHE_FILE


def machine_key(device: torch.device) -> dict:
    """What a figure depends on besides the run: the processor, the instruction sets torch and
    oneDNN may use (ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can narrow them on the same
    processor, and halve its speed), the threads, torch's version."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        processor = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                processor = next(
                    line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
                )
        except (OSError, StopIteration):
            pass
    key = {
        "device": device.type,
        "processor": processor,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.type == "cpu":
        key["isa"] = [torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA")]
    return key


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, key: str, figures: dict) -> None:
    cache = _read_cache(path)
    cache[key] = figures
    try:
        write_json(path, cache)
    except OSError:
        pass  # a read-only cache: the next run probes again


def probe(
    key: dict,
    candidates: list[Candidate],
    make_step: Callable[[Candidate], Callable[[], None]],
    expected_steps: int | None,
    *,
    max_seconds: float | None = None,
    max_fraction: float = MAX_FRACTION,
    timed_steps: int = TIMED_STEPS,
    clock: Callable[[], float] = time.perf_counter,
    path: Path | None = None,
) -> ProbeResult:
    """The fastest of `candidates` (the first is the fallback) for the run `key` describes.
    `make_step(candidate)` returns a function that runs one training step (device drained);
    `expected_steps`: the run's steps (None: only `max_seconds`, default MAX_SECONDS, bounds
    the probe)."""
    max_seconds = MAX_SECONDS if max_seconds is None else max_seconds
    path = cache_path() if path is None else path
    cache_key = json.dumps(key, sort_keys=True)
    known = _read_cache(path).get(cache_key, {})
    figures = {c.name: float(known[c.name]) for c in candidates if c.name in known}
    missing = [c for c in candidates if c.name not in figures]
    spent = 0.0
    if missing:
        spent = _measure(
            missing,
            make_step,
            figures,
            expected_steps,
            max_seconds,
            max_fraction,
            timed_steps,
            clock,
        )
        if any(c.name in figures for c in missing):
            _write_cache(path, cache_key, figures)
    measured = [c for c in candidates if c.name in figures]
    choice = min(measured, key=lambda c: figures[c.name]) if measured else candidates[0]
    return ProbeResult(
        choice=choice,
        figures=figures,
        seconds=spent,
        cached=not missing,
        fresh=frozenset(c.name for c in missing if c.name in figures),
        complete=len(measured) == len(candidates),
    )


def _measure(
    candidates, make_step, figures, expected_steps, max_seconds, max_fraction, timed_steps, clock
):
    """Time each candidate's steps into `figures` (the fastest timed step) while the bound allows;
    returns the seconds spent (building the steps included)."""
    spent, fastest, steps = 0.0, min(figures.values(), default=None), 0
    max_steps = None if expected_steps is None else int(max_fraction * expected_steps)

    def budget() -> float:
        if expected_steps is None or fastest is None:
            return max_seconds
        return min(max_seconds, max_fraction * expected_steps * fastest)

    for candidate in candidates:
        if max_steps is not None and steps + 1 + timed_steps > max_steps:
            break  # not even one timed step of this candidate fits in the run's share
        start = clock()
        step = make_step(candidate)
        spent += clock() - start
        last, timed = fastest, []
        for i in range(1 + timed_steps):
            if last is not None and spent + last > budget():
                break
            start = clock()
            step()
            last = clock() - start
            spent, steps = spent + last, steps + 1
            if i > 0:
                timed.append(last)
            fastest = last if fastest is None else min(fastest, last)
        if timed:
            figures[candidate.name] = min(timed)
        if spent >= budget():
            break
    return spent


# --- the decision for a run ------------------------------------------------------------------------


@dataclass(frozen=True)
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
