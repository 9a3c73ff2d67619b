"""The `resnetlab` command: argument parsing and one-line errors, nothing else.

Each sub-command is a pair: `_add_<name>(subparsers)` declares its flags and `_cmd_<name>(args)`
calls the package function that does the work. A `ResnetlabError` becomes one line on stderr
and its exit status (2 for bad usage, 1 for a failed run); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from resnetlab.errors import Interrupted, ResnetlabError, UsageError, plural
from resnetlab.version import __version__


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _output(args, result, text) -> None:
    """A command's result on stdout: `result` as JSON with --json, else `text()`'s lines (a
    function, so nothing is formatted for --json)."""
    if args.json:
        _print_json(result)
    else:
        print(text())


COMMANDS = []  # each section appends its `_add_<name>`, in the order --help shows them


# --- sub-commands -------------------------------------------------------------------------
# (each section below belongs to one feature; keep them independent)


# --- models: summary / models -------------------------------------------------------------


def _add_summary(sub) -> None:
    p = sub.add_parser(
        "summary",
        help="layers, parameters, FLOPs and activation memory of a model",
        description="Print a model's layers (name, type, output shape, parameters, "
        "MACs) and its totals. Runs on the meta device: instant, no memory.",
    )
    p.add_argument("model", metavar="MODEL", help="a registered name (see `resnetlab models`)")
    p.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        metavar=("C", "H", "W"),
        help="input channels, height, width (default: the model's own); "
        "the model is built for C channels",
    )
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument(
        "--depth",
        type=int,
        default=2,
        help="levels of sub-modules to list (default 2; 0: totals only)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args) -> int:
    from resnetlab.models import summarize

    summary = summarize(
        args.model, input_size=args.input_size, batch_size=args.batch_size, depth=args.depth
    )
    _output(args, summary.to_dict(), lambda: summary.render())
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered models with their size and cost",
        description="List registered models: parameters, GFLOPs at the default "
        "input size, default input size and classes, paper.",
    )
    p.add_argument(
        "pattern",
        nargs="?",
        default="*",
        metavar="PATTERN",
        help="shell-style filter, e.g. 'resnet*' or '*resnext*' (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    import dataclasses

    from resnetlab.models import describe_models, render_model_table

    listings = describe_models(args.pattern)
    if not listings:
        raise UsageError(f"no model matches {args.pattern!r}; run `resnetlab models` to see all")
    _output(args, [dataclasses.asdict(m) for m in listings], lambda: render_model_table(listings))
    return 0


COMMANDS += [_add_summary, _add_models]


# --- train / eval / predict ---------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: the quick preset on Fashion-MNIST)",
        description="Train a model. A preset (or --config) fills every setting; flags override it. "
        "--show-config prints the resolved settings without training.",
    )
    _add_config_flags(p)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="start from a saved configuration (a run's config.json) "
        "instead of a preset; flags override it",
    )
    p.add_argument("--out", help="run folder (default: runs/<date-time>-<preset>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR after its last checkpoint"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (progress goes to stderr)",
    )
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved configuration (the preset or --config, with the flags given) "
        "as JSON and exit without training, e.g. `resnetlab train --preset quick --show-config`",
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N processes on this machine (starts torchrun; README: Distributed training)",
    )
    p.set_defaults(func=_cmd_train)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"not JSON ({e}): write it as '{{\"width\": 32}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is wanted, got {text!r}")
    return value


UNSET = object()  # `--subset none` and the like: the setting set to None, not left as it was


def _none_or(kind):
    """argparse's type for a setting that may be None: the word none (or null) unsets it."""

    def parse(text: str):
        return UNSET if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _add_config_flags(parser) -> None:
    """One flag per TrainConfig field, from its type and help text; None (not given) leaves the
    preset's value; the word none sets an optional one to None (e.g. a saved --config's subset)."""
    import dataclasses

    from resnetlab.train.config import TrainConfig, field_types, flag_name

    group = parser.add_argument_group(
        "settings (each a field of the run's TrainConfig; default: the preset's)"
    )
    for f, kinds in zip(dataclasses.fields(TrainConfig), field_types().values()):
        flag, meta = "--" + flag_name(f.name), dict(f.metadata)
        if bool in kinds:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=meta["help"]
            )
            continue
        kind = _json_object if dict in kinds else next(k for k in kinds if k is not type(None))
        optional = type(None) in kinds and not meta["choices"]
        group.add_argument(
            flag,
            type=_none_or(kind) if optional else kind,
            choices=meta["choices"],
            default=None,
            help=meta["help"] + (" (none: unset)" if optional else ""),
            metavar=None if meta["choices"] else f.name.upper(),
        )


