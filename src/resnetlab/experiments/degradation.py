"""The degradation experiment (He et al. 2016, "Deep Residual Learning", figures 1 and 6).

Before ResNets, a deeper plain network (conv-BN-ReLU stacked, no shortcuts) trained to a
*higher training error* than a shallower one: not overfitting, an optimisation failure. With
identity shortcuts the deeper net trains at least as well. This module trains `plain{d}` and
`resnet{d}` at two depths with one identical recipe through the training engine (each net gets an
ordinary run folder) and writes, under the experiment folder:

    <net>/                 the run folder of each net (config.json, metrics.csv, weights, ...)
    degradation.csv        net, depth, residual, epoch, train_err, test_err
    degradation.png        training and test error per epoch: plain dashed, residual solid
    gradients.csv/.png     per-layer gradient norm at initialisation of the two deep nets
    degradation.json       the settings, the final errors and whether the effect showed

    from resnetlab.experiments.degradation import run_degradation
    result = run_degradation("runs/degradation")   # the defaults below, ~10 min on a 2-core CPU
"""

from __future__ import annotations

import inspect
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from resnetlab.errors import UsageError, plural
from resnetlab.experiments.defaults import DEGRADATION_DEFAULTS
from resnetlab.fileio import write_csv, write_json
from resnetlab.models import get_model_info, list_models
from resnetlab.report.plots import have_matplotlib, plot_degradation, plot_gradients
from resnetlab.rundir import CHECKPOINT_FILE, SUMMARY_FILE, is_run, read_config, read_metrics
from resnetlab.train import make_config, train
from resnetlab.train.presets import PRESETS
from resnetlab.train.setup import build

PRESET = "degradation"  # the recipe of every net (train/presets.py)
# Fewer epochs or examples than these train too little for the verdict to mean much (the defaults
# were chosen at 8 epochs on 8,000 examples; docs/degradation.md)
CONCLUSIVE_EPOCHS, CONCLUSIVE_SUBSET = (
    DEGRADATION_DEFAULTS["epochs"],
    DEGRADATION_DEFAULTS["subset"],
)


@dataclass(frozen=True)
class Net:
    """One of the four nets: plain or residual, at one depth."""

    depth: int
    residual: bool

    @property
    def name(self) -> str:
        return f"{'resnet' if self.residual else 'plain'}{self.depth}"


def registered_depths() -> list[int]:
    """Depths with both a `plain{d}` and a `resnet{d}` in the model registry that take a `width`
    (the CIFAR-style nets; plain18/34 are ImageNet-style and have no single width)."""

    def depths(prefix: str) -> set[str]:
        return {
            name[len(prefix) :]
            for name in list_models(prefix + "*")
            if "width" in inspect.signature(get_model_info(name).builder).parameters
        }

    return sorted(int(d) for d in depths("plain") & depths("resnet") if d.isdigit())


def check_depths(depths) -> tuple[int, int]:
    """Two different registered depths, shallow first."""
    depths = tuple(depths)
    available = registered_depths()
    if len(depths) != 2 or depths[0] == depths[1]:
        raise UsageError(
            f"--depths takes two different depths (got {' '.join(map(str, depths))}); "
            f"choose two of {', '.join(map(str, available))}"
        )
    for depth in depths:
        if depth not in available:
            raise UsageError(
                f"--depths {depth}: the model registry has no plain{depth}/resnet{depth} pair; "
                f"choose two of {', '.join(map(str, available))}"
            )
    return tuple(sorted(depths))


