"""`bench()`: every variant in turn, in one process, and the ratios to the textbook's code."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
from dataclasses import asdict

import torch

from resnetlab.bench.measure import (
    Clock,
    PeakMemory,
    matmul_peak_gflops,
    peak_rss_mib,
    summarize,
    timed_round,
    training_flops_per_example,
)
from resnetlab.bench.runners import ResnetlabRunner, TextbookRunner
from resnetlab.bench.variants import DEFAULT_VARIANTS, parse_variant, preset_defaults
from resnetlab.data import load_dataset
from resnetlab.device import resolve_device
from resnetlab.errors import UsageError
from resnetlab.models import get_model_info
from resnetlab.train.precision import bf16_pays, resolve_policy
from resnetlab.train.presets import make_config
from resnetlab.train.setup import Splits


def _machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


MAX_THREADS = 4096


@contextlib.contextmanager
def _torch_settings(threads: int | None):
    """Set `threads` (None: leave as is); restore the thread count and cudnn.benchmark after."""
    previous_threads, previous_cudnn_benchmark = (
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
    )
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_cudnn_benchmark


def _check_sizes(
    batch_size: int, steps: int, repeats: int, resize: int | None, threads: int | None
) -> None:
    """Raise UsageError for a batch size, step, repeat, resize or thread count out of range."""
    for name, value in (("--batch-size", batch_size), ("--steps", steps), ("--repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive whole number, got {value!r}")
    if resize is not None and (not isinstance(resize, int) or resize < 8):
        raise UsageError(f"--resize must be at least 8 pixels, got {resize!r}")
    if resize is not None and resize > 4096:  # beyond, the resize overflows or takes terabytes
        raise UsageError(f"--resize must be at most 4096 pixels, got {resize}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be positive, got {threads}")
    if (
        threads is not None and threads > MAX_THREADS
    ):  # torch.set_num_threads overflows on huge numbers
        raise UsageError(f"--threads must be at most {MAX_THREADS}, got {threads}")


def _parse_variants(variants: tuple[str, ...] | None, dev: torch.device) -> list:
    """Parse the variant names (default: textbook, fp32, and bf16 where it pays), each once."""
    if variants is None:
        variants = tuple(v for v in DEFAULT_VARIANTS if v != "bf16" or bf16_pays(dev))
    parsed = [parse_variant(v, dev) for v in variants]
    if len({v.name for v in parsed}) != len(parsed):
        raise UsageError(f"each variant once, please: {', '.join(variants)}")
    return parsed


def _load_splits(data: str, data_dir: str | None, steps: int, batch_size: int) -> Splits:
    """Load the train and test splits and check each holds `steps` batches."""
    datasets = Splits(
        load_dataset(data, train=True, root=data_dir),
        None,
        load_dataset(data, train=False, root=data_dir),
    )
    for split, ds in (("train", datasets.train), ("test", datasets.test)):
        if steps * batch_size > len(ds):
            raise UsageError(
                f"--steps {steps} x --batch-size {batch_size} needs more than the "
                f"{len(ds)} {split} examples; lower one of them"
            )
    return datasets


def _busy_warning(dev: torch.device, say) -> tuple[float, str | None]:
    """Return the 1-minute load average and, when a multi-threaded CPU run is crowded, a warning."""
    load_start = os.getloadavg()[0]
    busy = None
    if dev.type == "cpu" and torch.get_num_threads() > 1 and load_start >= (os.cpu_count() or 1):
        # Measured on the shared 2-core machine: with other processes running, two threads ran
        # 10-90x slower than one (each parallel region waits for a descheduled partner thread).
        busy = (
            f"the machine is busy (load average {load_start:.1f} on {os.cpu_count()} CPUs): with "
            f"{torch.get_num_threads()} threads the figures will be slow and noisy; --threads 1 is steadier"
        )
        say(f"warning: {busy}")
    return load_start, busy


def _warm_up(
    parsed: list,
    model: str,
    datasets: Splits,
    batch_size: int,
    resize: int | None,
    steps: int,
    dev: torch.device,
    seed: int,
    say,
) -> tuple[dict, dict, dict]:
    """Build each variant's runner and time its first round: runners, peak MiB, first rounds."""
    runners, peaks, first_round = {}, {}, {}
    for v in parsed:
        say(f"warming up {v.name}")
        runner_cls = TextbookRunner if v.textbook else ResnetlabRunner
        with PeakMemory(dev) as peak:
            runner = runner_cls(v, model, datasets, batch_size, resize, steps, dev, seed)
            with Clock(dev) as c:
                first_round[v.name] = timed_round(runner, dev)
        runners[v.name], peaks[v.name] = runner, peak.mib
        first_round[v.name]["total_s"] = c.seconds
    return runners, peaks, first_round


