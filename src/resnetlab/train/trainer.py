"""`train(cfg)`: one run end to end — data, model, loaders, run folder, `fit`, final report.

This is what `resnetlab train` calls; Python users call it the same way:

    from resnetlab.train import make_config, train
    summary = train(make_config("quick", epochs=2, subset=2000), out="runs/try")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from resnetlab.errors import Interrupted, TrainingError, UsageError, WriteError
from resnetlab.report.hooks import RunReporter
from resnetlab.train.config import TrainConfig
from resnetlab.train.distributed import check_resume_world_size, init_from_env, session, shared
from resnetlab.train.engine import Hooks, TrainState, fit
from resnetlab.train.report import have_matplotlib, plot_confusion, plot_curves, preload_matplotlib
from resnetlab.train.run import RunDir, default_run_path, load_checkpoint
from resnetlab.train.setup import Parts, build
from resnetlab.weights import load_weights


class Display:
    """A progress bar per epoch on a terminal (tqdm), else one plain line per epoch."""

    def __init__(self, stream, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.bar = None
        self.use_bar = False
        if enabled and stream.isatty():
            try:
                import tqdm  # noqa: F401

                self.use_bar = True
            except ImportError:
                pass

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def progress(
        self, epoch: int, epochs: int, step: int, total: int, stats: dict, ex_per_sec: float
    ) -> None:
        if not self.use_bar:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=f"epoch {epoch}/{epochs}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", ex_s=f"{ex_per_sec:.0f}"
        )

    def epoch_line(self, epochs: int, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        parts = [
            f"epoch {row['epoch']}/{epochs}",
            f"loss {row['train_loss']:.4f}",
            f"train acc {row['train_acc']:.4f}",
        ]
        for split in ("val", "test"):
            if f"{split}_acc" in row:
                parts.append(f"{split} acc {row[f'{split}_acc']:.4f}")
        parts += [
            f"lr {row['lr']:.4g}",
            f"{row['examples_per_sec']:.1f} ex/s",
            f"{row['epoch_seconds']:.1f} s",
        ]
        self.say(", ".join(parts))


def train(
    cfg: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    json_output: bool = False,
    verbose: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train as `cfg` says (or continue the run in `resume`); returns the summary dict.
    `on_epoch`, if given, gets each epoch's metrics row once it is saved; what it raises stops the
    run there (a sweep prunes a trial this way)."""
    started = time.perf_counter()
    cfg, checkpoint = _configuration(cfg, resume)
    dist = init_from_env(cfg.device)
    # a lost peer becomes one clear error; the process group is left and the run folder unlocked at the end
    with session(dist), RunDir.locks_released_at_exit():
        if checkpoint is not None:
            check_resume_world_size(checkpoint.get("world_size", 1), dist, resume)
        display = Display(sys.stderr if json_output else sys.stdout, verbose and dist.is_main)
        parts = build(cfg, dist, checkpoint=checkpoint, say=display.say)
        run = (
            RunDir.open(resume, enabled=dist.is_main)
            if checkpoint is not None
            else RunDir.create(
                out or default_run_path(cfg.preset), overwrite=overwrite, enabled=dist.is_main
            )
        )
        try:
            return _train(parts, run, display, started=started, on_epoch=on_epoch)
        except (
            WriteError
        ) as e:  # no space, a read-only or removed folder: the files already there are intact
            raise _with_resume_hint(e) from None


def _with_resume_hint(error: WriteError) -> WriteError:
    folder = Path(error.filename).parent if error.filename else None
    if folder is None or not (folder / "checkpoint.pt").is_file():
        return error
    return WriteError(
        f"{error}; once it can be written, continue with: resnetlab train --resume {folder}",
        error.errno,
        error.filename,
    )


def _configuration(cfg: TrainConfig | None, resume) -> tuple[TrainConfig, dict | None]:
    """The run's configuration, and its checkpoint when resuming (a resumed run keeps its settings)."""
    if resume is None:
        if cfg is None:
            raise UsageError("train() needs a configuration or a run folder to resume")
        return cfg, None
    checkpoint = load_checkpoint(resume)
    saved = TrainConfig.from_dict(checkpoint["config"])
    if cfg is not None and cfg.to_dict() != saved.to_dict():
        raise UsageError(
            f"--resume continues {resume} with its saved configuration; give no other training flags"
        )
    return saved, checkpoint