def degradation_config(
    net: Net,
    *,
    data: str,
    epochs: int,
    width: int,
    subset: int | None,
    seed: int,
    lr: float,
    device: str = "auto",
    data_dir: str | None = None,
):
    """The TrainConfig of one net: the shared recipe plus the net's name."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UsageError(f"--width must be a positive integer, got {width!r}")
    if (
        width > 4096
    ):  # 4096 channels make a CIFAR net of billions of weights; beyond, torch overflows
        raise UsageError(f"--width must be at most 4096, got {width}")
    return make_config(
        PRESET,
        model=net.name,
        model_kwargs={"width": width},
        data=data,
        data_dir=data_dir,
        epochs=epochs,
        subset=subset,
        seed=seed,
        lr=lr,
        device=device,
    )


def gradient_norms_at_init(cfg) -> list[tuple[str, float]]:
    """(layer name, gradient norm of its weight) for every conv and linear layer, input to output,
    after one backward pass at initialisation: the same initial weights and the same first
    training batch as `train(cfg)` starts from, in fp32 with BN in training mode."""
    parts = build(cfg)
    loader = parts.loaders.train
    loader.set_epoch(0)
    x, y = next(iter(loader))
    model = parts.raw_model
    model.train()
    F.cross_entropy(model(x), y).backward()
    return [
        (name, module.weight.grad.norm().item())
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def _without_preset(settings: dict | None) -> dict | None:
    """A run's settings less its preset's name (nets made before they were named "degradation"
    were named "quick", with the same settings)."""
    return None if settings is None else {k: v for k, v in settings.items() if k != "preset"}


def _train_net(
    cfg, run_dir: Path, *, overwrite: bool, verbose: bool, json_output: bool, say
) -> str:
    """Train one net into `run_dir`: reuse a finished run of the same settings, continue an
    interrupted one, refuse to mix with a run of other settings. Returns what it did."""
    if is_run(run_dir) and not overwrite:
        saved = read_config(run_dir).get("config")
        if (
            saved is not None
        ):  # settings added since the run was made take their defaults (as --resume does)
            saved = {**type(cfg)().to_dict(), **saved}
        if _without_preset(saved) != _without_preset(cfg.to_dict()):
            raise UsageError(
                f"{run_dir} holds a {cfg.model} run with other settings; "
                f"pass --overwrite to replace it or choose another --out"
            )
        if (run_dir / SUMMARY_FILE).exists():
            say(f"{cfg.model}: reusing the finished run in {run_dir}")
            return "reused"
        if (run_dir / CHECKPOINT_FILE).exists():
            train(resume=run_dir, json_output=json_output, verbose=verbose)
            return "resumed"
    train(cfg, out=run_dir, overwrite=overwrite, json_output=json_output, verbose=verbose)
    return "trained"


def _announce(nets: list[Net], out: Path, plots: bool, say, settings: dict) -> None:
    """Say which nets train on what, and that the figures are skipped without matplotlib."""
    say(
        f"degradation experiment: {', '.join(n.name for n in nets)} (width {settings['width']}) "
        f"on {settings['data']}, {settings['subset'] or 'all'} training examples, "
        f"{settings['epochs']} {plural(settings['epochs'], 'epoch')}, lr {settings['lr']}, seed {settings['seed']}; folder {out}"
    )
    if not plots:
        say(
            "matplotlib is not installed: degradation.png and gradients.png are skipped (pip install 'resnetlab[plot]')"
        )


def _error_rows(net: Net, history: list[dict]) -> list[dict]:
    """One degradation.csv row per epoch of `net`: its training and test error."""
    return [
        {
            "net": net.name,
            "depth": net.depth,
            "residual": net.residual,
            "epoch": r["epoch"],
            "train_err": 1.0 - r["train_acc"],
            "test_err": 1.0 - r["test_acc"],
        }
        for r in history
    ]


def _final_row(net: Net, history: list[dict], run_dir: Path, action: str) -> dict:
    """The final errors, total seconds, run folder and action of one trained net."""
    return {
        "net": net.name,
        "depth": net.depth,
        "residual": net.residual,
        "train_err": 1.0 - history[-1]["train_acc"],
        "test_err": 1.0 - history[-1]["test_acc"],
        "seconds": sum(r["epoch_seconds"] for r in history),
        "run_dir": str(run_dir),
        "action": action,
    }


def _train_nets(
    nets: list[Net],
    configs: dict,
    out: Path,
    *,
    overwrite: bool,
    verbose: bool,
    json_output: bool,
    say,
) -> tuple[list[dict], list[dict]]:
    """Train (or reuse) each net in turn; return the per-epoch error rows and the final rows."""
    rows, finals = [], []
    for net in nets:
        run_dir = out / net.name
        action = _train_net(
            configs[net],
            run_dir,
            overwrite=overwrite,
            verbose=verbose,
            json_output=json_output,
            say=say,
        )
        history = read_metrics(run_dir)
        rows.extend(_error_rows(net, history))
        finals.append(_final_row(net, history, run_dir, action))
    return rows, finals


def _write_gradients(nets: list[Net], configs: dict, deep: int, out: Path, say) -> dict:
    """Measure the deep nets' per-layer gradient norms at initialisation; write gradients.csv."""
    say(
        f"measuring the deep nets' gradient norms at initialisation (one batch): {out / 'gradients.csv'}"
    )
    gradients = {
        net.name: gradient_norms_at_init(configs[net]) for net in nets if net.depth == deep
    }
    write_csv(
        out / "gradients.csv",
        [
            {"net": name, "layer": i + 1, "name": layer, "grad_norm": norm}
            for name, norms in gradients.items()
            for i, (layer, norm) in enumerate(norms)
        ],
        ["net", "layer", "name", "grad_norm"],
    )
    return gradients


def _result(out: Path, depths: list[int], settings: dict, finals: list[dict]) -> dict:
    """The experiment's settings, each net's final row and the verdict, for degradation.json."""
    shallow, deep = depths
    return {
        "out": str(out),
        "data": settings["data"],
        "depths": depths,
        "epochs": settings["epochs"],
        "width": settings["width"],
        "subset": settings["subset"],
        "seed": settings["seed"],
        "lr": settings["lr"],
        "recipe": {"preset": PRESET, **PRESETS[PRESET]},  # the rest: TrainConfig's defaults
        "nets": finals,
        # the paper's two claims, on the final epoch's training error
        **_verdict(finals, shallow, deep),
    }


