"""`resnetlab bench`: resnetlab's training path against the textbook's, in one process and one run.

    from resnetlab.bench import bench, format_report
    result = bench(model="resnet18_d2l", batch_size=64, resize=96, steps=3, repeats=3)
    print(format_report(result))

Each *variant* is one way of running the same model at the same batch and resolution:
- `textbook`: the notebook's own code (`resnetlab.textbook_baseline`): eager fp32 NCHW, d2l's
  plain SGD step with a host read of the metrics every step, `no_grad` evaluation with the
  training-mode network's batch norms, the per-sample PIL pipeline;
- `fp32`, `bf16`: resnetlab's path: channels_last, the engine's `fit` (foreach SGD, metrics summed
  on the device), evaluation under `inference_mode` with batch norm folded into the convolutions
  (`fuse_bn`) at the trainer's evaluation batch, `resnetlab.data.Loader`, cuDNN autotuning on CUDA
  (`cudnn.benchmark`, as the trainer; the textbook runs without it); `bf16` adds bf16 autocast.
  Suffixes turn one trick off or on for ablations: `-nchw`, `-nofuse`, `-noforeach`, `-compile`.

For each variant, after one warm-up round (whose peak memory is recorded), `repeats` rounds
time, in turn for every variant (so a busy machine slows all of them alike): `steps` training
steps on ready batches, `steps` evaluation batches, `steps` loader batches, and an end-to-end
pass (loader + training steps, then loader + evaluation). The median round counts. The epoch
time is that end-to-end pass extrapolated to the dataset's full training and test splits.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import itertools
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch

from resnetlab.errors import UsageError

DEFAULT_VARIANTS = ("textbook", "fp32", "bf16")
# What each suffix of a variant name changes (see the module docstring).
MODIFIERS = {
    "nchw": {"channels_last": False},
    "nofuse": {"fuse": False},
    "noforeach": {"foreach": False},
    "compile": {"compile": True},
}
TEXTBOOK_LR = 0.05  # the chapter's learning rate; both paths take the same plain SGD step
MIB = 2**20


@dataclass(frozen=True)
class Variant:
    name: str
    textbook: bool = False
    amp: bool = False  # bf16 autocast
    channels_last: bool = True
    fuse: bool = True  # evaluate with fuse_bn
    foreach: bool = True  # multi-tensor optimizer step
    compile: bool = False  # torch.compile the training and the evaluation model


def parse_variant(name: str) -> Variant:
    """"textbook", or "fp32"/"bf16" followed by any of -nchw -nofuse -noforeach -compile."""
    if name == "textbook":
        return Variant(name, textbook=True, channels_last=False, fuse=False, foreach=False)
    head, *mods = name.split("-")
    if head not in ("fp32", "bf16"):
        raise UsageError(f"unknown bench variant {name!r}: use textbook, fp32 or bf16, optionally "
                         f"followed by {', '.join('-' + m for m in MODIFIERS)} (e.g. bf16-compile)")
    variant = Variant(name, amp=head == "bf16")
    for mod in mods:
        if mod not in MODIFIERS:
            raise UsageError(f"unknown suffix -{mod} in bench variant {name!r}; "
                             f"known: {', '.join('-' + m for m in MODIFIERS)}")
        variant = replace(variant, **MODIFIERS[mod])
    return variant


def preset_defaults(device: torch.device) -> dict[str, str]:
    """The variant each training preset runs by default on `device` (from PRESETS and bf16_pays)."""
    from resnetlab.train.presets import PRESETS
    from resnetlab.train.trainer import bf16_pays

    pays = bf16_pays(device)
    out = {}
    for name, preset in PRESETS.items():
        amp = preset.get("amp")
        out[name] = ("bf16" if (pays if amp is None else amp) else "fp32") + ("-compile" if preset.get("compile") else "")
    return out


# --- measuring ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall-clock seconds of a block, with the device drained at both ends, and the CPU seconds
    the process spent in it (all threads): on a shared machine the wall clock also counts the time
    other processes held the cores, the CPU time does not."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = self.cpu_seconds = 0.0

    def __enter__(self):
        _sync(self.device)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def _hwm_mib() -> float:
    """The process's peak resident set (VmHWM), or getrusage's maximum where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _PeakMemory:
    """Peak memory a block adds: CUDA max allocated, or the resident set above its start (Linux lets
    a process reset its own high-water mark: /proc/self/clear_refs, "5")."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / MIB
            return self
        try:  # hand freed heap back to the OS so the next block's growth shows in the RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.start = _rss_mib()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / MIB - self.start
        elif self.resettable:
            self.mib = _hwm_mib() - self.start
        # else: the high-water mark may predate the block; leave the figure out rather than guess


class _Batches:
    """The first `steps` batches of a loader (or list), with the loader interface `fit` uses."""

    def __init__(self, source, steps: int):
        self.source, self.steps = source, steps

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return itertools.islice(iter(self.source), self.steps)


def _count(batches) -> int:
    return sum(len(y) for _, y in batches)


def training_flops_per_example(model_name: str, in_chans: int, num_classes: int, input_px: int) -> float:
    """Convolution and linear FLOPs of one training step (forward and backward) per example, as
    torch.utils.flop_counter counts them, on the meta device: no memory, no time."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from resnetlab.models import create_model

    batch = 2  # batch norm in training mode needs more than one value per channel
    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes, in_chans=in_chans)
        x = torch.empty(batch, in_chans, input_px, input_px)
        y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of the fastest of `repeats` n x n x n matrix products in `dtype` at the current
    thread count: about the most a convolution network's arithmetic can reach on this device."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up: kernels chosen, memory touched
    best = float("inf")
    for _ in range(repeats):
        with _Clock(device) as c:
            a @ b
        best = min(best, c.seconds)
    return 2 * n**3 / best / 1e9


