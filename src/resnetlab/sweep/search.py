"""`resnetlab sweep` and `resnetlab.sweep(space, trials=..., **fixed)`: check the input, set up the
sweep folder and the study, run the trials (here, in --jobs processes, or as one of several
machines on a shared study), write trials.csv, best.json and report.html.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from resnetlab.errors import UsageError, WriteError
from resnetlab.fileio import write_json
from resnetlab.rundir import is_run
from resnetlab.sweep.space import parse_space
from resnetlab.sweep.storage import (
    STORAGE_ENV,
    default_storage_url,
    parse_storage,
    require_optuna,
)
from resnetlab.sweep.study import (
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    Plan,
    count_trials,
    open_study,
    run_workers,
    storage_errors,
    work,
)

SWEEP_FILE = "sweep.json"
DEFAULT_TRIALS = 20


def default_sweep_path(study: str, root: str | Path = "runs") -> Path:
    """runs/sweep (the default study), runs/sweep-NAME: the same command finds its sweep again."""
    return Path(root) / ("sweep" if study == "sweep" else f"sweep-{study}")


def sweep(space, trials: int | None = None, **kwargs):
    """Search `space` ({"lr": "log:0.02:1"} or ["lr=log:0.02:1", ...]) over `trials` trials of
    `train()`; the other keywords are run_sweep's and fixed TrainConfig settings. Returns the
    Optuna study (its trials, best_trial, best_params)."""
    study, _ = run_sweep(space, trials, **kwargs)
    return study


def run_sweep(
    space,
    trials: int | None = None,
    *,
    out: str | Path | None = None,
    preset: str | None = None,
    config: str | Path | dict | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    objective: str = "val_acc",
    storage: str | None = None,
    study: str = "sweep",
    jobs: int = 1,
    budget: float | None = None,
    heartbeat: int = 30,
    verbose: bool = True,
    **fixed,
) -> tuple[object, dict]:
    """The sweep end to end; returns (the Optuna study, what `resnetlab sweep` prints)."""
    plan, shown, claim = make_plan(
        space, trials, out=out, preset=preset, config=config, sampler=sampler, pruner=pruner,
        objective=objective, storage=storage, study=study, jobs=jobs, budget=budget,
        heartbeat=heartbeat, verbose=verbose, fixed=fixed,
    )  # fmt: skip
    _scrub_argv(plan)  # trial folders record sys.argv (events.jsonl): never the password
    try:
        Path(plan.out).mkdir(parents=True, exist_ok=True)  # the default SQLite file goes there
    except OSError as e:
        raise WriteError.of(e, plan.out) from None
    with storage_errors(plan):
        the_study = open_study(plan)  # the study made (or checked) once, before any worker
        return _run(the_study, plan, shown, claim, jobs)


def _run(the_study, plan: Plan, shown: str, claim: dict | None, jobs: int):
    from resnetlab.sweep.outputs import write_outputs

    if claim is not None:
        write_json(Path(plan.out) / SWEEP_FILE, claim)
    done = count_trials(the_study)[0]
    if jobs == 1 and plan.storage_url == default_storage_url(plan.out):
        plan.seed = int(plan.base["seed"]) + done  # a fresh sweep here samples reproducibly
    if plan.verbose:
        print(
            f"sweep {plan.study!r}: {plan.trials} trials ({done} already in the study) of "
            f"{', '.join(plan.specs)}; {plan.sampler} sampler, {plan.pruner} pruner, "
            f"{jobs} at a time; folder {plan.out}; storage {shown}",
            flush=True,
        )
    if jobs == 1:
        work(plan)
    else:
        run_workers(plan, jobs)
    return the_study, write_outputs(the_study, plan, shown)


def make_plan(space, trials, *, out, preset, config, fixed, storage, study, **opts):
    """The checked plan and the storage as shown; every mistake is one UsageError line."""
    require_optuna()
    specs = parse_space(space)
    _check_options(opts, trials)
    both = sorted(set(specs) & {k for k, v in fixed.items() if v is not None})
    if both:
        raise UsageError(f"{both[0]} is both searched (--space) and fixed; drop one of them")
    base = _base_config(preset, config, fixed)
    if "epochs" in specs and base.time_limit is not None:  # each trial's budget plans its epochs
        raise UsageError("--time-limit plans each trial's epochs; drop epochs from --space")
    if opts["sampler"] == "grid":
        size = 1
        for p in specs.values():
            size *= len(p.grid())
        trials = min(trials or size, size)
    out = Path(out) if out is not None else default_sweep_path(study)
    url = storage or os.environ.get(STORAGE_ENV) or default_storage_url(out)
    shown = parse_storage(url).shown
    plan = Plan(
        out=str(out),
        specs=[p.spec() for p in specs.values()],
        base=base.to_dict(),
        trials=trials or DEFAULT_TRIALS,
        study=study,
        storage_url=url,
        sampler=opts["sampler"],
        pruner=opts["pruner"],
        objective=opts["objective"],
        deadline=time.time() + 60 * opts["budget"] if opts["budget"] else None,
        heartbeat=opts["heartbeat"],
        verbose=opts["verbose"],
    )
    return plan, shown, claim_folder(out, plan, shown)


def _check_options(opts: dict, trials) -> None:
    for name, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("objective", OBJECTIVES)):
        if opts[name] not in allowed:
            raise UsageError(f"unknown --{name} {opts[name]!r}; use {', '.join(allowed)}")
    for name, value in (("trials", trials), ("jobs", opts["jobs"]), ("budget", opts["budget"])):
        if value is not None and not value > 0:
            raise UsageError(f"--{name} must be positive, got {value}")
    if not (isinstance(opts["heartbeat"], int) and opts["heartbeat"] > 0):
        raise UsageError("--heartbeat must be a positive whole number of seconds")


def _base_config(preset, config, fixed: dict):
    """The settings every trial shares; trials are compared on validation data, never test."""
    from resnetlab.train import make_config
    from resnetlab.train.config import flag_name, read_config_file

    for name in ("epoch_test", "final_test"):
        if fixed.get(name):
            raise UsageError(
                f"a sweep never looks at the test set while it searches; drop --{flag_name(name)} "
                "(the best trial's kept weights are tested once, at its end)"
            )
    base = read_config_file(config) if isinstance(config, (str, Path)) else config
    # the trials measure no test figure at all: the sweep tests the best one's weights at its end
    cfg = make_config(preset, base=base, **dict(fixed, epoch_test=False, final_test=False))
    if not cfg.val_split:
        raise UsageError(
            "a sweep compares trials on validation data and this configuration holds out none; "
            "give --val-split N (the quick preset holds out 5000)"
        )
    return cfg


def claim_folder(out: Path, plan: Plan, shown: str) -> dict | None:
    """SWEEP/sweep.json names the study the folder belongs to; another study is refused. Returns
    the record to write once the study is open (None: the folder has it already)."""
    if is_run(out):
        raise UsageError(f"--out {out} holds a training run, not a sweep; give another --out")
    record = {"study": plan.study, "storage": shown, "objective": plan.objective}
    old = _read(out / SWEEP_FILE)
    if old is not None and (old.get("study"), old.get("storage")) != (plan.study, shown):
        raise UsageError(
            f"--out {out} belongs to the sweep of study {old.get('study')!r} in "
            f"{old.get('storage')}; continue it with --study {old.get('study')} and that "
            "--storage, or give another --out"
        )
    return None if old is not None else dict(record, space=plan.specs)


def _read(path: Path) -> dict | None:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise UsageError(f"{path} is not a sweep's record; give another --out") from None
    return value if isinstance(value, dict) else {}


def _scrub_argv(plan: Plan) -> None:
    storage = parse_storage(plan.storage_url)
    sys.argv[:] = [storage.scrub(a) for a in sys.argv]