def _verdict(finals: list[dict], shallow: int, deep: int) -> dict:
    """Whether the paper's two claims held, on the final epoch's training error."""
    by_name = {f["net"]: f for f in finals}
    return {
        "plain_degrades": by_name[f"plain{deep}"]["train_err"]
        > by_name[f"plain{shallow}"]["train_err"],
        "residual_no_worse": by_name[f"resnet{deep}"]["train_err"]
        <= by_name[f"resnet{shallow}"]["train_err"],
    }


def _write_figures(
    rows: list[dict], gradients: dict, out: Path, *, data: str, width: int, subset, seed: int
) -> None:
    """Draw degradation.png and gradients.png."""
    title = f"{data}, width {width}, {subset or 'all'} examples, seed {seed}"
    plot_degradation(rows, out / "degradation.png", title=title)
    plot_gradients(
        gradients,
        out / "gradients.png",
        title=f"at initialisation, one batch of {PRESETS[PRESET]['batch_size']}",
    )


def run_degradation(
    out: str | Path,
    *,
    data: str = DEGRADATION_DEFAULTS["data"],
    depths=DEGRADATION_DEFAULTS["depths"],
    epochs: int = DEGRADATION_DEFAULTS["epochs"],
    width: int = DEGRADATION_DEFAULTS["width"],
    subset: int | None = DEGRADATION_DEFAULTS["subset"],
    seed: int = DEGRADATION_DEFAULTS["seed"],
    lr: float = DEGRADATION_DEFAULTS["lr"],
    device: str = "auto",
    data_dir: str | None = None,
    overwrite: bool = False,
    verbose: bool = True,
    json_output: bool = False,
) -> dict:
    """Train the four nets, write the combined CSV, figures and degradation.json; return the result.

    A net's training error is the engine's: the running error over each epoch's batches (BN in
    training mode), as in the paper's curves; its test error is measured after the epoch.

    `subset=None` trains on the whole training set (and tests on the whole test set). Progress goes
    to stdout, or to stderr with `json_output=True`; `verbose=False` silences it.
    """
    started = time.perf_counter()
    out = Path(out)
    stream = sys.stderr if json_output else sys.stdout

    def say(text: str) -> None:
        if verbose:
            print(text, file=stream, flush=True)

    if subset is not None and subset <= 0:
        raise UsageError(f"--subset must be positive (or 0 for the whole set), got {subset}")
    shallow, deep = check_depths(depths)
    nets = [Net(depth, residual) for depth in (shallow, deep) for residual in (False, True)]
    settings = dict(data=data, epochs=epochs, width=width, subset=subset, seed=seed, lr=lr)
    configs = {
        net: degradation_config(net, **settings, device=device, data_dir=data_dir) for net in nets
    }
    plots = have_matplotlib()
    _announce(nets, out, plots, say, settings)

    rows, finals = _train_nets(
        nets, configs, out, overwrite=overwrite, verbose=verbose, json_output=json_output, say=say
    )
    write_csv(
        out / "degradation.csv",
        rows,
        ["net", "depth", "residual", "epoch", "train_err", "test_err"],
    )

    gradients = _write_gradients(nets, configs, deep, out, say)

    result = _result(out, [shallow, deep], settings, finals)
    if plots:
        _write_figures(rows, gradients, out, data=data, width=width, subset=subset, seed=seed)
    result["total_seconds"] = time.perf_counter() - started
    write_json(out / "degradation.json", result)
    return result


def format_table(result: dict) -> str:
    """The final errors of each net and the verdict, as printed by the CLI."""
    lines = [
        "final errors (training: over the last epoch's batches; test: after it)",
        f"{'net':<10} {'depth':>5}  {'train err':>9}  {'test err':>8}  {'seconds':>7}",
    ]
    for f in result["nets"]:
        lines.append(
            f"{f['net']:<10} {f['depth']:>5}  {f['train_err']:>9.4f}  {f['test_err']:>8.4f}  {f['seconds']:>7.0f}"
        )
    shallow, deep = result["depths"]
    lines.append(
        f"plain: {deep} layers train {'WORSE' if result['plain_degrades'] else 'no worse'} than {shallow}"
        f" (degradation {'shown' if result['plain_degrades'] else 'NOT shown'}); "
        f"residual: {deep} layers train {'no worse' if result['residual_no_worse'] else 'WORSE'} than {shallow}"
    )
    caveat = too_short(result)
    if caveat:
        lines.append(caveat)
    return "\n".join(lines)


def too_short(result: dict) -> str | None:
    """A caveat line when the experiment trained too little to conclude, else None."""
    subset, epochs = result.get("subset"), result["epochs"]
    if epochs >= CONCLUSIVE_EPOCHS and (subset is None or subset >= CONCLUSIVE_SUBSET):
        return None
    examples = "all" if subset is None else f"{subset:,}"
    return (
        f"caveat: {epochs} {plural(epochs, 'epoch')} on {examples} examples is too short to "
        f"conclude; run the defaults ({CONCLUSIVE_EPOCHS} epochs on {CONCLUSIVE_SUBSET:,} "
        "examples, or more)"
    )
