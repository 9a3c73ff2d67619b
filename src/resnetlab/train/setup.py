"""The seam between a configuration and a running experiment: `build(cfg, dist) -> Parts`.

The trainer, `resnetlab bench` and the degradation experiment get their device, data, model,
optimizer, step, evaluator and loaders here and nowhere else, so they cannot drift apart:

    parts = build(make_config("quick", subset=2000))
    fit(parts.step, parts.evaluator, parts.loaders, parts.state, schedule, epochs)
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from resnetlab.data import Dataset, Loaders, identity
from resnetlab.data import path as data_path
from resnetlab.data.datasets import IMAGEFOLDER
from resnetlab.data.eval_view import EvalView
from resnetlab.data.path import DataSettings, Norm, Splits
from resnetlab.device import (
    prepare_device,
    resolve_device,
)
from resnetlab.distributed.ddp import wrap_ddp
from resnetlab.distributed.group import DistInfo, env_int, local_main_first, shared
from resnetlab.distributed.setup_check import check_same_setup, describe_setup
from resnetlab.distributed.syncbn import convert_sync_batchnorm
from resnetlab.errors import DataError, UsageError
from resnetlab.inference.evaluation import Evaluator
from resnetlab.inference.tta import with_tta
from resnetlab.models import create_model
from resnetlab.models.pretrained import load_pretrained
from resnetlab.train.checkpoint import restore_checkpoint
from resnetlab.train.config import TrainConfig
from resnetlab.train.engine import TrainState
from resnetlab.train.graphs import (
    CapturedEvaluator,
    CapturedStep,
    CaptureFallback,
    resolve_capture,
)
from resnetlab.train.precision import Policy, bf16_pays, channels_last_pays, resolve_policy
from resnetlab.train.presets import PRESETS, run_warnings
from resnetlab.train.steps import EagerStep, WeightAverage, init_weights, make_optimizer
from resnetlab.train.whiten import WHITEN_IMAGES, whiten_first_conv
from resnetlab.version import __version__


@dataclass
class Parts:
    """Everything a run needs, ready to use."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    amp: bool  # bf16 autocast, as resolved for the device
    channels_last: bool
    probe: dict | None  # the probe that chose amp and channels_last (train/precision.py), if any
    capture: bool  # training steps and evaluation batches replayed from CUDA graphs
    # capture chosen by default: where capturing failed and the run went on op by op (else None)
    capture_fallback: CaptureFallback | None
    splits: Splits
    loaders: Loaders
    raw_model: nn.Module  # what is saved: never the DDP or compiled wrapper
    model: nn.Module  # what trains: raw_model, wrapped in DDP and/or compiled as the config asks
    eval_model: (
        nn.Module
    )  # what evaluates: the uncompiled model (compiling eval mode would cost a second compilation),
    #                        or with --ema the average
    average: WeightAverage | None  # --ema: the moving average of the weights, updated by the step
    optimizer: torch.optim.Optimizer
    step: EagerStep | CapturedStep  # takes one training step (engine.fit calls it)
    evaluator: (
        Evaluator | CapturedEvaluator
    )  # evaluates eval_model on a loader, with a confusion matrix
    final_evaluator: (
        Evaluator | CapturedEvaluator
    )  # the kept weights' test figure: evaluator, with --tta's views
    state: TrainState  # where training stands: fresh, or the checkpoint's
    meta: dict  # saved with the weights: what rebuilds the model and prepares its input
    plan: dict | None = None  # --time-limit's plan (train/timing.py), kept in config.json

    @property
    def classes(self) -> list[str]:
        return self.splits.train.classes

    @property
    def weights(self) -> nn.Module:
        """The module whose weights are evaluated and saved: the average with --ema, else raw_model."""
        return self.average.model if self.average is not None else self.raw_model

    @property
    def fell_back(self) -> bool:
        """Whether a capture chosen by default failed and the run continues op by op."""
        return self.capture_fallback is not None and bool(self.capture_fallback.reasons)

    def describe(self) -> dict:
        """The run's config.json: the configuration, what `auto` resolved to, versions, machine."""
        return {
            "config": self.cfg.to_dict(),
            "device": str(self.device),
            "amp": self.amp,
            "channels_last": self.channels_last,
            **({"probe": self.probe} if self.probe else {}),
            **({"plan": self.plan} if self.plan else {}),
            "capture": self.capture and not self.fell_back,
            **({"capture_fallback": self.capture_fallback.reason} if self.fell_back else {}),
            # the split used: under --subset, config's val_split may have shrunk to fit
            "val_split": len(self.splits.val) if self.splits.val is not None else 0,
            "world_size": self.dist.world_size,
            "params": sum(p.numel() for p in self.raw_model.parameters()),
            "versions": {
                "resnetlab": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "threads": torch.get_num_threads(),
            "host": platform.node(),
        }


def load_splits(
    cfg: TrainConfig, say: Callable[[str], None] | None = None, share: tuple[int, int] = (0, 1)
) -> Splits:
    """(train, val or None, test) datasets as the config asks (data/path.py's load_splits)."""
    return data_path.load_splits(DataSettings.of(cfg), say, share)


def val_examples(cfg: TrainConfig, train_examples: int) -> int:
    """How many of `train_examples` are held out for validation (data/path.py's val_examples)."""
    return data_path.val_examples(DataSettings.of(cfg), train_examples)


def build_model(
    cfg: TrainConfig, in_chans: int, num_classes: int, say: Callable[[str], None] | None = None
) -> nn.Module:
    """The config's model, initialised (the same weights on every rank and every run), then
    loaded from --init-from when given; `say` hears what loading adapted."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=num_classes, in_chans=in_chans, **cfg.model_kwargs)
    init_weights(model, cfg.init)
    if cfg.init_from:  # pretrained weights, adapted to these classes and channels
        load_pretrained(model, cfg.init_from, say=say, model_name=cfg.model)
    return model


def normalization(cfg: TrainConfig, splits: Splits | None = None) -> Norm | None:
    """(mean, std) per channel of the dataset, or None when the config does not normalise."""
    return data_path.normalization(DataSettings.of(cfg), splits)


def weights_metadata(
    cfg: TrainConfig, splits: Splits, norm: tuple[list[float], list[float]] | None
) -> dict:
    """What a weights file needs besides its tensors: the model, its classes and its input."""
    images = splits.train.images
    in_chans, classes = images.shape[1], splits.train.classes
    input_hw = (cfg.resize, cfg.resize) if cfg.resize else tuple(images.shape[2:])
    return {
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "in_chans": in_chans,
        "num_classes": len(classes),
        "classes": classes,
        "input_size": [in_chans, *input_hw],
        "resize": cfg.resize,
        **{k: getattr(cfg, k) for k in ("eval_resize", "eval_crop") if getattr(cfg, k) is not None},
        "normalize": {"mean": norm[0], "std": norm[1]} if norm else None,
        "data": cfg.data,
        # an image folder held in memory: every image stored at one size first (the folder's
        # most common, data/formats.py's stored_size), then resized; predict does the same
        **(
            {"stored_size": list(images.shape[2:])}
            if cfg.data.startswith(IMAGEFOLDER) and not cfg.streamed
            else {}
        ),
        # streamed data is evaluated through its view (data/eval_view.py): eval, predict, export
        # and the report show images to the model as this run's evaluation did
        **({"eval_view": stream_view(cfg, splits).to_metadata()} if cfg.streamed else {}),
        # an image folder's test split, which changes with its files: eval checks it is the run's
        **identity.data_identity(cfg.data, splits.test),
    }


def data_identity(cfg: TrainConfig, splits: Splits) -> dict[str, str]:
    """The versions of the run's data its checkpoint records (data/identity.py): an image
    folder's test split, and streamed data's training split, whose samples a resume must meet
    again at the saved step."""
    return identity.data_identity(cfg.data, splits.test, splits.train if cfg.streamed else None)


def check_resume_data(cfg: TrainConfig, splits: Splits, checkpoint: dict) -> None:
    """A run resumes on the data it was trained on: one line where it changed since (every
    process finds the same, so rank 0 says it)."""
    why = identity.data_changed(
        checkpoint, data_identity(cfg, splits), cfg.data, "since the checkpoint"
    )
    if why:
        raise shared(
            DataError(f"{why}; put it back as it was to resume, or start a new run (--out)")
        )


def stream_view(cfg: TrainConfig, splits: Splits) -> EvalView:
    """The evaluation view of a streamed run (what make_stream_loaders evaluates through)."""
    return data_path.stream_view(DataSettings.of(cfg), splits)


def check_eval_sizes(cfg: TrainConfig, say: Callable[[str], None] | None) -> None:
    """One line where evaluation shows larger images than the --resize the user chose (one
    other than the preset's): a model trained on small images is then tested on larger ones."""
    if say is None or not cfg.resize or cfg.resize == PRESETS.get(cfg.preset, {}).get("resize"):
        return
    shown = cfg.eval_crop or cfg.eval_resize
    if shown and shown > cfg.resize:
        say(
            f"warning: evaluation shows {shown} px images (--eval-crop/--eval-resize), larger "
            f"than the {cfg.resize} px that --resize trains on; drop them to evaluate at the "
            "training size"
        )


def check_streamed(cfg: TrainConfig, say: Callable[[str], None] | None) -> None:
    """Name what the in-memory path leaves out: random-resized crops need the full-resolution
    images that only streamed data keeps (the imagenet preset on an in-memory set says so)."""
    if not cfg.streamed and cfg.random_resized_crop and say is not None:
        say(
            "--random-resized-crop crops full-resolution images, which in-memory data does not "
            "keep: not applied (add --stream, or pack the set with `resnetlab data pack`)"
        )


def whitening_images(cfg: TrainConfig, train: Dataset) -> Iterator[torch.Tensor]:
    """The first WHITEN_IMAGES training images as the model sees them (resized, normalized; not
    augmented), in batches, on the CPU: what --init whiten measures its filters on."""
    settings = DataSettings.of(cfg)
    norm = data_path.normalization(settings, Splits(train, None, train))
    return data_path.whitening_images(settings, train, WHITEN_IMAGES, norm)


def epoch_sizes(cfg: TrainConfig, train: Dataset) -> list[int] | None:
    """Each epoch's training image side under --progressive-resize, growing to the size evaluated."""
    full = (cfg.resize, cfg.resize) if cfg.resize else tuple(train.images.shape[2:])
    if cfg.progressive_resize and full[0] != full[1]:
        raise UsageError(
            f"--progressive-resize grows square images; these are {full[0]} x {full[1]}: add --resize"
        )
    return cfg.epoch_sizes(full[0])


def load_process_splits(cfg: TrainConfig, dist: DistInfo, say=None) -> Splits:
    """This process's data. Streamed data has nothing to download: the processes of a machine
    each check their share of the shards at once, none waiting on another (such a wait is bounded
    by the timeout of training's collectives). Other data: local rank 0 downloads first, then the
    others read the cache."""
    if cfg.streamed:
        local_world = env_int("LOCAL_WORLD_SIZE", 0)  # torchrun's; unknown: each checks all
        share = (dist.local_rank, local_world) if local_world > dist.local_rank else (0, 1)
        return load_splits(cfg, say, share)
    with local_main_first(dist):
        return load_splits(cfg, say)


def build(
    cfg: TrainConfig,
    dist: DistInfo = DistInfo(),
    *,
    splits: Splits | None = None,
    checkpoint: dict | None = None,
    foreach: bool = True,
    say: Callable[[str], None] | None = None,
    planner: Callable | None = None,
) -> Parts:
    """Device policy, data (`splits`, or loaded as `cfg` says), model, optimizer and loaders for
    `cfg` on this process; restored from `checkpoint` when given. `foreach=False` takes the
    optimizer's per-tensor step (a bench ablation); `say` hears notes worth printing. `planner`
    (the trainer's, train/timing.py) turns a new run's --time-limit into planned settings once
    the data and the precision are known, before anything is built from them."""
    check_streamed(cfg, say)
    check_eval_sizes(cfg, say)
    device, capture = _device_policy(cfg, dist)
    if splits is None:
        splits = load_process_splits(cfg, dist, say)
    if checkpoint is not None:
        check_resume_data(cfg, splits, checkpoint)
    policy = _precision_and_layout(cfg, dist, device, splits, checkpoint, say)
    amp, channels_last = policy.amp, policy.channels_last
    plan = None
    if planner is not None and cfg.time_limit is not None and checkpoint is None:
        cfg, plan = planner(cfg, dist, device, splits, policy, say)
    check_same_setup(
        dist,
        describe_setup(
            cfg.to_dict(),
            splits._asdict(),
            device=device.type,
            amp=amp,
            channels_last=channels_last,
        ),
    )
    if cfg.batch_size % dist.world_size:
        raise UsageError(
            f"--batch-size {cfg.batch_size} (the global batch) must divide by the {dist.world_size} processes"
        )
    raw_model, optimizer, average, state = _model_and_optimizer(
        cfg, dist, splits, device, channels_last, checkpoint, foreach, say
    )
    model = wrap_ddp(raw_model, device, dist) if dist.enabled else raw_model
    if cfg.compile:
        model = torch.compile(model)
    norm = normalization(cfg, splits)
    loaders = _loaders(cfg, dist, splits, device, channels_last, capture, norm)
    if say is not None and checkpoint is None:  # said once, when the run starts
        for warning in run_warnings(cfg, len(splits.train), len(loaders.train)):
            say(warning)
    eval_model = average.model if average is not None else raw_model if cfg.compile else model
    step, evaluator, final_evaluator, fallback = _step_and_evaluators(
        cfg, dist, splits, device, amp, capture, model, eval_model, optimizer, average
    )
    return Parts(
        cfg=cfg,
        dist=dist,
        device=device,
        amp=amp,
        channels_last=channels_last,
        probe=policy.probe.describe() if policy.probe is not None else None,
        capture=capture,
        capture_fallback=fallback,
        splits=splits,
        loaders=loaders,
        raw_model=raw_model,
        model=model,
        eval_model=eval_model,
        average=average,
        optimizer=optimizer,
        step=step,
        evaluator=evaluator,
        final_evaluator=final_evaluator,
        state=state,
        meta=weights_metadata(cfg, splits, norm),
        plan=plan,
    )


def _step_and_evaluators(
    cfg, dist, splits, device, amp, capture, model, eval_model, optimizer, average
):
    """The training step, the evaluator and the final (--tta) evaluator: captured or eager, and
    the CaptureFallback they share when capture was chosen by default (else None)."""
    # Capture chosen by default falls back to op by op where capturing fails; --capture does not.
    fallback = CaptureFallback() if capture and cfg.capture is None else None
    step_kind, evaluator_kind = (
        (CapturedStep, CapturedEvaluator) if capture else (EagerStep, Evaluator)
    )
    fallback_arg = {"fallback": fallback} if capture else {}
    step = step_kind(
        model,
        optimizer,
        device,
        amp=amp,
        label_smoothing=cfg.label_smoothing,
        average=average,
        **fallback_arg,
    )

    def evaluator_of(net: nn.Module):
        return evaluator_kind(
            net,
            device,
            amp=amp,
            num_classes=len(splits.train.classes),
            dist=dist,
            per_example=True,
            **fallback_arg,
        )

    evaluator = evaluator_of(eval_model)
    final_evaluator = (
        evaluator if cfg.tta == "none" else evaluator_of(with_tta(eval_model, cfg.tta))
    )
    return step, evaluator, final_evaluator, fallback


def _device_policy(cfg: TrainConfig, dist: DistInfo) -> tuple[torch.device, bool]:
    """This process's device (prepared), and whether training steps are captured: as the config
    says, or where they apply when it says `auto` (train/graphs.py)."""
    device = resolve_device(cfg.device, dist.local_rank)
    prepare_device(device)
    capture = resolve_capture(
        cfg.capture,
        device,
        dist.world_size,
        cfg.optimizer,
        cfg.compile,
        one_shape=not cfg.progressive_resize,
    )
    return device, capture


def _precision_and_layout(cfg, dist, device, splits, checkpoint, say) -> Policy:
    """bf16 autocast and channels_last for this run (train/precision.py): explicit settings, a
    resumed run's own, or the timed probe's pick for the run's model, batch and input shape."""
    images = splits.train.images
    hw = (cfg.resize, cfg.resize) if cfg.resize else tuple(images.shape[2:])
    shape = (max(1, cfg.batch_size // dist.world_size), images.shape[1], *hw)
    resumed = None
    if checkpoint is not None:  # a checkpoint from before the probe: the policy of its time
        resumed = checkpoint.get("policy") or {
            "amp": bf16_pays(device),
            "channels_last": channels_last_pays(device),
        }
    return resolve_policy(
        cfg,
        device,
        shape,
        len(splits.train.classes),
        expected_steps=max(1, len(splits.train) // cfg.batch_size) * cfg.epochs,
        world_size=dist.world_size,
        resumed=resumed,
        say=say,
    )


def _model_and_optimizer(cfg, dist, splits, device, channels_last, checkpoint, foreach, say):
    """The model to save (initialised, --init-from and --init whiten applied, on the device), its
    optimizer, the --ema average and the state to start from: fresh, or restored from `checkpoint`."""
    # Resuming: the checkpoint holds the weights, so --init-from's file is not read again (it may be gone).
    raw_model = build_model(
        cfg if checkpoint is None else dataclasses.replace(cfg, init_from=None),
        splits.train.images.shape[1],
        len(splits.train.classes),
        say=say and (lambda note: say(f"--init-from: {note}")),
    )
    # on resume too: the checkpoint then overwrites the same values, the layer stays frozen
    if cfg.init == "whiten":
        whiten_first_conv(raw_model, whitening_images(cfg, splits.train))
    if cfg.sync_bn and dist.enabled:
        raw_model = convert_sync_batchnorm(raw_model, device)
    raw_model = raw_model.to(device)
    if channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(raw_model, cfg, foreach=foreach)
    average = WeightAverage(raw_model, cfg.ema) if cfg.ema else None
    state = TrainState()
    if checkpoint is not None:
        state = restore_checkpoint(
            checkpoint,
            raw_model,
            optimizer,
            "--resume",
            average=average,
        )
    return raw_model, optimizer, average, state


def _loaders(cfg, dist, splits, device, channels_last, capture, norm) -> Loaders:
    """The train, val and test loaders (data/path.py): this process's share of each batch, on
    the device."""
    # A compiled model drops the last, smaller batch of each epoch (a different few examples each
    # time): a second batch shape would cost a second compilation (and a captured step a second
    # graph). Evaluation runs the uncompiled model: compiling it for eval mode would be a third.
    # Measured on the CPU, empty inductor cache: two epochs of resnet18_d2l took 71 s with three
    # compilations, 37 s with one.
    return data_path.make_data_loaders(
        DataSettings.of(cfg),
        splits,
        norm,
        device=device,
        channels_last=channels_last,
        drop_last=cfg.compile or capture,
        epoch_sizes=epoch_sizes(cfg, splits.train),
        rank=dist.rank,
        world_size=dist.world_size,
    )
