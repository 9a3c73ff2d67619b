"""`train(cfg)`: one run end to end — data, model, loaders, run folder, `fit`, final report.

This is what `resnetlab train` calls; Python users call it the same way:

    from resnetlab.train import make_config, train
    summary = train(make_config("quick", epochs=2, subset=2000), out="runs/try")
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from resnetlab import __version__
from resnetlab.errors import Interrupted, TrainingError, UsageError, WriteError
from resnetlab.train.config import TrainConfig
from resnetlab.train.distributed import (DistInfo, check_resume_world_size, check_same_setup, convert_sync_batchnorm,
                                        describe_setup, init_from_env, local_main_first, session, shared, wrap_ddp)
from resnetlab.train.engine import Hooks, TrainState, evaluate, fit, init_weights, make_optimizer
from resnetlab.train.report import have_matplotlib, plot_confusion, plot_curves
from resnetlab.train.run import RunDir, default_run_path, load_checkpoint, restore_checkpoint


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return device


def bf16_pays(device: torch.device) -> bool:
    """bf16 autocast pays on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX): measured ~2x here."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def build_model(cfg: TrainConfig, in_chans: int, num_classes: int) -> nn.Module:
    from resnetlab.models import create_model

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    model = create_model(cfg.model, num_classes=num_classes, in_chans=in_chans, **cfg.model_kwargs)
    init_weights(model, cfg.init)
    return model


def load_splits(cfg: TrainConfig):
    """(train, val or None, test) datasets as the config asks: subset, then validation split."""
    from resnetlab.data import load_dataset, split_dataset

    train_set = load_dataset(cfg.data, train=True, root=cfg.data_dir)
    test_set = load_dataset(cfg.data, train=False, root=cfg.data_dir)
    if cfg.subset is not None:  # a seeded random subset of each split (smoke tests, quick looks)
        train_set = train_set.take(min(cfg.subset, len(train_set)), seed=cfg.seed)
        test_set = test_set.take(min(cfg.subset, len(test_set)), seed=cfg.seed)
    val_set = None
    if cfg.val_split:
        if cfg.val_split >= len(train_set):
            raise UsageError(f"--val-split {cfg.val_split} leaves no training data ({len(train_set)} examples); "
                             "pass a smaller --val-split, or 0")
        train_set, val_set = split_dataset(train_set, cfg.val_split, seed=cfg.seed)
    return train_set, val_set, test_set


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

    def progress(self, epoch: int, epochs: int, step: int, total: int, stats: dict, ex_per_sec: float) -> None:
        if not self.use_bar:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", file=self.stream, leave=False, dynamic_ncols=True)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", ex_s=f"{ex_per_sec:.0f}")

    def epoch_line(self, epochs: int, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}", f"train acc {row['train_acc']:.4f}"]
        for split in ("val", "test"):
            if f"{split}_acc" in row:
                parts.append(f"{split} acc {row[f'{split}_acc']:.4f}")
        parts += [f"lr {row['lr']:.4g}", f"{row['examples_per_sec']:.1f} ex/s", f"{row['epoch_seconds']:.1f} s"]
        self.say(", ".join(parts))


def train(cfg: TrainConfig | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          overwrite: bool = False, json_output: bool = False, verbose: bool = True) -> dict:
    """Train as `cfg` says (or continue the run in `resume`); returns the summary dict."""
    started = time.perf_counter()
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        saved = TrainConfig.from_dict(checkpoint["config"])
        cfg = saved if cfg is None else cfg  # the caller may only change where it runs
        if cfg.to_dict() != saved.to_dict():
            raise UsageError(f"--resume continues {resume} with its saved configuration; give no other training flags")
        out = resume
    if cfg is None:
        raise UsageError("train() needs a configuration or a run folder to resume")

    dist = init_from_env(torch.device("cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"))
    # a lost peer becomes one clear error; the process group is left and the run folder unlocked at the end
    with session(dist), RunDir.locks_released_at_exit():
        if checkpoint is not None:
            check_resume_world_size(checkpoint.get("world_size", 1), dist, out)
        try:
            return _train(cfg, dist, out, checkpoint, overwrite, json_output, verbose, started)
        except WriteError as e:  # no space, a read-only or removed folder: the files already there are intact
            folder = Path(e.filename).parent if e.filename else None
            if folder is None or not (folder / "checkpoint.pt").is_file():
                raise
            raise WriteError(f"{e}; once it can be written, continue with: resnetlab train --resume {folder}",
                             e.errno, e.filename) from None