# --- the two ways of running ----------------------------------------------------------------------


class TextbookRunner:
    """The notebook's net and d2l's loop (resnetlab.textbook_baseline)."""

    def __init__(self, variant: Variant, model_name: str, data: dict, batch_size: int, resize: int | None,
                 steps: int, device: torch.device, seed: int):
        from resnetlab import textbook_baseline as tb
        from resnetlab.models import create_model

        self.tb, self.variant, self.device, self.steps = tb, variant, device, steps
        torch.manual_seed(seed)
        train, test = data["train"], data["test"]
        if model_name == "resnet18_d2l" and train.images.shape[1] == 1 and len(train.classes) == 10:
            net = tb.notebook_resnet18()
        else:
            net = create_model(model_name, num_classes=len(train.classes), in_chans=train.images.shape[1])
        net.apply(tb.init_weights)
        self.net = net.to(device)
        self.optimizer, self.loss = tb.make_optimizer(self.net, TEXTBOOK_LR)
        # d2l uses 4 workers. On a CPU they would compete with the training threads for the same
        # cores, so the pipeline runs in the main process there; on a GPU they run beside it.
        workers = 4 if device.type == "cuda" else 0
        self.train_loader = tb.pil_loader(train.images, train.labels, batch_size, shuffle=True, resize=resize, workers=workers)
        self.test_loader = tb.pil_loader(test.images, test.labels, batch_size, shuffle=False, resize=resize, workers=workers)
        self.eval_batch_size = batch_size
        self.train_batches = [(x.to(device), y.to(device)) for x, y in itertools.islice(self.train_loader, steps)]
        self.eval_batches = [(x.to(device), y.to(device)) for x, y in itertools.islice(self.test_loader, steps)]

    def train(self, batches) -> None:
        self.tb.train_batches(self.net, batches, self.optimizer, self.loss, self.device)

    def prepare_eval(self) -> None:
        pass  # the textbook evaluates the training network as it is

    def evaluate(self, batches) -> None:
        self.tb.evaluate_accuracy_gpu(self.net, batches, self.device)

    def load(self, steps: int) -> None:
        for x, y in itertools.islice(self.train_loader, steps):
            x, y = x.to(self.device), y.to(self.device)

    def train_from_loader(self, steps: int) -> None:
        self.train(itertools.islice(self.train_loader, steps))

    def evaluate_from_loader(self, steps: int) -> None:
        self.evaluate(itertools.islice(self.test_loader, steps))