def _train(parts: Parts, run: RunDir, display: Display, *, started: float, on_epoch=None) -> dict:
    """The parts, the loop and the run folder, wired."""
    recorder = RunRecorder(
        parts, run, display
    )  # before any file: a missing tensorboard extra stops it here
    recorder.on_epoch = on_epoch
    _start(parts, run, display)
    try:
        fit(
            parts.model,
            parts.loaders.train,
            parts.cfg,
            parts.device,
            optimizer=parts.optimizer,
            state=parts.state,
            val_loader=parts.loaders.val,
            test_loader=parts.loaders.test if parts.cfg.epoch_test else None,
            amp=parts.amp,
            dist=parts.dist,
            eval_model=parts.eval_model,
            step=parts.step,
            evaluator=parts.evaluator,
            hooks=recorder.hooks(),
        )
        return finish(parts, run, display, recorder, started=started)
    except Interrupted as e:
        raise shared(
            Interrupted(f"{e}; checkpoint saved; resume with: {resume_command(parts, run)}")
        ) from None
    except torch.cuda.OutOfMemoryError:
        error = TrainingError(
            f"CUDA ran out of memory at batch {parts.cfg.batch_size}; try a smaller --batch-size"
        )
        recorder.reporter.on_failure(error)
        raise error from None
    except (
        BaseException
    ) as e:  # a 'failed' event (non-finite loss, a lost peer, a failed write, a second Ctrl-C)
        recorder.reporter.on_failure(e)
        raise


def _start(parts: Parts, run: RunDir, display: Display) -> None:
    cfg, state = parts.cfg, parts.state
    run.write_config(parts.describe())
    if parts.dist.is_main:
        preload_matplotlib()
    if state.epoch or state.step_in_epoch:
        display.say(f"resuming {run.path} after epoch {state.epoch}, step {state.step_in_epoch}")
    else:
        display.say(
            f"training {cfg.model} on {cfg.data} ({len(parts.splits.train)} examples, "
            f"{len(parts.splits.test)} test) on {parts.device}{' with bf16' if parts.amp else ''}, "
            f"{parts.dist.world_size} process(es); run folder {run.path}"
        )


def resume_command(parts: Parts, run: RunDir) -> str:
    nproc = f" --nproc {parts.dist.world_size}" if parts.dist.enabled else ""
    return f"resnetlab train{nproc} --resume {run.path}"


class RunRecorder:
    """What the loop reports goes to the display and the run folder: metrics, best weights and a
    checkpoint at every epoch end, a checkpoint when interrupted."""

    def __init__(self, parts: Parts, run: RunDir, display: Display) -> None:
        self.parts, self.run, self.display = parts, run, display
        self.on_epoch: Callable[[dict], None] | None = None  # train()'s on_epoch
        self.epoch_started = time.perf_counter()
        self.test_results: dict[
            int, dict
        ] = {}  # epoch -> its test evaluation, for the epochs run here
        self.reporter = RunReporter(
            run,
            parts.cfg,
            resumed=parts.state.epoch > 0 or parts.state.step_in_epoch > 0,
            state=parts.state,
        )  # events.jsonl, TensorBoard, the after-run files

    def hooks(self) -> Hooks:
        return Hooks(
            on_progress=self.on_progress,
            on_epoch_end=self.on_epoch_end,
            on_interrupt=self.on_interrupt,
            on_evaluate=self.on_evaluate,
        )

    def on_evaluate(self, epoch: int, split: str, result: dict) -> None:
        if split == "test":
            self.test_results[epoch] = result

    def on_progress(self, step: int, total: int, stats: dict) -> None:
        cfg, elapsed = self.parts.cfg, time.perf_counter() - self.epoch_started
        self.display.progress(
            self.parts.state.epoch + 1,
            cfg.epochs,
            step,
            total,
            stats,
            step * cfg.batch_size / max(elapsed, 1e-9),
        )
        self.reporter.on_progress(self.parts.state.global_step, stats)

    def on_epoch_end(self, state: TrainState, row: dict, is_best: bool) -> None:
        self.display.epoch_line(self.parts.cfg.epochs, row)
        self.reporter.on_epoch_end(row)
        for epoch in [e for e in self.test_results if e not in (state.epoch, state.best_epoch)]:
            del self.test_results[
                epoch
            ]  # only the last and the best epoch's can be the kept weights
        self.run.write_metrics(state.history)
        if is_best:
            self.run.save_weights(
                "best.safetensors",
                self.parts.weights.state_dict(),
                dict(self.parts.meta, epoch=row["epoch"]),
            )
        self.run.save_checkpoint(self.parts.checkpoint(state))
        if self.on_epoch is not None:
            self.on_epoch(dict(row))
        self.epoch_started = time.perf_counter()

    def on_interrupt(self, state: TrainState) -> None:
        self.run.save_checkpoint(self.parts.checkpoint(state))
        self.reporter.on_interrupt(state)
        self.display.say(f"checkpoint saved; resume with: {resume_command(self.parts, self.run)}")


