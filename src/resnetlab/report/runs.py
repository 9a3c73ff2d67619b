"""`resnetlab runs [DIR]`: the run folders under DIR (default `runs`), newest first.

A run folder is a folder holding config.json. Its state:
    finished     summary.json exists (the run reached its end)
    interrupted  no summary; the last event is an interrupt (Ctrl-C): `--resume` continues it
    failed       no summary; the last event is a failure (non-finite loss, out of memory, ...)
    unfinished   no summary and no such event: still running, or killed without a word
    pruned       a sweep stopped it early on its validation figure (pruned.json, `resnetlab sweep`)

A sweep's folder (`resnetlab sweep`) is listed through its trials, one level below (each row
names its sweep; a trial's test acc reads "not tested": trials measure none), and below the table
in a line of its own: its trials' states, its best trial and the test figure of that trial's kept
weights, evaluated once after the search.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

from resnetlab.errors import UsageError
from resnetlab.rundir import (
    CONFIG_FILE,
    PRUNED_FILE,
    SUMMARY_FILE,
    count_epochs,
    is_run,
    read_config,
    read_events,
    read_json,
    read_summary,
)

STATES = ("finished", "interrupted", "failed", "unfinished", "pruned")
# a finished run's summary.json says "test_evaluated": false when it ran with --no-final-test
NO_TEST = (
    "the test set was not evaluated (--no-final-test, as in a sweep's trials: the sweep tests "
    "its best trial's kept weights once, at its end)"
)


def has_test_figures(summary: dict) -> bool:
    """Whether a run's summary holds test figures (False: it ran with --no-final-test)."""
    return summary.get("test_evaluated", True) is not False


def run_state(folder: str | Path, events: list[dict] | None = None) -> str:
    folder = Path(folder)
    if (folder / SUMMARY_FILE).is_file():
        return "finished"
    if (folder / PRUNED_FILE).is_file():
        return "pruned"
    events = read_events(folder) if events is None else events
    last = events[-1]["event"] if events else None
    if last == "interrupt":
        return "interrupted"
    if last == "failed":
        return "failed"
    return "unfinished"


def _epochs_planned(config: dict) -> int | None:
    """The configuration's epochs, or those of a --time-limit plan shortened during the run."""
    plan = config.get("plan")
    cut = plan.get("shortened") if isinstance(plan, dict) else None
    return cut.get("epochs") if isinstance(cut, dict) else config.get("config", {}).get("epochs")


def describe_run(folder: str | Path) -> dict:
    """One row of the listing: what `resnetlab runs --json` prints per run."""
    folder = Path(folder)
    config = read_config(folder)
    cfg = config.get("config", {})
    summary = read_summary(folder)
    events = read_events(folder)
    started = events[0]["time"] if events else None
    if started is None:  # runs made before events.jsonl: the config file's time
        started = datetime.fromtimestamp(
            (folder / CONFIG_FILE).stat().st_mtime, timezone.utc
        ).isoformat(timespec="seconds")
    return {
        "run": str(folder),
        "name": folder.name,
        "state": run_state(folder, events),
        "model": cfg.get("model"),
        "data": cfg.get("data"),
        "preset": cfg.get("preset"),
        "epochs": summary.get("epochs", count_epochs(folder)),
        "epochs_planned": _epochs_planned(config),
        "kept_test_acc": summary.get("kept_test_acc"),
        "test_evaluated": has_test_figures(summary) if summary else None,
        "kept_weights": summary.get("kept_weights"),
        "sweep": str(folder.parent) if is_sweep(folder.parent) else None,
        "seconds": summary.get("total_seconds"),
        "started": started,
        "last_modified": max(
            (p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0
        ),
    }


def is_sweep(folder: str | Path) -> bool:
    """A `resnetlab sweep` folder: its sweep.json names the study its trials belong to."""
    return Path(folder, "sweep.json").is_file()


def describe_sweep(folder: Path) -> dict:
    """A sweep folder in brief: its study, its trials' states, its best trial (best.json) and the
    test figure of that trial's kept weights, evaluated once after the search."""
    record, best = read_json(folder / "sweep.json"), read_json(folder / "best.json")
    try:
        with open(folder / "trials.csv", newline="", encoding="utf-8") as f:
            states = [r.get("state") for r in csv.DictReader(f)]
    except OSError:
        states = []
    return {
        "sweep": str(folder),
        "study": record.get("study"),
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "best": best.get("sweep"),
        "test": best.get("test"),
    }


def list_sweeps(root: str | Path = "runs") -> list[dict]:
    """The sweep folders in `root` (and `root` itself), described."""
    root = Path(root)
    found = [root] if is_sweep(root) else []
    found += [c for c in sorted(root.iterdir()) if c.is_dir() and is_sweep(c)]
    return [describe_sweep(f) for f in found]


def format_sweep(s: dict) -> str:
    """One line: `sweep runs/sweep (study 'sweep'): 12 complete, 4 pruned; best trial 3, ...`."""
    trials = ", ".join(f"{n} {state}" for state, n in s["trials"].items()) or "no trials.csv"
    line = f"sweep {s['sweep']} (study {s['study']!r}): {trials}"
    best, test = s["best"] or {}, s["test"] or {}
    if best.get("value") is not None:
        line += f"; best trial {best.get('trial')}, {best.get('objective')} {best['value']:.4f}"
    if test.get("kept_test_acc") is not None:
        line += f", test acc of its kept weights (evaluated once) {test['kept_test_acc']:.4f}"
    return line


def list_runs(root: str | Path = "runs") -> list[dict]:
    """Every run folder in `root` and one level below (an experiment's nets), newest first."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(
            f"{root} is not a folder; give the folder that holds your run folders (default: runs)"
        )
    folders = [root] if is_run(root) else []
    for child in sorted(root.iterdir()):
        if child.is_dir():
            if is_run(child):
                folders.append(child)
            else:  # an experiment's folder (degradation: one run per net)
                folders += [g for g in sorted(child.iterdir()) if g.is_dir() and is_run(g)]
    rows = [describe_run(f) for f in folders]
    rows.sort(key=lambda r: (r["started"] or "", r["last_modified"]), reverse=True)
    return rows


def format_runs(rows: list[dict], root: str | Path = "runs") -> str:
    if not rows:
        return f"no run folders in {root}"
    root = Path(root)

    def name(r):
        p = Path(r["run"])
        try:
            return str(p.relative_to(root)) if p != root else p.name
        except ValueError:
            return str(p)

    def acc(r):
        if r.get("test_evaluated") is False:  # --no-final-test: a sweep's trial
            return "not tested"
        return f"{r['kept_test_acc']:.4f}" if r["kept_test_acc"] is not None else "-"

    def secs(r):
        return f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"

    table = [
        ("run", "model", "data", "preset", "epochs", "test acc", "seconds", "state", "started")
    ]
    for r in rows:
        table.append(
            (
                name(r),
                str(r["model"]),
                str(r["data"]),
                str(r["preset"]),
                f"{r['epochs']}/{r['epochs_planned']}",
                acc(r),
                secs(r),
                r["state"],
                (r["started"] or "-")[:19],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {4, 5, 6}
    return "\n".join(
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in table
    )