def _timed_rounds(runners: dict, repeats: int, dev: torch.device, say) -> dict:
    """Time `repeats` rounds of every runner in turn; return each runner's list of rounds."""
    rounds = {name: [] for name in runners}
    order = list(runners)
    for r in range(repeats):
        for name in (
            order[r % len(order) :] + order[: r % len(order)]
        ):  # each round starts elsewhere
            say(f"round {r + 1}/{repeats}: {name}")
            rounds[name].append(timed_round(runners[name], dev))
    return rounds


def _collect_results(
    runners: dict, rounds: dict, peaks: dict, first_round: dict, datasets: Splits, dev
) -> dict:
    """Summarize each variant's rounds, with its peak memory, warm-up times and settings."""
    results = {}
    for name, runner in runners.items():
        res = summarize(rounds[name], runner, len(datasets.train), len(datasets.test), dev)
        res["peak_mib"] = peaks[name]
        res["warmup_train_s"] = first_round[name]["train_s"]  # includes compiling, for -compile
        res["warmup_eval_setup_s"] = first_round[name]["eval_setup_s"]
        res["settings"] = {k: val for k, val in asdict(runner.variant).items() if k != "name"}
        res["settings"]["eval_batch_size"] = runner.eval_batch_size
        res["settings"]["capture"] = getattr(runner, "capture", False)  # as resolved on this device
        results[name] = res
    return results


def _measure_ceiling(
    model: str, datasets: Splits, resize: int | None, parsed: list, dev, results: dict, say
) -> tuple[float, dict]:
    """Measure the matmul peaks, add each variant's train_gflop_s; return FLOPs/example, peaks."""
    # The ceiling: how fast this device multiplies matrices in each precision the variants use,
    # against the arithmetic a training step needs. No path that keeps the model's FLOPs can
    # train faster than the best peak allows.
    say("measuring matmul peaks")
    train_flops = training_flops_per_example(
        model,
        datasets.train.images.shape[1],
        len(datasets.train.classes),
        resize or datasets.train.images.shape[-1],
    )
    precisions = {
        "fp32": torch.float32,
        **({"bf16": torch.bfloat16} if any(v.amp for v in parsed) else {}),
    }
    peaks_gflops = {name: matmul_peak_gflops(dtype, dev) for name, dtype in precisions.items()}
    for res in results.values():
        res["train_gflop_s"] = train_flops * res["train_ex_s"] / 1e9
    return train_flops, peaks_gflops


def _missing_defaults(defaults: dict, parsed: list) -> list[str]:
    """The presets' default variants not measured yet (compiled ones aside: minutes to warm up)."""
    names = {v.name for v in parsed}
    return sorted({v for v in defaults.values() if v not in names and not v.endswith("-compile")})


def _default_policy(model, datasets: Splits, batch_size, resize, dev, say):
    """The timed probe (train/precision.py) for the bench's model, batch and input shape, as a
    training run would take it (bounded by its 3 s, cached): what each preset's default is here."""
    images = datasets.train.images
    px = resize or images.shape[-1]
    cfg = make_config("quick", model=model, model_kwargs={}, batch_size=batch_size)
    say("probing precision and layout as a run would")
    shape = (batch_size, images.shape[1], px, px)
    return resolve_policy(
        dataclasses.replace(cfg, amp=None, channels_last=None),
        dev,
        shape,
        len(datasets.train.classes),
        expected_steps=None,
        say=say,
    ).probe


def _compute(train_flops: float, peaks_gflops: dict, results: dict) -> dict:
    """The report's compute section: FLOPs per example, matmul peaks and the training ceiling."""
    compute = {"train_gflop_per_example": train_flops / 1e9, "matmul_peak_gflop_s": peaks_gflops}
    if "textbook" in results:
        # The training speed-up a path with the textbook's FLOPs could reach at the best peak.
        compute["train_ceiling"] = max(peaks_gflops.values()) / results["textbook"]["train_gflop_s"]
    return compute


def _ratios(results: dict) -> dict:
    """Each variant's figures as ratios to the textbook's (empty without a textbook variant)."""
    ratios = {}
    if "textbook" in results:
        base = results["textbook"]
        for name, res in results.items():
            if name == "textbook":
                continue
            ratios[name] = {}
            for clock in ("", "_cpu"):
                if f"train_ex{clock}_s" not in res:
                    continue
                for figure in ("train", "eval", "loader"):
                    ratios[name][figure + clock] = (
                        res[f"{figure}_ex{clock}_s"] / base[f"{figure}_ex{clock}_s"]
                    )
                ratios[name]["epoch" + clock] = (
                    base[f"epoch{clock}_s"] / res[f"epoch{clock}_s"]
                )  # a speed-up
            ratios[name]["memory"] = (
                res["peak_mib"] / base["peak_mib"] if res["peak_mib"] and base["peak_mib"] else None
            )  # below 1 is leaner
    return ratios