def finish(
    parts: Parts, run: RunDir, display: Display, recorder: RunRecorder, *, started: float
) -> dict:
    """After the last epoch: the final weights, then the kept weights (best on validation when
    there is a split) on the test set (with --tta's views, and without), the plots, the summary and
    the report (mistakes, report.html). A plain test figure is that of its epoch's evaluation when
    this process ran it: the same weights on the same data, not evaluated twice."""
    cfg, state, dist, weights = parts.cfg, parts.state, parts.dist, parts.weights
    run.save_weights("model.safetensors", weights.state_dict(), dict(parts.meta, epoch=state.epoch))
    last = state.history[-1]
    if "test_acc" not in last:  # --no-epoch-test: the last weights' test figures, measured now
        at_end = recorder.test_results[state.epoch] = parts.evaluator(parts.loaders.test)
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
        "test_loss": last["test_loss"],
        "test_acc": last["test_acc"],
        "examples_per_sec": sum(r["examples"] for r in state.history)
        / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds,
        "params": sum(p.numel() for p in weights.parameters()),
    }
    kept, kept_epoch = "model.safetensors", state.epoch
    if parts.loaders.val is not None:
        best_state, _ = load_weights(run.file("best.safetensors")) if dist.is_main else (None, None)
        if dist.enabled:  # every rank evaluates the same weights: broadcast rank 0's file contents
            holder = [best_state]
            torch.distributed.broadcast_object_list(holder, src=0)
            best_state = holder[0]
        weights.load_state_dict(best_state)
        kept, kept_epoch = "best.safetensors", state.best_epoch
        summary.update(
            val_acc=last["val_acc"], best_epoch=state.best_epoch, best_val_acc=state.best_val_acc
        )
    plain = recorder.test_results.get(kept_epoch) or parts.evaluator(parts.loaders.test)
    final = plain if cfg.tta == "none" else parts.final_evaluator(parts.loaders.test)
    summary.update(
        kept_weights=kept,
        kept_test_acc=final["acc"],
        kept_test_loss=final["loss"],
        test_count=final["count"],
    )
    tta_note = ""
    if cfg.tta != "none":  # both figures: what the views added is measured in every run
        summary.update(
            tta=cfg.tta, kept_test_acc_no_tta=plain["acc"], kept_test_loss_no_tta=plain["loss"]
        )
        tta_note = f" with {cfg.tta} TTA ({plain['acc']:.4f} without)"
    if dist.is_main:
        if have_matplotlib():
            plot_curves(state.history, run.file("curves.png"), title=f"{cfg.model} on {cfg.data}")
            plot_confusion(
                final["confusion"],
                parts.classes,
                run.file("confusion.png"),
                title=f"{kept}: test acc {final['acc']:.4f}",
            )
        else:
            display.say(
                "matplotlib is not installed: plots skipped (pip install 'resnetlab[plot]')"
            )
    # The textbook's two closing lines, with our figures.
    display.say(
        f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, test acc {summary['test_acc']:.3f}"
    )
    display.say(f"{summary['examples_per_sec']:.1f} examples/sec on {parts.device}")
    if kept != "model.safetensors":
        display.say(
            f"kept {kept} (epoch {state.best_epoch}, val acc {state.best_val_acc:.4f}): "
            f"test acc {final['acc']:.4f}{tta_note}"
        )
    elif tta_note:
        display.say(f"kept {kept}: test acc {final['acc']:.4f}{tta_note}")
    summary["total_seconds"] = time.perf_counter() - started
    run.write_summary(summary)
    recorder.reporter.finish(final, parts.splits.test, summary)
    display.say(f"run folder: {run.path}")
    return summary
