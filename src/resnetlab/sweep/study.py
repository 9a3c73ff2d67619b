"""The search on Optuna: sampler, pruner, the objective (one `train()` per trial, in its own run
folder SWEEP/trial-0007/) and the worker loop that several processes or machines run on one
study. Optuna is imported here and nowhere in `import resnetlab`.

A worker starts trials until the study holds `--trials` of them (completed, pruned, failed or
running; a trial whose worker died is failed by the heartbeat and queued again, and its copy
counts instead), then waits for the running ones, so that a dead worker's trial is retried rather
than left running for ever. A trial stopped by Ctrl-C is recorded `interrupted` (where it stopped)
and queued again the same way: running the same sweep command again runs it from its start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import queue
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from resnetlab.errors import Interrupted, ResnetlabError, TrainingError, UsageError, first_line
from resnetlab.fileio import write_json
from resnetlab.report.observer import Observer
from resnetlab.rundir import PRUNED_FILE
from resnetlab.sweep.space import Param, parse_space
from resnetlab.sweep.storage import open_storage, parse_storage

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "asha", "none")
OBJECTIVES = {"val_acc": "maximize", "val_loss": "minimize"}
INTERRUPTED = "interrupted"  # the user attribute of a trial stopped by Ctrl-C: where it stopped
# settings that may differ between machines that share a study: where things are, what is logged
LOCAL_SETTINGS = ("data_dir", "device", "tensorboard", "mlflow")


@dataclass
class Plan:
    """Everything a worker needs; picklable, so that --jobs can hand it to its processes."""

    out: str
    specs: list[str]  # the --space texts, normalised
    base: dict  # the fixed settings: a TrainConfig as a dict
    trials: int
    study: str
    storage_url: str
    sampler: str = "tpe"
    pruner: str = "median"
    objective: str = "val_acc"
    deadline: float | None = None  # time.time() after which no trial starts (--budget)
    heartbeat: int = 30
    seed: int | None = None  # the sampler's; None where several workers sample
    verbose: bool = True

    def space(self) -> dict[str, Param]:
        return parse_space(self.specs)

    def setup(self) -> dict:
        """What every worker of one study must agree on (kept in the study's user attributes)."""
        base = {k: v for k, v in self.base.items() if k not in LOCAL_SETTINGS}
        return json.loads(json.dumps({"space": self.specs, "base": base}))


def trial_folder(out: str | Path, number: int) -> Path:
    return Path(out) / f"trial-{number:04d}"


def trial_config(base: dict, params: dict):
    """The fixed settings with a trial's values: `resnetlab train --config best.json` reruns it."""
    from resnetlab.train import make_config

    cfg = make_config(base=base, **params)  # another model drops the preset's model_kwargs
    nones = {k: v for k, v in params.items() if v is None}  # make_config ignores None values
    return dataclasses.replace(cfg, **nones) if nones else cfg


def rerun_config(base: dict, params: dict):
    """A trial's configuration as best.json keeps it: the trial's, with its final test back on,
    so that `resnetlab train --config best.json` reports the test figure of its rerun."""
    return dataclasses.replace(trial_config(base, params), final_test=True)


def make_sampler(plan: Plan):
    import optuna

    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.seed)
    if plan.sampler == "grid":
        grid = {name: p.grid() for name, p in plan.space().items()}
        return optuna.samplers.GridSampler(grid, seed=plan.seed)
    return optuna.samplers.TPESampler(seed=plan.seed, constant_liar=True)  # workers side by side


def make_pruner(plan: Plan):
    import optuna

    epochs = int(plan.base["epochs"])
    if plan.pruner == "median":  # from the 4th trial on, after each trial's first epoch
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if plan.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def quiet_optuna() -> None:
    """Optuna's own log lines and its 'experimental' warnings off: the sweep says what happens."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is our line, not theirs
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


class Objective:
    """One trial: its settings from the sampler, `train()` into its folder, each epoch's
    validation figure reported to the pruner; a pruned trial leaves pruned.json in its folder."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.space = plan, plan.space()
        self.key = plan.objective  # the metrics row's column: val_acc or val_loss
        self.better = max if OBJECTIVES[plan.objective] == "maximize" else min
        self.current: int | None = None  # the number of the trial under way, for Ctrl-C

    def __call__(self, trial) -> float:

        from resnetlab.train import train

        self.current = trial.number
        params = {name: p.suggest(trial) for name, p in self.space.items()}
        folder = trial_folder(self.plan.out, trial.number)
        trial.set_user_attr("run", folder.name)
        trial.set_user_attr("host", platform.node())
        cfg = trial_config(self.plan.base, params)
        figures: list[float] = []
        started = time.perf_counter()

        pruning = EpochReports(
            lambda row: self._report(trial, folder, row, figures, started, cfg.epochs)
        )
        try:
            train(cfg, out=folder, overwrite=True, verbose=False, observers=[pruning])
        except TrainingError as e:  # e.g. a learning rate so high that the loss is not finite
            trial.set_user_attr("error", first_line(e))
            raise
        except (Interrupted, KeyboardInterrupt):  # Ctrl-C: _work queues the trial again
            where = pruning.stopped or "before its first epoch"
            trial.set_user_attr(INTERRUPTED, f"interrupted {where} (Ctrl-C); queued again")
            raise
        return self.better(figures)

    def _report(
        self, trial, folder, row: dict, figures: list[float], started: float, epochs: int
    ) -> None:
        """One epoch's validation figure to the study; raises TrialPruned when it says so (the
        trial's folder then holds pruned.json). A trial that ran its last epoch is complete
        whatever the pruner says: it has nothing left to save."""
        import optuna

        figures.append(row[self.key])
        trial.report(row[self.key], row["epoch"])
        trial.set_user_attr("epochs", row["epoch"])
        if row["epoch"] < epochs and trial.should_prune():
            record = {
                "trial": trial.number,
                "pruned_after_epoch": row["epoch"],
                self.key: row[self.key],
                f"best_{self.key}": self.better(figures),
                "pruner": self.plan.pruner,
                "seconds": time.perf_counter() - started,
            }
            write_json(folder / PRUNED_FILE, record)
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")


