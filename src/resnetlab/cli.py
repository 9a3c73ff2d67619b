"""The `resnetlab` command: argument parsing and one-line errors, nothing else.

Each sub-command is a pair: `_add_<name>(subparsers)` declares its flags and `_cmd_<name>(args)`
calls the package function that does the work. A `ResnetlabError` becomes one line on stderr
and its exit status (2 for bad usage, 1 for a failed run); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from resnetlab.errors import ResnetlabError, UsageError


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


COMMANDS = []  # each section appends its `_add_<name>`, in the order --help shows them


# --- sub-commands -------------------------------------------------------------------------
# (each section below belongs to one feature; keep them independent)


# --- models: summary / models -------------------------------------------------------------


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="layers, parameters, FLOPs and activation memory of a model",
                       description="Print a model's layers (name, type, output shape, parameters, "
                       "MACs) and its totals. Runs on the meta device: instant, no memory.")
    p.add_argument("model", metavar="MODEL", help="a registered name (see `resnetlab models`)")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"),
                   help="input channels, height, width (default: the model's own); "
                   "the model is built for C channels")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--depth", type=int, default=2,
                   help="levels of sub-modules to list (default 2; 0: totals only)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args) -> int:
    from resnetlab.models import summarize

    summary = summarize(args.model, input_size=args.input_size, batch_size=args.batch_size,
                        depth=args.depth)
    if args.json:
        _print_json(summary.to_dict())
    else:
        print(summary.render())
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with their size and cost",
                       description="List registered models: parameters, GFLOPs at the default "
                       "input size, default input size and classes, paper.")
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN",
                   help="shell-style filter, e.g. 'resnet*' or '*resnext*' (default: all)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    import dataclasses

    from resnetlab.errors import UsageError
    from resnetlab.models import describe_models, render_model_table

    listings = describe_models(args.pattern)
    if not listings:
        raise UsageError(f"no model matches {args.pattern!r}; run `resnetlab models` to see all")
    if args.json:
        _print_json([dataclasses.asdict(m) for m in listings])
    else:
        print(render_model_table(listings))
    return 0


COMMANDS += [_add_summary, _add_models]


# --- train / eval / predict ---------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: the quick preset on Fashion-MNIST)",
                       description="Train a model. A preset fills every setting; flags override it.")
    p.add_argument("--preset", default="quick", help="d2l (the textbook recipe), quick (default: ~10 min on a CPU), best (for a GPU)")
    p.add_argument("--model", help="model name (see `resnetlab models`)")
    p.add_argument("--data", help="dataset: fashion-mnist, mnist, cifar10, cifar100, imagefolder:PATH")
    p.add_argument("--data-dir", help="folder holding the dataset files (used alone, no fall-back)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="the global batch, split across processes")
    p.add_argument("--lr", type=float, help="the (peak) learning rate")
    p.add_argument("--resize", type=int, help="resize images to PX x PX")
    p.add_argument("--val-split", type=int, help="hold out N training examples to pick best.safetensors")
    p.add_argument("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: where it pays)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels_last memory format")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model for training (each epoch then drops its last, smaller batch: one shape, one compilation)")
    p.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm across processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--subset", type=int, help="use a seeded random subset of N examples of each split")
    p.add_argument("--out", help="run folder (default: runs/<date-time>-<preset>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR after its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (progress goes to stderr)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train in N processes on this machine (starts torchrun; README: Distributed training)")
    p.set_defaults(func=_cmd_train, train_parser=p)


_TRAIN_FIELDS = ("model", "data", "data_dir", "epochs", "batch_size", "lr", "resize", "val_split", "device", "amp",
                 "channels_last", "compile", "sync_bn", "seed", "subset")


def _flags_again(parser, args, skip: tuple[str, ...]) -> list[str]:
    """The flags `args` was parsed from, less `skip`: the command line `--nproc` hands to torchrun."""
    argv = []
    for action in parser._actions:  # argparse keeps no public list of a parser's flags
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in skip or value is None or value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:  # store_true
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def _cmd_train(args) -> int:
    from resnetlab.train import make_config, train
    from resnetlab.train.distributed import error_to_report, launch_local, process_rank

    if args.nproc is not None and args.nproc != 1:
        return launch_local(args.nproc, _flags_again(args.train_parser, args, skip=("nproc",)))
    overrides = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    try:
        if args.resume:
            if overrides or args.out:
                raise UsageError(f"--resume continues a run with its saved settings; drop {', '.join('--' + k.replace('_', '-') for k in overrides) or '--out'}")
            summary = train(resume=args.resume, json_output=args.json)
        else:
            summary = train(make_config(args.preset, **overrides), out=args.out, overwrite=args.overwrite, json_output=args.json)
    except ResnetlabError as e:
        report = error_to_report(e)  # several processes: an error they all raised is printed by rank 0 alone
        if report is None:
            raise SystemExit(e.exit_code) from None
        raise report from None
    if args.json and process_rank() == 0:
        _print_json(summary)
    return 0


COMMANDS.append(_add_train)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate trained weights on a test set")
    p.add_argument("weights", help="a run folder or a .safetensors file")
    p.add_argument("--data", help="dataset (default: the one the model was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--tta", action="store_true", help="average predictions over the image and its mirror image")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from resnetlab.train.inference import evaluate_run

    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    r = evaluate_run(args.weights, data=args.data, data_dir=args.data_dir, tta=args.tta, device=args.device,
                     batch_size=args.batch_size)
    if args.json:
        _print_json(r)
        return 0
    print(f"{r['data']} test set, {r['count']} examples{' (flip TTA)' if r['tta'] else ''}: loss {r['loss']:.4f}, acc {r['acc']:.4f}")
    width = max(len(c) for c in r["classes"])
    print(f"{'class':<{width}}  {'count':>6}  {'acc':>6}")
    for row in r["per_class"]:
        print(f"{row['class']:<{width}}  {row['count']:>6}  {row['acc']:>6.4f}")
    print("confusion matrix (rows: true, columns: predicted):")
    for cls, counts in zip(r["classes"], r["confusion"]):
        print(f"{cls:<{width}}  " + " ".join(f"{c:>5}" for c in counts))
    return 0


COMMANDS.append(_add_eval)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with trained weights")
    p.add_argument("weights", help="a run folder or a .safetensors file")
    p.add_argument("images", nargs="+", help="image files (any size or colour)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from resnetlab.train.inference import predict

    if args.top_k <= 0:
        raise UsageError(f"--top-k must be positive, got {args.top_k}")
    results = predict(args.weights, args.images, top_k=args.top_k, device=args.device)
    if args.json:
        _print_json(results)
        return 0
    for r in results:
        print(r["image"] + ": " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    return 0


COMMANDS.append(_add_predict)


# --- experiment degradation ---------------------------------------------------------------


def _add_experiment(sub) -> None:
    from resnetlab.experiments.degradation import DEGRADATION_DEFAULTS as D

    p = sub.add_parser("experiment", help="reproduce a paper's experiment with one command")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    experiments.required = True
    q = experiments.add_parser(
        "degradation", help="plain vs residual nets at two depths (He et al. 2016, figs. 1 and 6)",
        description="Train plain{d} and resnet{d} at two depths with one recipe (no augmentation, SGD at a high "
                    "peak rate, one-cycle schedule); write each run folder, degradation.csv, degradation.png and gradients.png "
                    "under --out, and print the final errors.")
    q.add_argument("--data", default=D["data"], help=f"dataset (default {D['data']})")
    q.add_argument("--data-dir", help="folder holding the dataset files")
    q.add_argument("--depths", nargs=2, type=int, default=list(D["depths"]), metavar=("SHALLOW", "DEEP"),
                   help=f"two registered CIFAR depths (default {D['depths'][0]} {D['depths'][1]})")
    q.add_argument("--epochs", type=int, default=D["epochs"], help=f"(default {D['epochs']})")
    q.add_argument("--width", type=int, default=D["width"], help=f"channels of the first stage (default {D['width']}; the paper: 16)")
    q.add_argument("--subset", type=int, default=D["subset"],
                   help=f"train (and test) on a seeded subset of N examples (default {D['subset']}; 0: all)")
    q.add_argument("--lr", type=float, default=D["lr"], help=f"peak learning rate: warm-up, then linear decay to 0 (default {D['lr']})")
    q.add_argument("--seed", type=int, default=D["seed"], help=f"(default {D['seed']})")
    q.add_argument("--device", default="auto")
    q.add_argument("--out", help="experiment folder (default: runs/<date-time>-degradation/)")
    q.add_argument("--overwrite", action="store_true", help="replace runs of other settings already in --out")
    q.add_argument("--json", action="store_true", help="print the result as JSON on stdout (progress goes to stderr)")
    q.set_defaults(func=_cmd_experiment_degradation)


def _cmd_experiment_degradation(args) -> int:
    from resnetlab.experiments.degradation import format_table, run_degradation
    from resnetlab.train.run import default_run_path

    if args.subset < 0:
        raise UsageError(f"--subset must be positive (or 0 for the whole set), got {args.subset}")
    result = run_degradation(args.out or default_run_path("degradation"), data=args.data, depths=args.depths,
                             epochs=args.epochs, width=args.width, subset=args.subset or None, seed=args.seed,
                             lr=args.lr, device=args.device, data_dir=args.data_dir, overwrite=args.overwrite,
                             json_output=args.json)
    if args.json:
        _print_json(result)
    else:
        print(format_table(result))
        print(f"figures and degradation.csv in {result['out']}")
    return 0


COMMANDS.append(_add_experiment)


# --- data: list / fetch -------------------------------------------------------------------


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="list the datasets found here, or fetch one")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    q = actions.add_parser("list", help="each dataset: where it was found and whether it verified (downloads nothing)")
    q.add_argument("--data-dir", help="look only in this folder (as training's --data-dir does)")
    q.add_argument("--json", action="store_true", help="print JSON on stdout")
    q.set_defaults(func=_cmd_data_list)
    q = actions.add_parser("fetch", help="download a dataset (when missing) and verify it")
    q.add_argument("name", metavar="NAME", help="fashion-mnist, mnist, cifar10 or cifar100")
    q.add_argument("--data-dir", help="download into DIR/NAME instead of the user cache")
    q.add_argument("--json", action="store_true", help="print JSON on stdout")
    q.set_defaults(func=_cmd_data_fetch)


def _cmd_data_list(args) -> int:
    from resnetlab.data import dataset_status, list_datasets
    from resnetlab.data.datasets import format_status

    statuses = [dataset_status(name, root=args.data_dir) for name in list_datasets()]
    if args.json:
        _print_json(statuses)
    else:
        print(format_status(statuses))
    return 0


def _cmd_data_fetch(args) -> int:
    from resnetlab.data import fetch_dataset

    result = fetch_dataset(args.name, root=args.data_dir)
    if args.json:
        _print_json(result)
    else:
        for split, s in result["splits"].items():
            print(f"{result['name']} {split}: {s['examples']:,} examples, verified ({s['check']}), in {s['folder']}")
    return 0


COMMANDS.append(_add_data)


# --- bench ----------------------------------------------------------------------------------


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure resnetlab's training path against the textbook's code, in one run",
                       description="Time training, evaluation, data loading and an estimated epoch for the "
                                   "textbook's code and resnetlab's path (fp32 and bf16), in one process.")
    p.add_argument("--model", default="resnet18_d2l", help="model name (default: resnet18_d2l, the notebook's net)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--resize", type=int, help="resize images to PX x PX (default: the dataset's 28 px)")
    p.add_argument("--steps", type=int, default=3, help="batches per timed round (training, evaluation, loading)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the median counts")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--variants", help="comma-separated: textbook, fp32, bf16, with suffixes -nchw -nofuse "
                                      "-noforeach -compile (default: textbook,fp32 and bf16 where it pays)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", help="folder holding the Fashion-MNIST files")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from resnetlab.bench import bench, format_report

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
    result = bench(model=args.model, batch_size=args.batch_size, resize=args.resize, steps=args.steps,
                   repeats=args.repeats, device=args.device, variants=variants, threads=args.threads,
                   data_dir=args.data_dir, progress=lambda text: print(text, file=sys.stderr, flush=True))
    if args.json:
        _print_json(result)
    else:
        print(format_report(result))
    return 0


COMMANDS.append(_add_bench)


def build_parser() -> argparse.ArgumentParser:
    from resnetlab import __version__

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ResnetlabError as e:
        print(f"resnetlab: error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # one line, always
        return e.exit_code
    except KeyboardInterrupt:
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `resnetlab models | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
