"""Accuracy against time (issue 39, item 4): the `quick` recipe under `--time-limit`, each run a
`resnetlab train` process timed from start to exit, beside the fixed 12-epoch preset.

For each limit: the planned epochs, the plan's estimate, the time summary.json measured, the wall
time of the whole command, whether the plan was shortened, and the kept weights' test accuracy
with and without flip TTA. Prints a Markdown table, writes results.json and, with matplotlib,
accuracy_vs_time.png into --out.

Usage (a quiet machine; the default limits take about 40 minutes plus the fixed run's ~10):
    OMP_NUM_THREADS=2 python benchmarks/time_limit.py --out /tmp/time-limit
    python benchmarks/time_limit.py --limits 1m --no-fixed -- --subset 5000   # a smoke run
Flags after `--` go to every `resnetlab train` (e.g. --seed 1, or --no-amp to run without bf16).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_LIMITS = ["3m", "5m", "10m", "20m"]


def run(out: Path, flags: list[str]) -> dict:
    """One `resnetlab train` into `out`: its summary's figures and the command's wall time."""
    command = [sys.executable, "-m", "resnetlab", "train", "--out", str(out), "--overwrite", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        return {"flags": flags, "error": tail[0] if tail else f"exit {done.returncode}"}
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    limit = summary.get("time_limit", {})
    return {
        "flags": flags,
        "epochs": summary["epochs"],
        "planned_epochs": limit.get("planned_epochs", summary["epochs"]),
        "planned_seconds": limit.get("planned_seconds"),
        "actual_seconds": limit.get("actual_seconds"),
        "wall_seconds": round(wall, 1),
        "shortened_after_epoch": limit.get("shortened_after_epoch"),
        "kept_test_acc": summary.get("kept_test_acc"),
        "kept_test_acc_no_tta": summary.get("kept_test_acc_no_tta"),
    }


def table(rows: list[tuple[str, dict]]) -> str:
    head = (
        "| run | epochs (planned) | estimate s | run s (summary) | wall s (command) | shortened "
        "| test acc, flip TTA | test acc, plain |\n|---|---:|---:|---:|---:|---|---:|---:|"
    )
    lines = [head]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | |")
            continue
        shortened = (
            f"after epoch {r['shortened_after_epoch']}" if r["shortened_after_epoch"] else "no"
        )
        fmt = lambda v, spec: "-" if v is None else format(v, spec)
        lines.append(
            f"| {name} | {r['epochs']} ({r['planned_epochs']}) | {fmt(r['planned_seconds'], '.0f')} "
            f"| {fmt(r['actual_seconds'], '.0f')} | {r['wall_seconds']:.0f} | {shortened} "
            f"| {fmt(r['kept_test_acc'], '.4f')} | {fmt(r['kept_test_acc_no_tta'], '.4f')} |"
        )
    return "\n".join(lines)


def plot(rows: list[tuple[str, dict]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in rows:
        if "error" in r or r["kept_test_acc"] is None:
            continue
        marker = "s" if name == "fixed 12 epochs" else "o"
        ax.plot(r["wall_seconds"] / 60, r["kept_test_acc"], marker, color="C0")
        if r["kept_test_acc_no_tta"] is not None:
            ax.plot(r["wall_seconds"] / 60, r["kept_test_acc_no_tta"], marker, color="C1")
        ax.annotate(name, (r["wall_seconds"] / 60, r["kept_test_acc"]), fontsize=8)
    ax.set_xlabel("wall time of the command (min)")
    ax.set_ylabel("test accuracy (blue: flip TTA, orange: plain)")
    ax.set_title("quick under --time-limit")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", nargs="+", default=DEFAULT_LIMITS)
    parser.add_argument("--fixed", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default="/tmp/resnetlab-time-limit")
    parser.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        metavar="RESULTS_JSON",
        help="run nothing: the table and the plot of earlier runs' results.json files together",
    )
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sources:
        rows = []
        for source in args.sources:
            saved = json.loads(Path(source).read_text(encoding="utf-8"))
            rows += saved.items() if isinstance(saved, dict) else map(tuple, saved)
        rows.sort(key=lambda row: row[1].get("wall_seconds", 0))
        print(table(rows))
        (out / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        plot(rows, out / "accuracy_vs_time.png")
        return 0
    runs = [(f"--time-limit {limit}", ["--time-limit", limit]) for limit in args.limits]
    if args.fixed:
        runs.append(("fixed 12 epochs", []))
    rows = []
    for i, (name, flags) in enumerate(runs):
        result = run(out / f"run{i}", [*flags, *extra])
        rows.append((name, result))
        print(f"{name}: {result}", flush=True)
    print(table(rows))
    # a list of [name, result]: the same limit may be run more than once
    (out / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    plot(rows, out / "accuracy_vs_time.png")
    print(f"written: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
