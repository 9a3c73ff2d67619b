"""`train(cfg)`: one run end to end — parts, run folder, `fit` with its observers, the kept
weights' final figures.

This is what `resnetlab train` calls; Python users call it the same way:

    from resnetlab.train import make_config, train
    summary = train(make_config("quick", epochs=2, subset=2000), out="runs/try")
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from resnetlab.distributed.group import init_from_env, session, shared
from resnetlab.errors import (
    CheckpointError,
    Interrupted,
    TrainingError,
    UsageError,
    WriteError,
    plural,
)
from resnetlab.inference.explain import write_mistakes_cam
from resnetlab.report.console import Console
from resnetlab.report.observer import Observer
from resnetlab.report.sinks import check_sinks, make_observers
from resnetlab.rundir import (
    BEST_WEIGHTS,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_WEIGHTS,
    REPORT_FILE,
    SUMMARY_FILE,
    read_events,
)
from resnetlab.train.checkpoint import check_resume_world_size, load_checkpoint, make_checkpoint
from resnetlab.train.config import TrainConfig
from resnetlab.train.engine import Schedule, TrainState, fit, position
from resnetlab.train.run import RunDir, default_run_path
from resnetlab.train.setup import Parts, build, data_identity
from resnetlab.train.timing import Pacer, Timekeeper, current_plan, plan_for_time, time_summary
from resnetlab.weights import load_weights

NAMED = 20  # unreadable images named in summary.json (all are counted)


def train(
    cfg: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    json_output: bool = False,
    verbose: bool = True,
    observers: Sequence[Observer] = (),
    timekeeper: Timekeeper | None = None,
) -> dict:
    """Train as `cfg` says (or continue the run in `resume`); returns the summary dict.
    `observers` hear the loop too (report/observer.py), each after the epoch is saved; what one
    raises stops the run there (a sweep prunes a trial this way). `timekeeper`: the clock of the
    run's wall time and of --time-limit, with what the process spent before this call
    (train/timing.py; default: time.perf_counter, nothing before)."""
    timekeeper = timekeeper or Timekeeper()
    started = timekeeper.now()
    cfg, checkpoint = _configuration(cfg, resume)
    check_sinks(cfg)  # a missing extra, an unreachable server: one line before anything is made
    dist = init_from_env(cfg.device)
    # a lost peer becomes one clear error; the process group is left and the run folder unlocked at the end
    with session(dist), RunDir.locks_released_at_exit():
        saved_world = checkpoint.get("world_size", 1) if checkpoint is not None else None
        if checkpoint is not None:
            check_resume_world_size(saved_world, dist, resume, elastic=cfg.streamed)
        console = Console(
            sys.stderr if json_output else sys.stdout,
            verbose and dist.is_main,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
        )
        if saved_world not in (None, dist.world_size):  # streamed data: an elastic resume
            console.say(
                f"resuming with {dist.world_size} {plural(dist.world_size, 'process', 'processes')} "
                f"(trained with {saved_world}): the same global batches of the same samples; "
                "batch-norm statistics are taken over each process's share, so the figures "
                "differ slightly from an unchanged count"
            )
        planner = functools.partial(
            plan_for_time,
            timekeeper=timekeeper,
            spent=lambda: timekeeper.startup + timekeeper.now() - started,
        )
        parts = build(cfg, dist, checkpoint=checkpoint, say=console.say, planner=planner)
        if checkpoint is not None and checkpoint.get("plan"):
            parts.plan = checkpoint["plan"]  # what the first run left: its limit less time used
            parts.plan["startup_seconds"] += round(timekeeper.startup, 3)
        console.epochs = current_plan(parts.plan).epochs if parts.plan else parts.cfg.epochs
        run = (
            RunDir.open(resume, enabled=dist.is_main)
            if checkpoint is not None
            else RunDir.create(
                out or default_run_path(cfg.preset), overwrite=overwrite, enabled=dist.is_main
            )
        )
        try:
            return _train(
                parts, run, console, list(observers), started=started, timekeeper=timekeeper
            )
        except (
            WriteError
        ) as e:  # no space, a read-only or removed folder: the files there are intact
            raise _with_resume_hint(e) from None


def _with_resume_hint(error: WriteError) -> WriteError:
    folder = Path(error.filename).parent if error.filename else None
    if folder is None or not (folder / CHECKPOINT_FILE).is_file():
        return error
    return WriteError(
        f"{error}; once it can be written, continue with: resnetlab train --resume {folder}",
        error.errno,
        error.filename,
    )


def refuse_with_resume(given: list[str]) -> None:
    """--resume continues a run with its saved settings: anything else given with it is refused,
    named as the caller knows it (flags on the command line, arguments in Python)."""
    if given:
        raise UsageError(
            f"--resume continues a run with its saved settings; drop {', '.join(given)}"
        )


def _configuration(cfg: TrainConfig | None, resume) -> tuple[TrainConfig, dict | None]:
    """The run's configuration, and its checkpoint when resuming (a resumed run keeps its settings)."""
    if resume is None:
        if cfg is None:
            raise UsageError("train() needs a configuration or a run folder to resume")
        return cfg, None
    try:
        checkpoint = load_checkpoint(resume)
    except CheckpointError:  # a folder a live run holds is named as such, not by what it lacks yet
        held = RunDir(resume)
        held.lock()
        held.release()
        raise
    saved = TrainConfig.from_dict(checkpoint["config"])
    refuse_with_resume(["cfg"] if cfg is not None and cfg.to_dict() != saved.to_dict() else [])
    epochs = current_plan(checkpoint["plan"]).epochs if checkpoint.get("plan") else saved.epochs
    _refuse_finished(Path(resume), saved, epochs, checkpoint["state"].get("epoch", 0))
    return saved, checkpoint


