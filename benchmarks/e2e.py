"""Whole processes, start to finish: the textbook's training script against `resnetlab train`.

Fixed costs count as much as the step: start-up, reading the data, the epoch, its test
evaluation, and what comes after it (weights, plots, files). This times both as separate
processes on the same examples, in alternating rounds (so a change in the machine's load hits
both alike), and prints the median of each and their ratio.

    python benchmarks/e2e.py                       # d2l recipe at 28 px, 10,000 + 10,000 examples, 1 epoch
    python benchmarks/e2e.py --rounds 5 --json     # more rounds; JSON on stdout

The textbook's process (`--textbook`, run by this script as a child) is the chapter's code as a
script: the notebook's net (`textbook_baseline.notebook_resnet18`), train_ch6's Xavier init, plain
SGD at 0.05 and its batch loop with a host read of the metrics every step, d2l's
evaluate_accuracy_gpu on the test set after the epoch, and d2l.load_data_fashion_mnist's per-sample
pipeline (PIL image, ToTensor, DataLoader; 0 workers on a CPU, where workers would compete with
training for the same cores); its plot is left out. resnetlab's is the command the README gives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def textbook_process(
    subset: int, resize: int | None, epochs: int, batch_size: int, data_dir: str | None
) -> None:
    import torch

    from resnetlab.bench import textbook_baseline as tb
    from resnetlab.data import load_dataset

    train = load_dataset("fashion-mnist", train=True, root=data_dir).take(subset, seed=0)
    test = load_dataset("fashion-mnist", train=False, root=data_dir)
    test = test.take(min(subset, len(test)), seed=0)
    train_iter = tb.pil_loader(train.images, train.labels, batch_size, shuffle=True, resize=resize)
    test_iter = tb.pil_loader(test.images, test.labels, batch_size, shuffle=False, resize=resize)
    device = torch.device("cpu")
    net = tb.notebook_resnet18()
    net.apply(tb.init_weights)
    optimizer, loss = tb.make_optimizer(net, 0.05)
    for _ in range(epochs):
        train_l, train_acc, _ = tb.train_batches(net, train_iter, optimizer, loss, device)
        test_acc = tb.evaluate_accuracy_gpu(net, test_iter)
    print(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(
            f"e2e: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=10000, help="training (and test) examples")
    parser.add_argument("--resize", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds; the median counts"
    )
    parser.add_argument(
        "--amp", action="store_true", help="resnetlab under bf16 autocast (the textbook stays fp32)"
    )
    parser.add_argument("--data-dir")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--textbook", action="store_true", help=argparse.SUPPRESS
    )  # the child process
    args = parser.parse_args()
    native = args.resize == 28  # Fashion-MNIST is 28 px: the textbook's loader then resizes nothing
    if args.textbook:
        textbook_process(
            args.subset,
            None if native else args.resize,
            args.epochs,
            args.batch_size,
            args.data_dir,
        )
        return
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "textbook": [
                sys.executable,
                __file__,
                "--textbook",
                "--subset",
                str(args.subset),
                "--resize",
                str(args.resize),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                *data,
            ],
            "resnetlab": [
                sys.executable,
                "-m",
                "resnetlab",
                "train",
                "--preset",
                "d2l",
                "--resize",
                str(args.resize),
                "--subset",
                str(args.subset),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--out",
                os.path.join(tmp, "run"),
                "--overwrite",
                *data,
                *(["--amp"] if args.amp else []),
            ],
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(args.rounds):
            for name in list(commands) if r % 2 == 0 else list(commands)[::-1]:
                seconds[name].append(timed(commands[name]))
                print(
                    f"round {r + 1}: {name} {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True
                )
    med = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "seconds": seconds,
        "median_s": med,
        "speedup": med["textbook"] / med["resnetlab"],
        "commands": {name: " ".join(cmd[1:]) for name, cmd in commands.items()},
        "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
        "loadavg": os.getloadavg(),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(
            f"textbook process {med['textbook']:.1f} s, resnetlab train {med['resnetlab']:.1f} s (median of "
            f"{args.rounds}): resnetlab {result['speedup']:.2f}x"
        )


if __name__ == "__main__":
    main()