class ResnetlabRunner:
    """resnetlab's path: the engine's fit and evaluate, fuse_bn, the batched Loader."""

    def __init__(self, variant: Variant, model_name: str, data: dict, batch_size: int, resize: int | None,
                 steps: int, device: torch.device, seed: int):
        from resnetlab.data import Loader
        from resnetlab.train import make_config
        from resnetlab.train.engine import make_optimizer
        from resnetlab.train.trainer import build_model

        self.variant, self.device, self.steps = variant, device, steps
        train, test = data["train"], data["test"]
        # The d2l preset's optimisation (plain SGD at the chapter's rate, Xavier init), so both paths
        # take the same step; only how it is computed differs.
        self.cfg = make_config("d2l", model=model_name, batch_size=batch_size, resize=resize, epochs=1, seed=seed,
                               lr=TEXTBOOK_LR, amp=variant.amp, channels_last=variant.channels_last,
                               compile=variant.compile)
        model = build_model(self.cfg, train.images.shape[1], len(train.classes)).to(device)
        if variant.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = make_optimizer(model, self.cfg)
        for group in self.optimizer.param_groups:
            group["foreach"] = variant.foreach
        self.train_model = torch.compile(model) if variant.compile else model
        self.eval_model = None
        self.eval_batch_size = max(batch_size, 256)  # the trainer's evaluation batch
        loader_args = dict(resize=resize, device=device, channels_last=variant.channels_last, seed=seed)
        self.train_loader = Loader(train, batch_size, shuffle=True, **loader_args)
        self.test_loader = Loader(test, self.eval_batch_size, shuffle=False, **loader_args)
        self.train_batches = list(itertools.islice(self.train_loader, steps))
        self.eval_batches = list(itertools.islice(self.test_loader, steps))

    def train(self, batches) -> None:
        from resnetlab.train.engine import TrainState, fit

        fit(self.train_model, _Batches(batches, len(batches)), self.cfg, self.device, optimizer=self.optimizer,
            state=TrainState(), amp=self.variant.amp)

    def prepare_eval(self) -> None:
        """What an evaluation costs once, before its first batch: folding (and compiling)."""
        from resnetlab.models.fuse import fuse_bn

        model = fuse_bn(self.model) if self.variant.fuse else self.model
        self.eval_model = torch.compile(model) if self.variant.compile else model

    def evaluate(self, batches) -> None:
        from resnetlab.train.engine import evaluate

        evaluate(self.eval_model, batches, self.device, amp=self.variant.amp)

    def load(self, steps: int) -> None:
        for _ in itertools.islice(self.train_loader, steps):
            pass

    def train_from_loader(self, steps: int) -> None:
        from resnetlab.train.engine import TrainState, fit

        fit(self.train_model, _Batches(self.train_loader, steps), self.cfg, self.device, optimizer=self.optimizer,
            state=TrainState(), amp=self.variant.amp)

    def evaluate_from_loader(self, steps: int) -> None:
        self.evaluate(_Batches(self.test_loader, steps))


def _round(runner, device: torch.device) -> dict:
    """One timed round of everything a variant does: wall and CPU seconds of each part."""
    steps = runner.steps
    # resnetlab lets cuDNN pick its fastest algorithms, as the trainer does; the textbook does not.
    torch.backends.cudnn.benchmark = not runner.variant.textbook
    parts = {
        "train": lambda: runner.train(runner.train_batches),
        "eval_setup": runner.prepare_eval,
        "eval": lambda: runner.evaluate(runner.eval_batches),
        "loader": lambda: runner.load(steps),
        # End to end: batches straight from the loaders, as an epoch sees them.
        "e2e_train": lambda: runner.train_from_loader(steps),
        "e2e_eval": lambda: (runner.prepare_eval(), runner.evaluate_from_loader(steps)),
    }
    out = {}
    for name, part in parts.items():
        with _Clock(device) as c:
            part()
        out[f"{name}_s"], out[f"{name}_cpu_s"] = c.seconds, c.cpu_seconds
    return out