def _train(cfg, dist: DistInfo, out, checkpoint, overwrite, json_output, verbose, started) -> dict:
    from resnetlab.data import Augment, Loader, get_dataset_info

    device = resolve_device(cfg.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # Batches keep one shape (the last aside), so cuDNN may time its algorithms once and keep
        # the fastest, as torchvision's reference scripts and airbench do. Not yet measured here.
        torch.backends.cudnn.benchmark = True
    amp = bf16_pays(device) if cfg.amp is None else cfg.amp
    channels_last = (device.type in ("cpu", "cuda")) if cfg.channels_last is None else cfg.channels_last
    display = Display(sys.stderr if json_output else sys.stdout, verbose and dist.is_main)

    info = get_dataset_info(cfg.data)
    with local_main_first(dist):  # one download per machine, then the other processes read the cache
        train_set, val_set, test_set = load_splits(cfg)
    check_same_setup(dist, describe_setup(cfg.to_dict(), {"train": train_set, "val": val_set, "test": test_set},
                                          device=device.type, amp=amp, channels_last=channels_last))
    classes = train_set.classes
    in_chans = train_set.images.shape[1]
    input_hw = (cfg.resize, cfg.resize) if cfg.resize else tuple(train_set.images.shape[2:])
    normalize = (list(info.mean), list(info.std)) if cfg.normalize else None

    model = build_model(cfg, in_chans, len(classes))
    if cfg.sync_bn and dist.enabled:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    state = TrainState() if checkpoint is None else restore_checkpoint(checkpoint, model, optimizer, out)
    raw_model = model  # what we save: never the DDP or compiled wrapper
    if dist.enabled:
        model = wrap_ddp(model, device, dist)
    if cfg.compile:
        model = torch.compile(model)

    loader_args = dict(resize=cfg.resize, normalize=normalize, device=device, channels_last=channels_last,
                       rank=dist.rank, world_size=dist.world_size)
    augment = Augment(crop_padding=cfg.crop_padding, flip=cfg.flip, erasing=cfg.erasing)
    if cfg.batch_size % dist.world_size:
        raise UsageError(f"--batch-size {cfg.batch_size} (the global batch) must divide by the {dist.world_size} processes")
    # A compiled model drops the last, smaller batch of each epoch (a different few examples each
    # time): a second batch shape would cost a second compilation. Evaluation runs the uncompiled
    # model: compiling it for eval mode would be a third. Measured on the CPU, empty inductor
    # cache: two epochs of resnet18_d2l took 71 s with three compilations, 37 s with one.
    train_loader = Loader(train_set, cfg.batch_size, shuffle=True, augment=augment, seed=cfg.seed,
                          drop_last=dist.enabled or cfg.compile, **loader_args)
    eval_batch = max(cfg.batch_size, 256)
    val_loader = Loader(val_set, eval_batch, shuffle=False, **loader_args) if val_set is not None else None
    test_loader = Loader(test_set, eval_batch, shuffle=False, **loader_args)
    if len(train_loader) == 0:
        raise UsageError(f"{len(train_set)} training examples make no full batch of {cfg.batch_size}; lower --batch-size")

    run = RunDir.open(out, enabled=dist.is_main) if checkpoint is not None else \
        RunDir.create(out or default_run_path(cfg.preset), overwrite=overwrite, enabled=dist.is_main)
    meta = {
        "model": cfg.model, "model_kwargs": cfg.model_kwargs, "in_chans": in_chans, "num_classes": len(classes),
        "classes": classes, "input_size": [in_chans, *input_hw], "resize": cfg.resize,
        "normalize": {"mean": normalize[0], "std": normalize[1]} if normalize else None, "data": cfg.data,
    }
    run.write_config({
        "config": cfg.to_dict(), "device": str(device), "amp": amp, "channels_last": channels_last,
        "world_size": dist.world_size, "params": sum(p.numel() for p in raw_model.parameters()),
        "versions": {"resnetlab": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(), "host": platform.node(),
    })
    if checkpoint is None:
        display.say(f"training {cfg.model} on {cfg.data} ({len(train_set)} examples, {len(test_set)} test) "
                    f"on {device}{' with bf16' if amp else ''}, {dist.world_size} process(es); run folder {run.path}")
    else:
        display.say(f"resuming {run.path} after epoch {state.epoch}, step {state.step_in_epoch}")

    def save_checkpoint(st: TrainState) -> None:
        run.save_checkpoint({
            "config": cfg.to_dict(), "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "state": vars(st).copy(), "rng": {"torch": torch.get_rng_state()}, "world_size": dist.world_size,
        })

    epoch_started = [time.perf_counter()]

    def on_progress(step, total, stats):
        elapsed = time.perf_counter() - epoch_started[0]
        display.progress(state.epoch + 1, cfg.epochs, step, total, stats, step * cfg.batch_size / max(elapsed, 1e-9))

    def on_epoch_end(st: TrainState, row: dict, is_best: bool) -> None:
        display.epoch_line(cfg.epochs, row)
        run.write_metrics(st.history)
        if is_best:
            run.save_weights("best.safetensors", raw_model.state_dict(), dict(meta, epoch=row["epoch"]))
        save_checkpoint(st)
        epoch_started[0] = time.perf_counter()

    def on_interrupt(st: TrainState) -> None:
        save_checkpoint(st)
        display.say(f"checkpoint saved; resume with: resnetlab train{f' --nproc {dist.world_size}' if dist.enabled else ''} --resume {run.path}")

    try:
        fit(model, train_loader, cfg, device, optimizer=optimizer, state=state, val_loader=val_loader,
            test_loader=test_loader, amp=amp, dist=dist, eval_model=raw_model if cfg.compile else model,
            hooks=Hooks(on_progress=on_progress, on_epoch_end=on_epoch_end, on_interrupt=on_interrupt))
    except Interrupted as e:
        resume_cmd = "resnetlab train" + (f" --nproc {dist.world_size}" if dist.enabled else "")
        raise shared(Interrupted(f"{e}; checkpoint saved; resume with: {resume_cmd} --resume {run.path}")) from None
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"CUDA ran out of memory at batch {cfg.batch_size}; try a smaller --batch-size") from None

    # The final weights, then the kept weights (best on validation when there is a split) on the test set.
    run.save_weights("model.safetensors", raw_model.state_dict(), dict(meta, epoch=state.epoch))
    last = state.history[-1]
    summary = {
        "run_dir": str(run.path), "model": cfg.model, "data": cfg.data, "preset": cfg.preset, "device": str(device),
        "epochs": state.epoch, "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "test_loss": last["test_loss"], "test_acc": last["test_acc"],
        "examples_per_sec": sum(r["examples"] for r in state.history) / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds, "params": sum(p.numel() for p in raw_model.parameters()),
    }
    kept = "model.safetensors"
    if val_loader is not None:
        from resnetlab.weights import load_weights

        best_state, _ = load_weights(run.file("best.safetensors")) if dist.is_main else (None, None)
        if dist.enabled:  # every rank evaluates the same weights: broadcast rank 0's file contents
            holder = [best_state]
            torch.distributed.broadcast_object_list(holder, src=0)
            best_state = holder[0]
        raw_model.load_state_dict(best_state)
        kept = "best.safetensors"
        summary.update(val_acc=last["val_acc"], best_epoch=state.best_epoch, best_val_acc=state.best_val_acc)
    final = evaluate(raw_model if cfg.compile else model, test_loader, device, amp=amp, num_classes=len(classes), dist=dist)
    summary.update(kept_weights=kept, kept_test_acc=final["acc"], kept_test_loss=final["loss"], test_count=final["count"])
    if dist.is_main:
        if have_matplotlib():
            plot_curves(state.history, run.file("curves.png"), title=f"{cfg.model} on {cfg.data}")
            plot_confusion(final["confusion"], classes, run.file("confusion.png"), title=f"{kept}: test acc {final['acc']:.4f}")
        else:
            display.say("matplotlib is not installed: plots skipped (pip install 'resnetlab[plot]')")
    summary["total_seconds"] = time.perf_counter() - started
    run.write_summary(summary)
    # The textbook's two closing lines, with our figures.
    display.say(f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, test acc {summary['test_acc']:.3f}")
    display.say(f"{summary['examples_per_sec']:.1f} examples/sec on {device}")
    if kept != "model.safetensors":
        display.say(f"kept {kept} (epoch {state.best_epoch}, val acc {state.best_val_acc:.4f}): test acc {final['acc']:.4f}")
    display.say(f"run folder: {run.path}")
    return summary