def _notes(busy: str | None, steps: int, datasets: Splits) -> dict:
    """The notes that explain the report's figures (and the busy-machine warning, if any)."""
    return {
        **({"busy": busy} if busy else {}),
        "figures": "median of the timed rounds after one warm-up round; each round runs every variant in turn, "
        "starting with a different one each round",
        "per_cpu_second": "*_cpu_s figures (CPU only): the same from the CPU-seconds of this process (all "
        "threads) instead of the wall clock; steadier when other processes share the cores",
        "epoch_s": f"loader + training over {steps} batches and loader + evaluation over {steps} batches, "
        f"extrapolated to {len(datasets.train)} training and {len(datasets.test)} test examples "
        f"(plus one eval_setup_s: batch-norm folding, and compiling for -compile variants)",
        "peak_mib": "memory the variant's warm-up round added (resident set on a CPU, max allocated on CUDA)",
        "compute": "train_gflop_per_example: convolution and linear FLOPs of a training step (forward and "
        "backward) per example, from torch.utils.flop_counter; matmul_peak_gflop_s: the fastest of "
        "3 square 2048 products per precision, same device and threads; train_gflop_s (per "
        "variant): the two multiplied; train_ceiling: the best peak / the textbook's rate, the most "
        "any path with the textbook's FLOPs could speed up its training here",
        "textbook": "the textbook loop reads its metrics on the host every step, as d2l's train_ch6 does; "
        "its plot is left out",
    }


def bench(
    model: str = "resnet18_d2l",
    batch_size: int = 256,
    resize: int | None = None,
    steps: int = 3,
    repeats: int = 3,
    device: str = "auto",
    variants: tuple[str, ...] | None = None,
    threads: int | None = None,
    data: str = "fashion-mnist",
    data_dir: str | None = None,
    seed: int = 0,
    progress=None,
) -> dict:
    """Measure `variants` (default: textbook, fp32, bf16 where it pays, and each preset's default
    as the timed probe picks it for this shape, e.g. fp32-nchw) and return one dict: config,
    machine, per-variant figures, ratios to the textbook, each preset's default variant and the
    probe behind them."""
    _check_sizes(batch_size, steps, repeats, resize, threads)
    get_model_info(model)  # an unknown name fails here, with the registry's message
    dev = resolve_device(device)
    parsed = _parse_variants(variants, dev)
    say = progress or (lambda text: None)

    with _torch_settings(threads):
        datasets = _load_splits(data, data_dir, steps, batch_size)
        load_start, busy = _busy_warning(dev, say)
        machine = _machine(dev)
        policy = _default_policy(model, datasets, batch_size, resize, dev, say)
        defaults = preset_defaults(dev, policy.figures if policy is not None else None)
        if variants is None:  # the default path measured too: what the policy picks here
            parsed += [parse_variant(v, dev) for v in _missing_defaults(defaults, parsed)]
        runners, peaks, first_round = _warm_up(
            parsed, model, datasets, batch_size, resize, steps, dev, seed, say
        )
        rounds = _timed_rounds(runners, repeats, dev, say)
        results = _collect_results(runners, rounds, peaks, first_round, datasets, dev)
        train_flops, peaks_gflops = _measure_ceiling(
            model, datasets, resize, parsed, dev, results, say
        )
        machine["loadavg_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
        machine["process_peak_rss_mib"] = round(peak_rss_mib(), 1)

    ratios = _ratios(results)
    input_hw = resize or datasets.train.images.shape[-1]
    compute = _compute(train_flops, peaks_gflops, results)
    return {
        "config": {
            "model": model,
            "data": data,
            "batch_size": batch_size,
            "resize": resize,
            "input_px": input_hw,
            "steps": steps,
            "repeats": repeats,
            "device": str(dev),
            "threads": torch.get_num_threads() if threads is None else threads,
            "variants": [v.name for v in parsed],
            "seed": seed,
            "epoch_examples": {"train": len(datasets.train), "test": len(datasets.test)},
        },
        "machine": machine,
        "results": results,
        "ratios": ratios,
        "defaults": defaults,
        **({"defaults_probe": policy.describe()} if policy is not None else {}),
        "compute": compute,
        "notes": _notes(busy, steps, datasets),
    }