def _finished(folder: Path) -> bool:
    """Whether a run did all its finishing work: summary.json, its 'finish' event after its last
    start or resume, and report.html (the last file it writes). A run stopped in between (killed
    while writing its report) resumes to finish it."""
    if not (folder / SUMMARY_FILE).exists() or not (folder / REPORT_FILE).exists():
        return False
    events = [e["event"] for e in read_events(folder)]
    since = [e for e in events[::-1] if e in ("start", "resume", "finish")][:1]
    return since == ["finish"]


def _refuse_finished(resume: Path, cfg: TrainConfig, epochs: int, epoch: int) -> None:
    """A finished run (all its `epochs` done, its finishing work too) has nothing to continue:
    resuming it would redo its finishing work. Refused before anything is written."""
    folder = resume if resume.is_dir() else resume.parent
    if epoch < epochs or not _finished(folder):
        return
    kept = BEST_WEIGHTS if (folder / BEST_WEIGHTS).exists() else MODEL_WEIGHTS
    init = " --init default" if cfg.init == "whiten" else ""
    raise UsageError(
        f"{folder} finished at epoch {epoch}; train more with a new run from its weights "
        f"(resnetlab train --config {folder / CONFIG_FILE} --init-from {folder / kept}{init} "
        f"--epochs N --out NEW_RUN), or start a new run with --out"
    )


def _train(
    parts: Parts,
    run: RunDir,
    console: Console,
    extra: list[Observer],
    *,
    started: float,
    timekeeper: Timekeeper,
) -> dict:
    """The parts, the loop and the run folder, wired: one list of observers hears the loop."""
    cfg = parts.cfg
    saver = Saver(parts, run, started=started, clock=timekeeper.now)
    observers = make_observers(
        cfg,
        run=run,
        state=parts.state,
        console=console,
        writer=saver,
        extra=extra,
        mistakes_figure=write_mistakes_cam,
    )
    _start(parts, run, console)
    if parts.capture_fallback is not None:  # a capture that fails mid-run is told to them all
        parts.capture_fallback.observers = observers
    schedule, epochs, pacer = Schedule(cfg.schedule, cfg.lr, cfg.warmup), cfg.epochs, None
    if parts.plan is not None:  # --time-limit: the plan (perhaps shortened), checked each epoch
        pacer = Pacer(
            parts.plan,
            schedule,
            parts.loaders.train,
            timekeeper,
            used=lambda: parts.plan["startup_seconds"] + saver.wall_seconds(),
            dist=parts.dist,
        )
        schedule, epochs = pacer.schedule(), pacer.epochs
        change = pacer(parts.state, starting=True) if _resumed(parts.state) else None
        if change is not None:  # a resume with less time left than the rest of the plan takes
            schedule, epochs = change.schedule, change.epochs
            for observer in observers:
                observer.on_replan(change.event)
    try:
        fit(
            parts.step,
            parts.evaluator,
            parts.loaders if cfg.epoch_test else parts.loaders._replace(test=None),
            parts.state,
            schedule,
            epochs,
            parts.dist,
            observers,
            pace=pacer,
        )
        summary = finish(parts, run, saver)
        for (
            observer
        ) in observers:  # the figures, closing lines, report, ...: a failure fails the run
            observer.on_finish(summary, saver.final, parts.splits.test)
    except Interrupted as e:
        # said once, by the CLI (not as an error): where it stopped, that it is saved, how to go on
        resume = resume_command(parts, run)
        raise shared(Interrupted(f"{e}: checkpoint saved; resume with: {resume}")) from None
    except torch.cuda.OutOfMemoryError:
        error = TrainingError(
            f"CUDA ran out of memory at batch {cfg.batch_size}; try a smaller --batch-size"
        )
        _failed(observers, error)
        raise error from None
    except BaseException as e:  # a non-finite loss, a lost peer, a failed write, a second Ctrl-C
        _failed(observers, e)
        raise
    if parts.plan is not None:  # the plan's estimate ends with report.html: so does its measure
        summary["time_limit"] = time_summary(parts.plan, saver.wall_seconds(), parts.state.epoch)
        run.write_summary(summary)
    console.say(f"run folder: {run.path}")
    return summary