def _figures(med: dict, clock: str, n_train: int, n_eval: int, n_loader: int, num_train: int, num_test: int) -> dict:
    """Throughputs and the extrapolated epoch from median seconds; clock is "" (wall) or "_cpu"."""
    t = {k: med[f"{k}{clock}_s"] for k in ("train", "eval_setup", "eval", "loader", "e2e_train", "e2e_eval")}
    # The end-to-end evaluation includes one eval_setup (folding) per evaluation: counted once.
    e2e_eval_rate = n_eval / max(t["e2e_eval"] - t["eval_setup"], 1e-9)
    epoch_train, epoch_eval = num_train * t["e2e_train"] / n_train, t["eval_setup"] + num_test / e2e_eval_rate
    return {f"train_ex{clock}_s": n_train / t["train"], f"eval_ex{clock}_s": n_eval / t["eval"],
            f"loader_ex{clock}_s": n_loader / t["loader"], f"epoch{clock}_s": epoch_train + epoch_eval,
            f"epoch_train{clock}_s": epoch_train, f"epoch_eval{clock}_s": epoch_eval}


def _summarize(rounds: list[dict], runner, num_train: int, num_test: int, device: torch.device) -> dict:
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    n_train = _count(runner.train_batches)  # also what the loader and the end-to-end pass yield: full batches
    counts = (n_train, _count(runner.eval_batches), n_train)
    res = _figures(med, "", *counts, num_train, num_test)
    # CPU-seconds mean nothing for a GPU's work, which runs beside the host thread.
    res.update(_figures(med, "_cpu", *counts, num_train, num_test) if device.type == "cpu" else {})
    res.update(eval_setup_s=med["eval_setup_s"], rounds=rounds)
    return res


def _machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


MAX_THREADS = 4096


