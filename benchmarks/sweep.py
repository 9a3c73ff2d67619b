"""The sweep's contract (issue 28): the same 16 trials over learning rate and weight decay of the
`quick` recipe, on a 20,000-image subset for 4 epochs, with the median pruner and without.

Both sweeps run the same configurations: the random sampler's first --trials suggestions for
--seed, drawn here once and queued in both studies (Optuna's enqueue_trial) before they start, so
that only pruning differs, whatever order --jobs workers take them in (TPE's draws would depend on
the results, which pruning changes). With --jobs 1 the two sweeps run side by side, one process of
--threads threads each (so a change in the machine's load hits both alike), or one after the
other with --sequential; with --jobs N they run one after the other, each in N worker processes
of one thread (on 2 cores: --jobs 2, as the README's --jobs advice has it). Each sweep's wall time
includes its single test evaluation of the best trial's kept weights at the end.

Prints, and writes to --out/sweep-bench.json: each sweep's wall time, epochs trained, trials
pruned, best validation accuracy (and its trial's test figure, measured once), the time ratio and
the accuracy gap. The contract, on the quiet 2-core machine:

    PYTHONPATH=src nice -n 19 python benchmarks/sweep.py --out runs/sweep-bench --jobs 2

A check that it works (minutes): --trials 4 --subset 2000 --val-split 500 --epochs 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SPACE = {"lr": (0.02, 1.0), "weight_decay": (1e-5, 1e-2)}  # log-uniform, as --space log:LOW:HIGH
PRUNERS = ("median", "none")


def configurations(trials: int, seed: int) -> list[dict]:
    """The random sampler's first `trials` suggestions for `seed` over SPACE."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(trials):
        trial = study.ask()
        drawn.append({k: trial.suggest_float(k, lo, hi, log=True) for k, (lo, hi) in SPACE.items()})
        study.tell(trial, 0.0)
    return drawn


def queue_trials(folder: Path, drawn: list[dict]) -> None:
    """The sweep's study (its default SQLite file and name), made now with the trials queued."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "study.db").exists():
        raise SystemExit(f"{folder} holds a sweep already: give another --out")
    url = f"sqlite:///{folder.resolve() / 'study.db'}"
    study = optuna.create_study(study_name="sweep", storage=url, direction="maximize")
    for params in drawn:
        study.enqueue_trial(params)


def command(args, folder: Path, pruner: str) -> tuple[list[str], dict]:
    space = [f"--space={k}=log:{lo}:{hi}" for k, (lo, hi) in SPACE.items()]
    cmd = [sys.executable, "-m", "resnetlab", "sweep", *space, "--preset", "quick"]
    cmd += ["--subset", str(args.subset), "--epochs", str(args.epochs), "--sampler", "random"]
    cmd += ["--trials", str(args.trials), "--pruner", pruner, "--jobs", str(args.jobs)]
    cmd += ["--seed", str(args.seed), "--out", str(folder)]
    if args.val_split is not None:
        cmd += ["--val-split", str(args.val_split)]
    threads = 1 if args.jobs > 1 else args.threads
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return cmd, dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path)


def summarise(folder: Path, seconds: float) -> dict:
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    done = [r for r in rows if r["state"] == "complete"]
    best = json.loads((folder / "best.json").read_text())
    return {
        "seconds": seconds,
        "trials": len(rows),
        "complete": len(done),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "epochs_trained": sum(int(r["epochs"] or 0) for r in rows),
        "best_val_acc": max(float(r["val_acc"]) for r in done),
        "best_params": best["sweep"]["params"],
        "best_trial": best["sweep"]["trial"],
        "best_kept_test_acc": best["test"].get("kept_test_acc"),  # measured once, at the end
        "trial_settings": [(r["lr"], r["weight_decay"]) for r in rows],
    }


def run_sweeps(args, out: Path) -> dict[str, float]:
    """Both sweeps (side by side, or one after the other); their wall times in seconds."""
    seconds, started, procs = {}, {}, {}
    one_by_one = args.sequential or args.jobs > 1
    for pruner in PRUNERS:
        cmd, env = command(args, out / pruner, pruner)
        log = open(out / f"{pruner}.log", "w")  # noqa: SIM115 - closed with the process
        started[pruner] = time.perf_counter()
        procs[pruner] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if one_by_one:
            procs[pruner].wait()
            seconds[pruner] = time.perf_counter() - started[pruner]
    for pruner, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"the {pruner} sweep failed: see {out / (pruner + '.log')}")
        seconds.setdefault(pruner, time.perf_counter() - started[pruner])
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sweep-bench", help="folder for both sweeps (new)")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--subset", type=int, default=20000, help="images of each split")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--val-split", type=int, help="held-out images (default: the preset's 5000)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes of each sweep")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each --jobs 1 sweep")
    p.add_argument("--sequential", action="store_true", help="one sweep after the other")
    p.add_argument("--seed", type=int, default=0, help="the random sampler's, and the trials'")
    args = p.parse_args()
    out = Path(args.out)
    drawn = configurations(args.trials, args.seed)
    for pruner in PRUNERS:
        queue_trials(out / pruner, drawn)
    seconds = run_sweeps(args, out)
    (out / "times.json").write_text(json.dumps(seconds) + "\n")  # kept if a summary fails
    report = {k: summarise(out / k, v) for k, v in seconds.items()}
    pruned, full = report["median"], report["none"]
    report["same_trials"] = pruned["trial_settings"] == full["trial_settings"]
    report["time_ratio"] = pruned["seconds"] / full["seconds"]
    report["best_val_acc_gap_points"] = 100 * (full["best_val_acc"] - pruned["best_val_acc"])
    report["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    report["machine"] = {"cpus": os.cpu_count(), "load_after": os.getloadavg()}
    (out / "sweep-bench.json").write_text(json.dumps(report, indent=2) + "\n")
    for name in PRUNERS:
        r = report[name]
        print(
            f"pruner {name}: {r['seconds']:.0f} s, {r['epochs_trained']} epochs trained, "
            f"{r['pruned']} pruned, best val acc {r['best_val_acc']:.4f} (trial {r['best_trial']}; "
            f"its kept weights' test acc, evaluated once: {r['best_kept_test_acc']})"
        )
    print(
        f"time ratio (median / none) {report['time_ratio']:.2f} (contract: at most 0.5); best val "
        f"acc gap {report['best_val_acc_gap_points']:.2f} points (contract: at most 0.3); same "
        f"trials: {report['same_trials']}; written: {out / 'sweep-bench.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