def _failed(observers: list[Observer], error: BaseException) -> None:
    for observer in observers:
        observer.on_failure(error)


def _resumed(state: TrainState) -> bool:
    return state.epoch > 0 or state.step_in_epoch > 0


def _start(parts: Parts, run: RunDir, console: Console) -> None:
    cfg, state = parts.cfg, parts.state
    run.write_config(parts.describe())
    if _resumed(state):
        console.say(f"resuming {run.path}, stopped {position(state)}")
    else:
        console.say(
            f"training {cfg.model} on {cfg.data} ({len(parts.splits.train)} examples, "
            f"{len(parts.splits.test)} test) on {parts.device}{' with bf16' if parts.amp else ''}, "
            f"{parts.dist.world_size} {plural(parts.dist.world_size, 'process', 'processes')}; "
            f"run folder {run.path}"
        )


def resume_command(parts: Parts, run: RunDir) -> str:
    nproc = f" --nproc {parts.dist.world_size}" if parts.dist.enabled else ""
    return f"resnetlab train{nproc} --resume {run.path}"


class Saver(Observer):
    """The run folder as training goes: metrics, the best weights on validation and a checkpoint
    at every epoch end, a checkpoint when interrupted (writes happen on rank 0: the folder's
    `enabled`). It keeps the test evaluations of the epochs whose weights may be kept."""

    def __init__(
        self, parts: Parts, run: RunDir, *, started: float, clock=time.perf_counter
    ) -> None:
        self.parts, self.run, self.clock = parts, run, clock
        # the run's wall time: the earlier processes' (from the checkpoint), then this one's
        self.earlier_seconds, self.started = parts.state.wall_seconds, started
        self.test_results: dict[int, dict] = {}  # epoch -> its test evaluation, run here
        self.final: dict = {}  # the kept weights' final test evaluation (set by `finish`)

    def wall_seconds(self) -> float:
        """Wall time of the whole run so far: every process's, each from its start."""
        return self.earlier_seconds + self.clock() - self.started

    def checkpoint(self, state: TrainState) -> dict:
        p = self.parts
        state.wall_seconds = self.wall_seconds()  # a resumed process counts on from here
        return make_checkpoint(
            p.cfg,
            p.raw_model,
            p.optimizer,
            state,
            p.dist.world_size,
            average=p.average,
            policy={"amp": p.amp, "channels_last": p.channels_last},
            plan=p.plan,
            identity=data_identity(p.cfg, p.splits),
        )

    def on_evaluate(self, epoch: int, split: str, result: dict) -> None:
        if split == "test":
            self.test_results[epoch] = result

    def on_epoch_end(self, state: TrainState, row: dict, is_best: bool) -> None:
        # only the last and the best epoch's can be the kept weights
        for epoch in [e for e in self.test_results if e not in (state.epoch, state.best_epoch)]:
            del self.test_results[epoch]
        self.run.write_metrics(state.history)
        if is_best:
            self.run.save_weights(
                "best.safetensors",
                self.parts.weights.state_dict(),
                dict(self.parts.meta, epoch=row["epoch"]),
            )
        self.run.save_checkpoint(self.checkpoint(state))

    def on_interrupt(self, state: TrainState) -> None:
        self.run.save_checkpoint(self.checkpoint(state))

    def on_replan(self, event: dict) -> None:
        self.run.write_config(self.parts.describe())  # its plan now says how it was shortened

    def on_fallback(self, reason: str) -> None:
        self.run.write_config(self.parts.describe())  # config.json says the run went op by op