def bench(model: str = "resnet18_d2l", batch_size: int = 256, resize: int | None = None, steps: int = 3,
          repeats: int = 3, device: str = "auto", variants: tuple[str, ...] | None = None,
          threads: int | None = None, data: str = "fashion-mnist", data_dir: str | None = None,
          seed: int = 0, progress=None) -> dict:
    """Measure `variants` (default: textbook, fp32, and bf16 where it pays) and return one dict:
    config, machine, per-variant figures, ratios to the textbook, and each preset's default variant."""
    from resnetlab.data import load_dataset
    from resnetlab.models import get_model_info
    from resnetlab.train.trainer import bf16_pays, resolve_device

    for name, value in (("--batch-size", batch_size), ("--steps", steps), ("--repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive whole number, got {value!r}")
    if resize is not None and (not isinstance(resize, int) or resize < 8):
        raise UsageError(f"--resize must be at least 8 pixels, got {resize!r}")
    if resize is not None and resize > 4096:  # beyond, the resize overflows or takes terabytes
        raise UsageError(f"--resize must be at most 4096 pixels, got {resize}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be positive, got {threads}")
    if threads is not None and threads > MAX_THREADS:  # torch.set_num_threads overflows on huge numbers
        raise UsageError(f"--threads must be at most {MAX_THREADS}, got {threads}")
    get_model_info(model)  # an unknown name fails here, with the registry's message
    dev = resolve_device(device)
    if variants is None:
        variants = tuple(v for v in DEFAULT_VARIANTS if v != "bf16" or bf16_pays(dev))
    parsed = [parse_variant(v) for v in variants]
    if len({v.name for v in parsed}) != len(parsed):
        raise UsageError(f"each variant once, please: {', '.join(variants)}")
    say = progress or (lambda text: None)

    previous_threads, previous_cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        datasets = {"train": load_dataset(data, train=True, root=data_dir),
                    "test": load_dataset(data, train=False, root=data_dir)}
        for split, ds in datasets.items():
            if steps * batch_size > len(ds):
                raise UsageError(f"--steps {steps} x --batch-size {batch_size} needs more than the "
                                 f"{len(ds)} {split} examples; lower one of them")
        load_start = os.getloadavg()[0]
        busy = None
        if dev.type == "cpu" and torch.get_num_threads() > 1 and load_start >= (os.cpu_count() or 1):
            # Measured on the shared 2-core machine: with other processes running, two threads ran
            # 10-90x slower than one (each parallel region waits for a descheduled partner thread).
            busy = (f"the machine is busy (load average {load_start:.1f} on {os.cpu_count()} CPUs): with "
                    f"{torch.get_num_threads()} threads the figures will be slow and noisy; --threads 1 is steadier")
            say(f"warning: {busy}")
        machine = _machine(dev)
        runners, peaks, first_round = {}, {}, {}
        for v in parsed:
            say(f"warming up {v.name}")
            runner_cls = TextbookRunner if v.textbook else ResnetlabRunner
            with _PeakMemory(dev) as peak:
                runner = runner_cls(v, model, datasets, batch_size, resize, steps, dev, seed)
                with _Clock(dev) as c:
                    first_round[v.name] = _round(runner, dev)
            runners[v.name], peaks[v.name] = runner, peak.mib
            first_round[v.name]["total_s"] = c.seconds
        rounds = {name: [] for name in runners}
        order = list(runners)
        for r in range(repeats):
            for name in order[r % len(order):] + order[:r % len(order)]:  # each round starts elsewhere
                say(f"round {r + 1}/{repeats}: {name}")
                rounds[name].append(_round(runners[name], dev))
        results = {}
        for name, runner in runners.items():
            res = _summarize(rounds[name], runner, len(datasets["train"]), len(datasets["test"]), dev)
            res["peak_mib"] = peaks[name]
            res["warmup_train_s"] = first_round[name]["train_s"]  # includes compiling, for -compile
            res["warmup_eval_setup_s"] = first_round[name]["eval_setup_s"]
            res["settings"] = {k: val for k, val in asdict(runner.variant).items() if k != "name"}
            res["settings"]["eval_batch_size"] = runner.eval_batch_size
            results[name] = res
        # The ceiling: how fast this device multiplies matrices in each precision the variants use,
        # against the arithmetic a training step needs. No path that keeps the model's FLOPs can
        # train faster than the best peak allows.
        say("measuring matmul peaks")
        train_flops = training_flops_per_example(model, datasets["train"].images.shape[1],
                                                 len(datasets["train"].classes),
                                                 resize or datasets["train"].images.shape[-1])
        precisions = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if any(v.amp for v in parsed) else {})}
        peaks_gflops = {name: matmul_peak_gflops(dtype, dev) for name, dtype in precisions.items()}
        for res in results.values():
            res["train_gflop_s"] = train_flops * res["train_ex_s"] / 1e9
        machine["loadavg_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
        machine["process_peak_rss_mib"] = round(_hwm_mib(), 1)
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_cudnn_benchmark

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
                    ratios[name][figure + clock] = res[f"{figure}_ex{clock}_s"] / base[f"{figure}_ex{clock}_s"]
                ratios[name]["epoch" + clock] = base[f"epoch{clock}_s"] / res[f"epoch{clock}_s"]  # a speed-up
            ratios[name]["memory"] = (res["peak_mib"] / base["peak_mib"]
                                      if res["peak_mib"] and base["peak_mib"] else None)  # below 1 is leaner
    input_hw = resize or datasets["train"].images.shape[-1]
    compute = {"train_gflop_per_example": train_flops / 1e9, "matmul_peak_gflop_s": peaks_gflops}
    if "textbook" in results:
        # The training speed-up a path with the textbook's FLOPs could reach at the best peak.
        compute["train_ceiling"] = max(peaks_gflops.values()) / results["textbook"]["train_gflop_s"]
    return {
        "config": {"model": model, "data": data, "batch_size": batch_size, "resize": resize, "input_px": input_hw,
                   "steps": steps, "repeats": repeats, "device": str(dev), "threads": torch.get_num_threads() if threads is None else threads,
                   "variants": [v.name for v in parsed], "seed": seed,
                   "epoch_examples": {"train": len(datasets["train"]), "test": len(datasets["test"])}},
        "machine": machine,
        "results": results,
        "ratios": ratios,
        "defaults": preset_defaults(dev),
        "compute": compute,
        "notes": {
            **({"busy": busy} if busy else {}),
            "figures": "median of the timed rounds after one warm-up round; each round runs every variant in turn, "
                       "starting with a different one each round",
            "per_cpu_second": "*_cpu_s figures (CPU only): the same from the CPU-seconds of this process (all "
                              "threads) instead of the wall clock; steadier when other processes share the cores",
            "epoch_s": f"loader + training over {steps} batches and loader + evaluation over {steps} batches, "
                       f"extrapolated to {len(datasets['train'])} training and {len(datasets['test'])} test examples "
                       f"(plus one eval_setup_s: batch-norm folding, and compiling for -compile variants)",
            "peak_mib": "memory the variant's warm-up round added (resident set on a CPU, max allocated on CUDA)",
            "compute": "train_gflop_per_example: convolution and linear FLOPs of a training step (forward and "
                       "backward) per example, from torch.utils.flop_counter; matmul_peak_gflop_s: the fastest of "
                       "3 square 2048 products per precision, same device and threads; train_gflop_s (per "
                       "variant): the two multiplied; train_ceiling: the best peak / the textbook's rate, the most "
                       "any path with the textbook's FLOPs could speed up its training here",
            "textbook": "the textbook loop reads its metrics on the host every step, as d2l's train_ch6 does; "
                        "its plot is left out",
        },
    }


# --- the report ---------------------------------------------------------------------------------

FIGURES = (  # (label, result key, ratio key or None, format); the CPU-second rows exist on a CPU only
    ("training ex/s", "train_ex_s", "train", "{:.1f}"),
    ("training ex/CPU-s", "train_ex_cpu_s", "train_cpu", "{:.1f}"),
    ("training GFLOP/s", "train_gflop_s", None, "{:.0f}"),
    ("evaluation ex/s", "eval_ex_s", "eval", "{:.1f}"),
    ("evaluation ex/CPU-s", "eval_ex_cpu_s", "eval_cpu", "{:.1f}"),
    ("loader ex/s", "loader_ex_s", "loader", "{:,.0f}"),
    ("loader ex/CPU-s", "loader_ex_cpu_s", "loader_cpu", "{:,.0f}"),
    ("epoch s (est.)", "epoch_s", "epoch", "{:,.0f}"),
    ("epoch CPU-s (est.)", "epoch_cpu_s", "epoch_cpu", "{:,.0f}"),
    ("peak MiB (added)", "peak_mib", "memory", "{:,.0f}"),
)


def compute_summary(result: dict) -> str:
    """One sentence: the arithmetic of a training step, the matmul peaks and the ceiling they set."""
    compute = result["compute"]
    peaks = ", ".join(f"{name} {value:.0f}" for name, value in compute["matmul_peak_gflop_s"].items())
    text = (f"a training step is {compute['train_gflop_per_example']:.3f} GFLOP per example (convolutions and "
            f"linear layers, forward and backward); this device's matmul peak: {peaks} GFLOP/s")
    if "train_ceiling" in compute:
        text += (f"; at that peak, a path with the textbook's FLOPs trains at most "
                 f"{compute['train_ceiling']:.2f}x the textbook here")
    return text


def format_report(result: dict) -> str:
    cfg, machine, results, ratios = result["config"], result["machine"], result["results"], result["ratios"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['logical_cpus']} CPUs, {cfg['threads']} threads"
    lines = [
        f"resnetlab bench: {cfg['model']} on {cfg['data']}, batch {cfg['batch_size']}, {cfg['input_px']} px, "
        f"{cfg['device']} ({where}), torch {machine['torch']}, {machine['date']}",
        f"median of {cfg['repeats']} rounds of {cfg['steps']} steps after a warm-up; load average "
        f"{machine['loadavg_1min'][0]} -> {machine['loadavg_1min'][1]}",
    ]
    width = max(18, *(len(n) + 9 for n in results))
    lines.append(f"{'':20}" + "".join(f"{name:>{width}}" for name in results))
    for label, key, ratio_key, fmt in FIGURES:
        if key not in next(iter(results.values())):
            continue
        cells = []
        for name, res in results.items():
            value = res[key]
            text = "n/a" if value is None else fmt.format(value)
            ratio = ratios.get(name, {}).get(ratio_key)
            if ratio is not None:
                text += f" ({ratio:.2f}x)"
            cells.append(f"{text:>{width}}")
        lines.append(f"{label:20}" + "".join(cells))
    lines.append("ratios are resnetlab / textbook (epoch: textbook time / resnetlab time; memory: below 1 is leaner)")
    lines.append(f"compute: {compute_summary(result)}")
    lines.append(f"epoch: {result['notes']['epoch_s']}")
    if "busy" in result["notes"]:
        lines.append(f"warning: {result['notes']['busy']}")
    defaults = ", ".join(f"{preset}: {variant}" for preset, variant in result["defaults"].items())
    lines.append(f"resnetlab's default per preset on this device: {defaults}")
    return "\n".join(lines)