class EpochReports(Observer):
    """An observer of a trial's run: each saved epoch's metrics row goes to `report`, which may
    raise to stop the run there (optuna.TrialPruned); `stopped` says where Ctrl-C stopped it."""

    def __init__(self, report) -> None:
        self.report = report
        self.stopped: str | None = None

    def on_epoch_end(self, state, row: dict, is_best: bool) -> None:
        self.report(row)

    def on_interrupt(self, state) -> None:
        from resnetlab.train.engine import position

        self.stopped = position(state)  # "at epoch 2, step 5"


def count_trials(study) -> tuple[int, int, int]:
    """(trials that count towards --trials, running, waiting). A failed trial that was queued
    again is replaced by its copy."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    replaced = {n for t in trials for n in Retry.retry_history(t)}
    counted = [t for t in trials if t.state != TrialState.WAITING and t.number not in replaced]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return len(counted), running, waiting


def describe_trial(trial, objective: str) -> str:
    """One line about a trial that ended, e.g. `trial 3 complete: lr=0.1: val_acc 0.8123 ...`."""
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    epochs = trial.user_attrs.get("epochs", 0)
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else float("nan")
    )
    state = state_name(trial)
    if trial.user_attrs.get("error"):
        return f"trial {trial.number} failed: {params}: {trial.user_attrs['error']}"
    if state == "interrupted":
        return f"trial {trial.number} {trial.user_attrs[INTERRUPTED]}: {params}"
    value = trial.value if trial.value is not None else trial.intermediate_values.get(epochs)
    figure = f"{objective} {value:.4f}" if value is not None else "no figure"
    unit = "epoch" if epochs == 1 else "epochs"
    return f"trial {trial.number} {state}: {params}: {figure} ({epochs} {unit}, {seconds:.0f} s)"


def state_name(trial) -> str:
    """complete, pruned, failed, interrupted (failed by Ctrl-C, and queued again), running or
    waiting."""
    name = trial.state.name.lower()
    if name == "fail":
        return "interrupted" if trial.user_attrs.get(INTERRUPTED) else "failed"
    return name


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def open_study(plan: Plan, *, check: bool = True):
    """The study in its storage (made if missing), with this plan's sampler and pruner. Workers
    whose settings differ from the study's are refused in one line."""
    import optuna

    quiet_optuna()
    storage = parse_storage(plan.storage_url)
    on_stale = _mark_stale_folder(plan)
    rdb = open_storage(storage, heartbeat=plan.heartbeat, on_stale=on_stale)
    direction = OBJECTIVES[plan.objective]
    study = optuna.create_study(
        study_name=plan.study,
        storage=rdb,
        direction=direction,
        sampler=make_sampler(plan),
        pruner=make_pruner(plan),
        load_if_exists=True,
    )
    if not check:
        return study
    if study.direction.name.lower() != direction:
        raise UsageError(
            f"study {plan.study!r} in {storage.shown} is a {study.direction.name.lower()} "
            f"study; this sweep's --objective {plan.objective} would {direction}: "
            "give its --objective or another --study"
        )
    have, want = study.user_attrs.get("resnetlab"), plan.setup()
    if have is None:
        study.set_user_attr("resnetlab", want)
    elif have != want:
        raise UsageError(_differs(plan.study, storage.shown, have, want))
    return study


def _differs(name: str, where: str, have: dict, want: dict) -> str:
    keys = ["space"] if have.get("space") != want.get("space") else []
    old, new = have.get("base", {}), want.get("base", {})
    keys += sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(
        f"{k} {json.dumps(have.get(k, old.get(k)))} (here {json.dumps(want.get(k, new.get(k)))})"
        for k in keys[:3]
    )
    return (
        f"study {name!r} in {where} was started with other settings: {shown}; give the same "
        "--space and train settings to continue or join it, or another --study"
    )