def _load_best(parts: Parts, run: RunDir) -> None:
    """The best weights on validation into the evaluated model, on every rank (rank 0's file)."""
    best_state, _ = (
        load_weights(run.file("best.safetensors")) if parts.dist.is_main else (None, None)
    )
    if (
        parts.dist.enabled
    ):  # every rank evaluates the same weights: broadcast rank 0's file contents
        holder = [best_state]
        torch.distributed.broadcast_object_list(holder, src=0)
        best_state = holder[0]
    parts.weights.load_state_dict(best_state)


def finish(parts: Parts, run: RunDir, saver: Saver) -> dict:
    """After the last epoch: the final weights, then the kept weights (best on validation when
    there is a split) on the test set (with --tta's views, and without), and summary.json. A plain
    test figure is that of its epoch's evaluation when this process ran it: the same weights on
    the same data, not evaluated twice. With --no-final-test no test figure is measured: the
    summary says "test_evaluated": false. The observers' on_finish follows (plots, report)."""
    cfg, state, weights = parts.cfg, parts.state, parts.weights
    run.save_weights("model.safetensors", weights.state_dict(), dict(parts.meta, epoch=state.epoch))
    last = state.history[-1]
    if "test_acc" not in last and cfg.final_test:  # --no-epoch-test: the last weights', now
        at_end = saver.test_results[state.epoch] = parts.evaluator(parts.loaders.test)
        last = dict(last, test_loss=at_end["loss"], test_acc=at_end["acc"])
    summary = {
        "run_dir": str(run.path),
        "model": cfg.model,
        "data": cfg.data,
        "preset": cfg.preset,
        "device": str(parts.device),
        "epochs": state.epoch,
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        "test_loss": last.get("test_loss"),
        "test_acc": last.get("test_acc"),
        "examples_per_sec": sum(r["examples"] for r in state.history)
        / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds,
        "params": sum(p.numel() for p in weights.parameters()),
    }
    if any("skipped" in r for r in state.history):  # streamed data: training images not decoded
        summary.update(_bad_training_images(parts))
    kept, kept_epoch = "model.safetensors", state.epoch
    if parts.loaders.val is not None:
        _load_best(parts, run)
        kept, kept_epoch = "best.safetensors", state.best_epoch
        summary.update(
            val_acc=last["val_acc"], best_epoch=state.best_epoch, best_val_acc=state.best_val_acc
        )
    summary["kept_weights"] = kept
    if cfg.final_test:
        final = _final_test(parts, saver, summary, kept_epoch)
    else:  # --no-final-test: no test figure anywhere in the run (a sweep's trial)
        for key in ("test_loss", "test_acc"):
            del summary[key]
        final = {}
        summary["test_evaluated"] = False
    summary["total_seconds"] = saver.wall_seconds()  # every process of the run, resumes included
    if parts.plan is not None:
        summary["time_limit"] = time_summary(parts.plan, summary["total_seconds"], state.epoch)
    run.write_summary(summary)
    saver.final = final
    return summary


def _bad_training_images(parts: Parts) -> dict:
    """summary.json's account of training images that did not decode: `skipped_images` counts
    distinct images (one bad file is 1, however many epochs met it), each replaced in its batch
    by another sample; `skipped_images_per_epoch` (metrics.csv's `skipped`) counts them per
    epoch; `skipped_image_files` names the first NAMED."""
    state = parts.state
    describe = getattr(parts.loaders.train.dataset, "describe", str)
    return {
        "skipped_images": len(state.bad_images),
        "skipped_images_per_epoch": [r.get("skipped", 0) for r in state.history],
        "skipped_image_files": [describe(i) for i in state.bad_images[:NAMED]],
    }


def _final_test(parts: Parts, saver: Saver, summary: dict, kept_epoch: int) -> dict:
    """The kept weights on the test set, plain and (with --tta) through its views, into the
    summary; returns the evaluation of the reported figure (with per-example results)."""
    cfg = parts.cfg
    plain = saver.test_results.get(kept_epoch) or parts.evaluator(parts.loaders.test)
    final = plain if cfg.tta == "none" else parts.final_evaluator(parts.loaders.test)
    summary.update(
        kept_test_acc=final["acc"], kept_test_loss=final["loss"], test_count=final["count"]
    )
    if "unreadable" in final:  # streamed data: test images that did not decode, left out
        describe = getattr(parts.loaders.test.dataset, "describe", str)
        summary["test_unreadable"] = len(final["unreadable"])
        summary["test_unreadable_files"] = [describe(i) for i in final["unreadable"][:NAMED]]
    if cfg.tta != "none":  # both figures: what the views added is measured in every run
        summary.update(
            tta=cfg.tta, kept_test_acc_no_tta=plain["acc"], kept_test_loss_no_tta=plain["loss"]
        )
    return final