def _without_nproc(argv: list[str]) -> list[str]:
    """The train flags as the user typed them, less `--nproc N` (or `--nproc=N`, or an
    abbreviation argparse accepted): the command line `--nproc` hands to torchrun."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if len(name) >= 4 and "--nproc".startswith(name):  # "--np" is already unique
            skip = "=" not in token
            continue
        out.append(token)
    return out


def _cmd_train(args) -> int:
    import dataclasses

    from resnetlab.distributed.group import error_to_report, process_rank
    from resnetlab.distributed.launch import launch_local
    from resnetlab.train import TrainConfig, make_config, train
    from resnetlab.train.config import read_config_file
    from resnetlab.train.timing import Timekeeper
    from resnetlab.train.trainer import refuse_with_resume

    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "preset"]
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    unset = dict.fromkeys(k for k, v in overrides.items() if v is UNSET)

    def configuration() -> TrainConfig:
        base = read_config_file(args.config) if args.config else None
        if base is not None and "time_limit" in unset:  # --time-limit none: the saved one is gone
            base = dict(base, time_limit=None)
        given = {k: v for k, v in overrides.items() if k not in unset}
        return dataclasses.replace(make_config(args.preset, base=base, **given), **unset)

    if args.show_config:
        if args.resume:
            raise UsageError(
                "--show-config shows a new run's settings; a run's own are in RUN/config.json"
            )
        _print_json(configuration().to_dict())
        return 0
    if args.nproc is not None and args.nproc != 1:
        # what can be refused before torchrun starts: the resolved settings' batch size
        batch = None
        if not args.resume:
            batch = configuration().batch_size
        # the processes torchrun starts count --time-limit from this command's start
        os.environ[STARTED_ENV] = str(time.time() - _seconds_since_start(args))
        try:
            return launch_local(args.nproc, _without_nproc(args.argv[1:]), batch_size=batch)
        finally:
            del os.environ[STARTED_ENV]
    try:
        if args.resume:
            given = [
                k for k in (*overrides, "preset", "config", "out") if getattr(args, k) is not None
            ]
            refuse_with_resume(["--" + k.replace("_", "-") for k in given])
            summary = train(
                resume=args.resume,
                json_output=args.json,
                timekeeper=Timekeeper(startup=_seconds_since_start(args)),
            )
        else:
            summary = train(
                configuration(),
                out=args.out,
                overwrite=args.overwrite,
                json_output=args.json,
                timekeeper=Timekeeper(startup=_seconds_since_start(args)),
            )
    except ResnetlabError as e:
        report = error_to_report(
            e
        )  # several processes: an error they all raised is printed by rank 0 alone
        if report is None:
            raise SystemExit(e.exit_code) from None
        raise report from None
    if args.json and process_rank() == 0:
        _print_json(summary)
    return 0


COMMANDS.append(_add_train)


def _add_eval(sub) -> None:
    from resnetlab.inference import TTA_MODES

    p = sub.add_parser(
        "eval",
        help="evaluate trained weights on a test set",
        description="Evaluate a run's kept weights (best.safetensors where there is one) or a "
        ".safetensors file on a test set: loss, accuracy, per-class "
        "accuracy and the confusion matrix; the most confident mistakes are written to eval/.",
    )
    p.add_argument("weights", help="a run folder or a .safetensors file")
    p.add_argument(
        "--data",
        help="dataset (default: the one the model was trained on): a built-in one, "
        "imagefolder:PATH, or a packed set, shards:PATH, whose test split is streamed through the "
        "run's evaluation view (recorded in its weights)",
    )
    p.add_argument(
        "--data-dir", help="folder holding the dataset's files (default: found as training does)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes decoding a streamed test set (default: the run's --workers, else 2; "
        "0: in this process)",
    )
    p.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation: average the logits over the image and its mirror image (flip), "
        "and over one-pixel shifts of both (flip-shift); default none",
    )
    p.add_argument(
        "--precision",
        default="run",
        choices=["run", "fp32", "bf16"],
        help="run (default): bf16 autocast and channels_last as the run had them (on the same kind "
        "of device), so that its own test figure is reproduced exactly; fp32 or bf16: that one",
    )
    p.add_argument(
        "--full-test",
        action="store_true",
        help="evaluate on all test examples (default: the run's own, its --subset when it had one)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch (default: the run's evaluation batch, else 256)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder for mistakes.png, mistakes.csv and confusion.csv "
        "(default: eval/ beside the weights, e.g. RUN/eval/)",
    )
    p.add_argument(
        "--mistakes",
        type=int,
        default=32,
        metavar="K",
        help="the K most confident mistakes go into mistakes.png/.csv (default 32; 0: write nothing)",
    )
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from resnetlab.inference.eval_run import evaluate_run, format_evaluation

    r = evaluate_run(
        args.weights,
        data=args.data,
        data_dir=args.data_dir,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        mistakes=args.mistakes,
        out=args.out,
        precision=args.precision,
        full_test=args.full_test,
        workers=args.workers,
    )
    _output(args, r, lambda: format_evaluation(r))
    return 0


COMMANDS.append(_add_eval)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with trained weights",
        description="Print the top-k classes of each image file, prepared as the model's training "
        "data was (grey or RGB, resized, normalised; transparency composited on black; a "
        "streamed run's images shown through its evaluation view, as `eval` shows them). An "
        "unreadable file is reported on stderr and the others are still predicted (exit status 1).",
    )
    p.add_argument(
        "weights",
        help="a run folder, a .safetensors file or an exported .onnx model (run by onnxruntime)",
    )
    p.add_argument("images", nargs="+", help="image files (any size or colour)")
    p.add_argument("--top-k", type=int, default=3, help="classes to print per image (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from resnetlab.inference.predict import format_predictions, predict

    results = predict(args.weights, args.images, top_k=args.top_k, device=args.device)
    _output(args, results, lambda: format_predictions(results))
    failed = [r for r in results if "error" in r]
    for r in failed:  # the others were predicted; these are said on stderr, one line each
        _say_line(f"resnetlab: error: {r['error']}")
    return 1 if failed else 0


COMMANDS.append(_add_predict)


# --- export -----------------------------------------------------------------------------------


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write trained weights as an ONNX model, checked with onnxruntime",
        description="Export the kept weights of a run (best.safetensors where there is one) as "
        "ONNX: batch norms folded, eval mode, the run's input size, class names and "
        "preprocessing in the model's metadata. onnxruntime must reproduce PyTorch's logits "
        "on real test images (max abs difference within --tolerance, same top-1) or nothing "
        "is written. Needs: pip install 'resnetlab[onnx]'.",
    )
    p.add_argument("weights", metavar="RUN_OR_WEIGHTS", help="a run folder or a .safetensors file")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (only onnx)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the .onnx file (default: beside the weights, e.g. RUN/best.onnx)",
    )
    p.add_argument(
        "--opset",
        type=int,
        metavar="N",
        help="ONNX opset (default: the exporter's own, 20 with torch 2.13)",
    )
    p.add_argument(
        "--batch",
        default="dynamic",
        metavar="N|dynamic",
        help="a fixed batch size, or 'dynamic' (default) for any batch",
    )
    p.add_argument(
        "--exporter",
        default="auto",
        choices=["auto", "dynamo", "torchscript"],
        help="torch.onnx exporter: auto (default: dynamo, then torchscript if it fails)",
    )
    p.add_argument(
        "--check-images",
        type=int,
        default=64,
        metavar="N",
        help="test images to check on (default 64)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed max abs logit difference (default 1e-4)",
    )
    p.add_argument(
        "--data-dir", help="folder holding the run's dataset (for the check's test images)"
    )
    p.add_argument(
        "--json", action="store_true", help="print the result and the check's figures as JSON"
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from resnetlab.inference.onnx import export_run, format_export

    result = export_run(
        args.weights,
        out=args.out,
        opset=args.opset,
        batch=args.batch,
        data_dir=args.data_dir,
        check_images=args.check_images,
        tolerance=args.tolerance,
        exporter=args.exporter,
    )
    _output(args, result, lambda: format_export(result))
    return 0


COMMANDS.append(_add_export)


# --- report / compare / runs (resnetlab.report) --------------------------------------------


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a run's report.html: one self-contained page about the run",
        description="Write report.html into a run folder (every run also writes it when it ends): "
        "configuration, environment, timings, curves, confusion matrix, per-class "
        "accuracy, the most confident mistakes and what happened when. Images are "
        "inline: the file opens offline. A finished run made before mistakes.csv "
        "existed gets its mistakes computed first (its test set is loaded).",
    )
    p.add_argument("run", metavar="RUN", help="a run folder")
    p.add_argument("--out", metavar="FILE", help="write the page here instead of RUN/report.html")
    p.add_argument("--device", default="auto", help="for computing missing mistakes (default auto)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from resnetlab.inference.eval_run import ensure_analysis
    from resnetlab.report.html import load_run, write_report

    load_run(args.run)  # not a run folder: one line, exit 2
    if ensure_analysis(args.run, device=args.device):
        print(f"computed mistakes.csv and confusion.csv for {args.run}", file=sys.stderr)
    from resnetlab.rundir import MISTAKES_CAM

    if not os.path.exists(os.path.join(args.run, MISTAKES_CAM)):  # else: no torch import
        from resnetlab.inference.explain import (
            ensure_mistakes_cam,  # the Grad-CAM row, where Captum is
        )

        if ensure_mistakes_cam(args.run):
            print(f"drew the mistakes' Grad-CAM row for {args.run}", file=sys.stderr)
    print(write_report(args.run, args.out))
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare runs: curves on shared axes, figures, differing settings",
        description="Draw the runs' curves on shared axes (one colour per run, training dashed, "
        "validation and test solid) and tabulate their final and kept figures and the "
        "settings that differ, as compare.png, compare.html and compare.json.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    p.add_argument(
        "--out", metavar="DIR", help="output folder (default: runs/<date-time>-compare/)"
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from resnetlab.report.compare import compare_runs, format_comparison

    result = compare_runs(args.runs, args.out)
    _output(args, result, lambda: format_comparison(result))
    return 0


def _add_runs(sub) -> None:
    p = sub.add_parser(
        "runs",
        help="list run folders, newest first, with their state",
        description="List the run folders in DIR (and one level below, as an experiment's "
        "nets, or a sweep's trials): model, data, preset, epochs done, kept test accuracy, "
        "time and state (finished, interrupted, failed, unfinished, pruned), newest first; "
        "then a line per sweep: its trials, its best trial and that trial's test figure.",
    )
    p.add_argument(
        "dir",
        nargs="?",
        default="runs",
        metavar="DIR",
        help="folder of run folders (default: runs)",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=_cmd_runs)


def _cmd_runs(args) -> int:
    from resnetlab.report.runs import format_runs, format_sweep, list_runs, list_sweeps

    rows = list_runs(args.dir)
    # a sweep's trials are listed in format_runs's table, by name; each sweep below it
    sweeps = lambda: [format_sweep(sweep) for sweep in list_sweeps(args.dir)]  # noqa: E731
    _output(args, rows, lambda: "\n".join([format_runs(rows, args.dir), *sweeps()]))
    return 0


COMMANDS += [_add_report, _add_compare, _add_runs]


# --- experiment degradation ---------------------------------------------------------------


def _add_experiment(sub) -> None:
    from resnetlab.experiments.defaults import DEGRADATION_DEFAULTS as D

    p = sub.add_parser("experiment", help="reproduce a paper's experiment with one command")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    experiments.required = True
    q = experiments.add_parser(
        "degradation",
        help="plain vs residual nets at two depths (He et al. 2016, figs. 1 and 6)",
        description="Train plain{d} and resnet{d} at two depths with one recipe (no augmentation, SGD at a high "
        "peak rate, one-cycle schedule); write each run folder, degradation.csv, degradation.png and gradients.png "
        "under --out, and print the final errors.",
    )
    q.add_argument("--data", default=D["data"], help=f"dataset (default {D['data']})")
    q.add_argument("--data-dir", help="folder holding the dataset files")
    q.add_argument(
        "--depths",
        nargs=2,
        type=int,
        default=list(D["depths"]),
        metavar=("SHALLOW", "DEEP"),
        help=f"two registered CIFAR depths (default {D['depths'][0]} {D['depths'][1]})",
    )
    q.add_argument("--epochs", type=int, default=D["epochs"], help=f"(default {D['epochs']})")
    q.add_argument(
        "--width",
        type=int,
        default=D["width"],
        help=f"channels of the first stage (default {D['width']}; the paper: 16)",
    )
    q.add_argument(
        "--subset",
        type=int,
        default=D["subset"],
        help=f"train (and test) on a seeded subset of N examples (default {D['subset']}; 0: all)",
    )
    q.add_argument(
        "--lr",
        type=float,
        default=D["lr"],
        help=f"peak learning rate: warm-up, then linear decay to 0 (default {D['lr']})",
    )
    q.add_argument("--seed", type=int, default=D["seed"], help=f"(default {D['seed']})")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    q.add_argument("--out", help="experiment folder (default: runs/<date-time>-degradation/)")
    q.add_argument(
        "--overwrite", action="store_true", help="replace runs of other settings already in --out"
    )
    q.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON on stdout (progress goes to stderr)",
    )
    q.set_defaults(func=_cmd_experiment_degradation)


def _cmd_experiment_degradation(args) -> int:
    from resnetlab.experiments.degradation import format_table, run_degradation
    from resnetlab.train.run import default_run_path

    result = run_degradation(
        args.out or default_run_path("degradation"),
        data=args.data,
        depths=args.depths,
        epochs=args.epochs,
        width=args.width,
        subset=None if args.subset == 0 else args.subset,
        seed=args.seed,
        lr=args.lr,
        device=args.device,
        data_dir=args.data_dir,
        overwrite=args.overwrite,
        json_output=args.json,
    )
    _output(
        args,
        result,
        lambda: f"{format_table(result)}\nfigures and degradation.csv in {result['out']}",
    )
    return 0


COMMANDS.append(_add_experiment)


# --- data: list / fetch -------------------------------------------------------------------


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="list the datasets found here, or fetch one")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    q = actions.add_parser(
        "list",
        help="each dataset: where it was found and whether it verified (downloads nothing)",
        description="For each dataset and split: the folder it was found in and whether its files "
        "verified. Nothing is downloaded, and no decompressed copy or verification record is "
        "written (only a CIFAR archive not yet unpacked is unpacked into the cache).",
    )
    q.add_argument("--data-dir", help="look only in this folder (as training's --data-dir does)")
    q.add_argument(
        "--shards",
        metavar="DIR",
        help="list the packed sets in DIR (DIR itself or its sub-folders) instead of the datasets "
        "(without it, those in $RESNETLAB_SHARDS, else the user cache's shards/ folder, where "
        "`data pack SRC` writes without OUT, follow the datasets)",
    )
    q.add_argument("--json", action="store_true", help="print JSON on stdout")
    q.set_defaults(func=_cmd_data_list)
    q = actions.add_parser(
        "pack",
        help="pack a dataset into WebDataset tar shards, for `train --data shards:OUT`",
        description="Write SRC as WebDataset tar shards and a manifest (classes, counts, sizes, "
        "sha256 per shard) into OUT, for training with --data shards:OUT without holding the data "
        "in memory. SRC is an image folder (one sub-folder per class, or train/ and test/ (or val/) "
        "each holding them; JPEG and PNG kept byte for byte, other formats Pillow reads as PNG, "
        "files that do not decode left out and listed; without test/, --test-split of each class "
        "held out) or a built-in dataset (written as PNG). Written beside OUT, renamed into place.",
    )
    q.add_argument(
        "src", metavar="SRC", help="an image folder, or fashion-mnist, mnist, cifar10, cifar100"
    )
    q.add_argument(
        "out", metavar="OUT", nargs="?", help="the folder to write (default: the shards home, NAME)"
    )
    q.add_argument(
        "--max-side", type=int, metavar="PX", help="re-encode images longer than PX a side"
    )
    q.add_argument(
        "--shard-mb", type=int, default=256, metavar="MB", help="shard size (default 256)"
    )
    q.add_argument(
        "--subset", type=int, metavar="N", help="a built-in dataset: a seeded subset of N per split"
    )
    q.add_argument("--data-dir", help="a built-in dataset: the folder holding its files")
    q.add_argument(
        "--test-split",
        type=float,
        metavar="N",
        help="a folder without test/: hold out N images, or a fraction (0.2) of each class, "
        "as the test split (seeded, stratified; default 0.1)",
    )
    q.add_argument(
        "--seed", type=int, default=0, help="the seed of the held-out test split (default 0)"
    )
    q.add_argument(
        "--workers",
        type=int,
        default=_default_pack_workers(),
        metavar="N",
        help=f"an image folder: processes decoding its images (default {_default_pack_workers()}: the cores, up to 8)",
    )
    q.add_argument("--json", action="store_true", help="print the manifest's summary as JSON")
    q.set_defaults(func=_cmd_data_pack)
    q = actions.add_parser(
        "fetch",
        help="download a dataset (when missing) and verify it",
        description="Download a dataset into the user cache (or --data-dir) unless it is found "
        "already, and verify its files by checksum.",
    )
    q.add_argument("name", metavar="NAME", help="fashion-mnist, mnist, cifar10 or cifar100")
    q.add_argument("--data-dir", help="download into DIR/NAME instead of the user cache")
    q.add_argument("--json", action="store_true", help="print JSON on stdout")
    q.set_defaults(func=_cmd_data_fetch)


def _cmd_data_list(args) -> int:
    from resnetlab.data import dataset_status, list_datasets
    from resnetlab.data.datasets import format_status
    from resnetlab.data.shards import format_packed, list_packed, shards_home

    if args.shards is not None:  # the packed sets there, alone
        packed = list_packed(args.shards)
        _output(args, packed, lambda: format_packed(packed, args.shards))
        return 0
    statuses = [dataset_status(name, root=args.data_dir) for name in list_datasets()]
    _output(
        args,
        statuses,
        lambda: (
            f"{format_status(statuses)}\n{format_packed(list_packed(shards_home()), shards_home())}"
        ),
    )
    return 0


def _default_pack_workers() -> int:
    import os

    return max(
        1,
        min(
            8,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1,
        ),
    )


def _cmd_data_pack(args) -> int:
    from pathlib import Path

    from resnetlab.data.remote import is_url
    from resnetlab.data.shards import pack_builtin, pack_folder, shards_home

    src = args.src.removeprefix("imagefolder:")
    if is_url(args.out):  # Path would fold "http://host/x" into a local folder "http:/host/x"
        raise UsageError(
            f"data pack writes a local folder, not {args.out}: pack into a folder, upload its "
            "manifest.json and .tar files, then train with --data shards:URL"
        )
    if args.shard_mb < 1 or (args.max_side is not None and args.max_side < 1):
        raise UsageError("--shard-mb and --max-side must be positive")
    if args.workers < 1:
        raise UsageError("--workers must be 1 or more")
    is_folder = Path(src).expanduser().is_dir()
    out = Path(
        args.out or shards_home() / Path(src).expanduser().resolve().name
        if is_folder
        else args.out or shards_home() / src
    )
    say = None if args.json else (lambda line: print(line, file=sys.stderr))
    if is_folder:
        if args.subset is not None:
            raise UsageError("--subset is for built-in datasets; pack a smaller folder instead")
        m = pack_folder(
            src,
            out,
            max_side=args.max_side,
            shard_bytes=args.shard_mb * 2**20,
            say=say,
            test_split=args.test_split,
            seed=args.seed,
            workers=args.workers,
            progress=not args.json and sys.stderr.isatty(),
        )
    else:
        if args.max_side is not None:
            raise UsageError("--max-side is for image folders; built-in images are small already")
        if args.test_split is not None:
            raise UsageError(
                "--test-split is for image folders; built-in datasets have a test split"
            )
        m = pack_builtin(
            src, out, root=args.data_dir, shard_bytes=args.shard_mb * 2**20, subset=args.subset
        )
    summary = {
        "out": str(out),
        "name": m["name"],
        "classes": len(m["classes"]),
        "examples": {s: v["count"] for s, v in m["splits"].items()},
        "shards": sum(len(v["shards"]) for v in m["splits"].values()),
        "skipped": m["skipped"],
    }
    _output(args, summary, lambda: _format_pack(m, summary, out))
    return 0


def _format_pack(m: dict, summary: dict, out) -> str:
    counts = ", ".join(f"{n:,} {s}" for s, n in summary["examples"].items())
    n, bad = summary["shards"], m["skipped"]
    skipped = (
        f", {bad} unreadable {plural(bad, 'file')} left out (listed in manifest.json)"
        if bad
        else ""
    )
    return (
        f"packed {m['name']}: {counts} in {n} {plural(n, 'shard')}{skipped}\n"
        f"train on it with: resnetlab train --data shards:{out}{_val_flag(m)}"
    )


def _val_flag(manifest: dict) -> str:
    """` --val-split N` (a tenth of the training images) where the default preset's validation
    split would leave less than half of a small set to train on, else nothing."""
    from resnetlab.train.presets import make_config

    n = manifest["splits"]["train"]["count"]
    held = make_config().val_split
    return f" --val-split {max(1, n // 10)}" if held and 2 * held > n else ""


def _cmd_data_fetch(args) -> int:
    from resnetlab.data import fetch_dataset

    result = fetch_dataset(args.name, root=args.data_dir)
    _output(
        args,
        result,
        lambda: "\n".join(
            f"{result['name']} {split}: {s['examples']:,} examples, verified ({s['check']}), in {s['folder']}"
            for split, s in result["splits"].items()
        ),
    )
    return 0


COMMANDS.append(_add_data)


# --- bench ----------------------------------------------------------------------------------


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure resnetlab's training path against the textbook's code, in one run",
        description="Time training, evaluation, data loading and an estimated epoch for the "
        "textbook's code and resnetlab's path (fp32 and bf16), in one process.",
    )
    p.add_argument(
        "--model",
        default="resnet18_d2l",
        help="model name (default: resnet18_d2l, the notebook's net)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument(
        "--resize", type=int, help="resize images to PX x PX (default: the dataset's 28 px)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=3,
        help="batches per timed round (training, evaluation, loading; default 3)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed rounds; the median counts (default 3)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--variants",
        help="comma-separated: textbook, fp32, bf16, with suffixes -nchw -nofuse "
        "-noforeach -compile -nograph (default: textbook,fp32 and bf16 where it pays)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", help="folder holding the Fashion-MNIST files")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (progress goes to stderr)",
    )
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from resnetlab.bench import bench, format_report

    variants = (
        tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
    )
    result = bench(
        model=args.model,
        batch_size=args.batch_size,
        resize=args.resize,
        steps=args.steps,
        repeats=args.repeats,
        device=args.device,
        variants=variants,
        threads=args.threads,
        data_dir=args.data_dir,
        progress=lambda text: print(text, file=sys.stderr, flush=True),
    )
    _output(args, result, lambda: format_report(result))
    return 0


COMMANDS.append(_add_bench)


# --- sweep (resnetlab.sweep) ------------------------------------------------------------------


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="search train settings on Optuna: trials, pruning, a shared study",
        description="Search `train` settings (--space) over --trials trials on validation "
        "figures, pruning poor trials after each epoch but their last; the other flags are fixed "
        "for every trial. The folder holds each trial's run folder, trials.csv, best.json (rerun it with "
        "`resnetlab train --config best.json`) and report.html. The study lives in a SQLite file "
        "there, or in --storage, which several machines share: each runs the same command with "
        "the same --study. Running the command again continues the sweep (after Ctrl-C too: "
        "the trial it stopped runs again). Needs: pip install 'resnetlab[sweep]'.",
    )
    p.add_argument(
        "--space",
        action="append",
        required=True,
        metavar="NAME=KIND:ARGS",
        help="a searched setting: lr=log:0.02:1, warmup=float:0:0.3, epochs=int:2:8[:STEP], "
        "model=choice:resnet20,resnet32 (repeat the flag for each)",
    )
    p.add_argument("--trials", type=int, help="trials in the study (default 20; grid: all)")
    p.add_argument(
        "--sampler",
        default="tpe",
        choices=("tpe", "random", "grid"),
        help="how trials pick settings: tpe (default), random, or grid (every combination)",
    )
    p.add_argument(
        "--pruner",
        default="median",
        choices=("median", "hyperband", "asha", "none"),
        help="which trials stop early on their epochs' validation figures (default median)",
    )
    p.add_argument(
        "--objective",
        default="val_acc",
        choices=("val_acc", "val_loss"),
        help="the validation figure the search maximises (accuracy) or minimises (loss); "
        "default val_acc; the test set never chooses",
    )
    p.add_argument("--budget", type=float, metavar="MIN", help="start no trial after MIN minutes")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="postgresql://USER:PASSWORD@HOST:PORT/DB to share the study between machines "
        "(default: $RESNETLAB_SWEEP_STORAGE, else SWEEP/study.db, SQLite)",
    )
    p.add_argument("--study", default="sweep", help="the study's name (default: sweep)")
    p.add_argument(
        "--jobs", type=int, default=1, help="trials side by side here (cores / N threads each)"
    )
    p.add_argument("--out", help="sweep folder (default: runs/sweep, runs/sweep-STUDY)")
    p.add_argument("--config", metavar="FILE", help="fixed settings from a run's config.json")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="S",
        help="a trial silent for 2 x S seconds (its worker died) is failed and queued again",
    )
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    _add_config_flags(p)
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    import dataclasses

    from resnetlab.sweep.search import run_sweep
    from resnetlab.train import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "preset"]
    fixed = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    opts = ("trials", "sampler", "pruner", "objective", "budget", "storage", "study", "jobs")
    _, outcome = run_sweep(
        args.space,
        out=args.out,
        preset=args.preset,
        config=args.config,
        heartbeat=args.heartbeat,
        verbose=not args.json,
        **{k: getattr(args, k) for k in opts},
        **fixed,
    )
    _output(args, outcome, lambda: _format_search(outcome))
    return 0
    print(", ".join(f"{n} {s}" for s, n in sorted(outcome["trials"].items())) + " trials")
    best = outcome["best"]
    if best is None:
        print("no trial completed: no best.json")
    else:
        s, test = best["sweep"], best["test"]
        print(
            f"best: trial {s['trial']}, {s['objective']} {s['value']:.4f}: "
            + ", ".join(f"{k}={v}" for k, v in s["params"].items())
        )
        if test.get("kept_test_acc") is not None:
            print(
                "test accuracy of its kept weights, evaluated once, after the search: "
                f"{test['kept_test_acc']:.4f}"
            )
    print(f"written: {', '.join(outcome['files'])}")
    return 0


def _format_search(outcome: dict) -> str:
    lines = [", ".join(f"{n} {s}" for s, n in sorted(outcome["trials"].items())) + " trials"]
    best = outcome["best"]
    if best is None:
        lines.append("no trial completed: no best.json")
    else:
        s, test = best["sweep"], best["test"]
        lines.append(
            f"best: trial {s['trial']}, {s['objective']} {s['value']:.4f}: "
            + ", ".join(f"{k}={v}" for k, v in s["params"].items())
        )
        if test.get("kept_test_acc") is not None:
            lines.append(
                "test accuracy of its kept weights, evaluated once, after the search: "
                f"{test['kept_test_acc']:.4f}"
            )
    lines.append(f"written: {', '.join(outcome['files'])}")
    return "\n".join(lines)


COMMANDS.append(_add_sweep)


# --- explain (Grad-CAM, resnetlab.explain) -------------------------------------------------


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="Grad-CAM: where in each image the net found its class, as one PNG grid",
        description="Grad-CAM overlays (Captum's LayerGradCam) of the predicted class, or of "
        "--class, for each image, at the last residual stage or --layer, drawn as one PNG grid "
        "(default RUN/explain.png). Needs: pip install 'resnetlab[explain]'.",
    )
    p.add_argument("weights", metavar="RUN", help="a run folder or a .safetensors file")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any size or colour)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class instead")
    p.add_argument(
        "--layer",
        metavar="NAME",
        help="a module name such as layer3 or layer4.1.conv2 (default: the last residual stage)",
    )
    p.add_argument("--out", metavar="PNG", help="the PNG to write (default RUN/explain.png)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--json", action="store_true", help="print the predictions and the path as JSON")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args) -> int:
    from resnetlab.device import resolve_device
    from resnetlab.inference.explain import explain_images

    result = explain_images(
        args.weights,
        args.images,
        class_name=args.class_name,
        layer=args.layer,
        out=args.out,
        device=resolve_device(args.device),
    )
    failed = [r for r in result["images"] if "error" in r]
    lines = lambda: [  # noqa: E731
        f"{r['image']}: {r['predicted']} {r['prob']:.3f} (map of {r['explained']})"
        for r in result["images"]
        if "error" not in r
    ]
    _output(
        args,
        result,
        lambda: "\n".join([*lines(), f"Grad-CAM at {result['layer']}: {result['out']}"]),
    )
    for r in failed:  # as predict: the others were explained; these are one line each on stderr
        _say_line(f"resnetlab: error: {r['error']}")
    return 1 if failed else 0


COMMANDS.append(_add_explain)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Residual networks on PyTorch: models, data, training, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def _say_line(text: str) -> None:
    """One line on stderr, written whole: processes sharing the stream (--nproc) do not run
    their lines together."""
    sys.stderr.write(" ".join(text.splitlines()) + "\n")
    sys.stderr.flush()


STARTED_ENV = "RESNETLAB_STARTED_AT"  # `train --nproc`: when the command started (time.time())


def _seconds_since_start(args) -> float:
    """What --time-limit has spent before training: since the process started (imports
    included) when `main` is the command line, else since `main` was called (a test, a caller);
    in a process `train --nproc` started, since that command started."""
    with contextlib.suppress(KeyError, ValueError):  # absent, or not a number: not ours
        return max(0.0, time.time() - float(os.environ[STARTED_ENV]))
    if getattr(args, "started", None) is not None:
        return time.perf_counter() - args.started
    from resnetlab.train.timing import process_age

    return process_age()


def main(argv: list[str] | None = None) -> int:
    started, command_line = time.perf_counter(), argv is None
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # as typed: `train --nproc` hands these on to torchrun
    args.started = None if command_line else started  # see _seconds_since_start
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:  # a stop the user asked for, not an error
        _say_line(f"resnetlab: {e}")
        return e.exit_code
    except ResnetlabError as e:
        _say_line(f"resnetlab: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `resnetlab models | head`: the reader left; not an error of ours
        os.dup2(
            os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno()
        )  # nothing more to flush at exit
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
