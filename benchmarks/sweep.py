"""The sweep's contract (issue 28): the same 16 trials over learning rate and weight decay of the
`quick` recipe, on a 20,000-image subset for 4 epochs, with the median pruner and without.

Both sweeps use the random sampler with one seed, so that they draw the same 16 configurations
and only pruning differs (TPE's draws depend on the results, which pruning changes). They run
side by side as two processes of one thread each (so a change in the machine's load hits both
alike), or one after the other with --sequential. Prints, and writes to --out/sweep-bench.json:
each sweep's wall time, epochs trained, trials pruned, best validation accuracy, and the ratios.

    nice -n 19 python benchmarks/sweep.py --out /tmp/sweep-bench
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

SPACE = ["--space", "lr=log:0.02:1", "--space", "weight_decay=log:1e-5:1e-2"]
FIXED = ["--preset", "quick", "--subset", "20000", "--epochs", "4", "--sampler", "random"]


def command(out: Path, pruner: str, trials: int, threads: int) -> tuple[list[str], dict]:
    args = [sys.executable, "-m", "resnetlab", "sweep", *SPACE, *FIXED]
    args += ["--trials", str(trials), "--pruner", pruner, "--out", str(out / pruner)]
    return args, dict(os.environ, OMP_NUM_THREADS=str(threads))


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
        "best_kept_test_acc": best["test"].get("kept_test_acc"),
        "trial_settings": [(r["lr"], r["weight_decay"]) for r in rows],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sweep-bench", help="folder for both sweeps")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each sweep")
    p.add_argument("--sequential", action="store_true", help="one sweep after the other")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, started, procs = {}, {}, {}
    for pruner in ("median", "none"):
        cmd, env = command(out, pruner, args.trials, args.threads)
        log = open(out / f"{pruner}.log", "w")  # noqa: SIM115 - closed with the process
        started[pruner] = time.perf_counter()
        procs[pruner] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if args.sequential:
            procs[pruner].wait()
            results[pruner] = time.perf_counter() - started[pruner]
    for pruner, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"the {pruner} sweep failed: see {out / (pruner + '.log')}")
        results.setdefault(pruner, time.perf_counter() - started[pruner])
    (out / "times.json").write_text(json.dumps(results) + "\n")  # kept if a summary fails
    report = {k: summarise(out / k, v) for k, v in results.items()}
    pruned, full = report["median"], report["none"]
    report["same_trials"] = pruned["trial_settings"] == full["trial_settings"]
    report["time_ratio"] = pruned["seconds"] / full["seconds"]
    report["best_val_acc_gap_points"] = 100 * (full["best_val_acc"] - pruned["best_val_acc"])
    report["machine"] = {"cpus": os.cpu_count(), "load_after": os.getloadavg()}
    (out / "sweep-bench.json").write_text(json.dumps(report, indent=2) + "\n")
    for name in ("median", "none"):
        r = report[name]
        print(
            f"pruner {name}: {r['seconds']:.0f} s, {r['epochs_trained']} epochs trained, "
            f"{r['pruned']} pruned, best val acc {r['best_val_acc']:.4f} (trial {r['best_trial']})"
        )
    print(
        f"time ratio {report['time_ratio']:.2f}, best val acc gap "
        f"{report['best_val_acc_gap_points']:.2f} points, same trials: {report['same_trials']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