def _mark_stale_folder(plan: Plan):
    """The heartbeat's note in a dead trial's run folder (where this machine holds it)."""

    def mark(study, trial) -> None:
        from resnetlab.rundir import record_event

        folder = trial_folder(plan.out, trial.number)
        if folder.is_dir():
            with contextlib.suppress(OSError):
                record_event(
                    folder,
                    "failed",
                    error="WorkerLost",
                    message="its worker stopped (no heartbeat); the trial is queued again",
                )

    return mark


def work(plan: Plan, worker: int = 0, threads: int | None = None) -> None:
    """Run trials of the study until it holds plan.trials (or the budget is spent), then wait for
    the running ones. One process of `--jobs N` (threads: its share of the cores) or a machine."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    with storage_errors(plan):
        _work(plan, worker)


@contextlib.contextmanager
def storage_errors(plan: Plan):
    """The database lost in the middle of a sweep: one line (no password), and how to go on."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as e:
        storage = parse_storage(plan.storage_url)
        cause = storage.scrub(first_line(getattr(e, "orig", None) or e, 160))
        raise ResnetlabError(
            f"lost {storage.where()}: {cause}; once it is back, run the same command again to "
            "continue the sweep (the trial that was running is failed and retried)"
        ) from None


def _work(plan: Plan, worker: int) -> None:
    study = open_study(plan, check=False)
    objective = Objective(plan)
    say = _printer(plan, worker)
    while plan.deadline is None or time.time() < plan.deadline:
        counted, running, waiting = count_trials(study)
        if counted >= plan.trials and not waiting:
            if not running:
                break
            _fail_stale(study)  # a dead worker's trial: failed and queued again, or still live
            time.sleep(min(plan.heartbeat, 5))
            continue
        try:
            study.optimize(
                objective,
                n_trials=1,
                catch=(TrainingError,),  # a diverging trial fails; the sweep goes on
                callbacks=[lambda s, t: say(describe_trial(t, plan.objective))],
                gc_after_trial=True,
            )
        except (Interrupted, KeyboardInterrupt):
            raise _interrupted(study, plan, objective.current) from None
        if plan.sampler == "grid" and _grid_done(study):
            break


def _interrupted(study, plan: Plan, number: int | None) -> Interrupted:
    """Ctrl-C during a sweep: the trial under way (Optuna failed it) is queued again, not
    counted towards --trials; the way on is the same sweep command, not its trial's run folder."""
    from optuna.trial import TrialState

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    what = "the sweep was interrupted"
    if trial is not None and trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED):
        queue_again(study, trial)
        what = f"the sweep was interrupted during trial {trial.number}, which will run again"
    ended = (TrialState.COMPLETE, TrialState.PRUNED)  # not another worker's, failing as we speak
    done = sum(t.state in ended for t in study.get_trials(deepcopy=False))
    return Interrupted(
        f"{what}; {done} of {plan.trials} trials done: run the same `resnetlab sweep` command "
        "again to continue"
    )


def queue_again(study, trial) -> None:
    """A copy of `trial` (its settings) waits in the study, marked as its retry the way Optuna's
    heartbeat marks a dead worker's trial (count_trials then counts the copy instead)."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    keep = {k: v for k, v in trial.user_attrs.items() if k not in (INTERRUPTED, "error")}
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=keep,
            system_attrs={
                **trial.system_attrs,
                "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                "retry_history": history,
            },
        )
    )


def _fail_stale(study) -> None:
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)


def _grid_done(study) -> bool:
    sampler = study.sampler
    return hasattr(sampler, "is_exhausted") and sampler.is_exhausted(study)


def _printer(plan: Plan, worker: int):
    def say(text: str) -> None:
        if plan.verbose:
            prefix = f"[worker {worker}] " if worker else ""
            print(prefix + text, flush=True)

    return say


def worker_main(plan: Plan, worker: int, threads: int, errors) -> None:
    """A --jobs process: its cores' share of threads, then `work`; a failure goes back to the
    parent as (worker, exit status, one line)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        work(plan, worker, threads)
    except ResnetlabError as e:
        errors.put((worker, e.exit_code, " ".join(str(e).splitlines())))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(plan: Plan, jobs: int) -> None:
    """`jobs` processes side by side on this machine, each with cores // jobs threads."""
    import multiprocessing as mp

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // jobs)
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [
        ctx.Process(target=worker_main, args=(plan, i + 1, threads, errors), daemon=False)
        for i in range(jobs)
    ]
    for p in procs:
        p.start()
    interrupted = False
    for p in procs:
        while p.exitcode is None:
            try:
                p.join()
            except KeyboardInterrupt:  # Ctrl-C reaches the workers too: each queues its trial
                interrupted = True
    lost = [i + 1 for i, p in enumerate(procs) if p.exitcode and p.exitcode < 0]
    if lost and plan.verbose:
        print(
            f"worker(s) {lost} were killed; their trials were failed and queued again", flush=True
        )
    try:
        _, code, line = errors.get(timeout=1)
    except queue.Empty:
        if interrupted:
            raise Interrupted(
                "the sweep was interrupted: run the same `resnetlab sweep` command again to continue"
            ) from None
        return
    error = {2: UsageError, Interrupted.exit_code: Interrupted}.get(code, ResnetlabError)(line)
    error.exit_code = code
    raise error
