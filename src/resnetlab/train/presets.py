"""Presets: each fills every setting of a TrainConfig; command-line flags override them."""

from __future__ import annotations

import math

from resnetlab.device import device_type
from resnetlab.errors import UsageError
from resnetlab.train.config import TrainConfig

# What the two CIFAR-style presets share: a ResNet-20 at the data's own size, normalised, flipped,
# 5,000 training images held out for choosing the kept weights, one-cycle SGD with Nesterov
# momentum at a peak of 0.2, label smoothing, and the test set seen once through flip TTA.
CIFAR_RECIPE = dict(
    model="resnet20",
    resize=None,
    normalize=True,
    flip=True,
    val_split=5000,
    lr=0.2,
    optimizer="sgd",
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="onecycle",
    label_smoothing=0.1,
    tta="flip",
)

PRESETS: dict[str, dict] = {
    # The textbook's recipe exactly (d2l ResNet chapter): resnet18_d2l, 96 px, batch 256,
    # plain SGD at 0.05, 10 epochs, Xavier-uniform init, no normalisation, no augmentation, fp32.
    "d2l": dict(
        model="resnet18_d2l",
        init="xavier",
        resize=96,
        normalize=False,
        epochs=10,
        batch_size=256,
        lr=0.05,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        amp=False,
    ),
    # The best accuracy in about 10 minutes on a 2-core CPU (BENCHMARKS.md, "Training presets", has
    # the runs and the ablations): a CIFAR-style ResNet-20 with a frozen, whitened first layer,
    # 12 epochs at batch 128 of one-cycle SGD with Nesterov momentum, label smoothing, flip and
    # 1-pixel crop augmentation (a 2-pixel crop lost on validation over three seeds: this short run
    # underfits), bf16 autocast where the CPU has bf16 units; the first half of the epochs at
    # 16 growing to 28 px (progressive resizing: 12 epochs for the time of 10). 5,000 training
    # images are held out so the kept weights (best.safetensors) are chosen without the test set;
    # the test set is evaluated once, at the end, through flip test-time augmentation (the plain
    # figure is reported beside it).
    "quick": dict(
        CIFAR_RECIPE,
        init="whiten",
        crop_padding=1,
        progressive_resize=16,
        progressive_until=0.5,
        epochs=12,
        batch_size=128,
        warmup=0.2,
        epoch_test=False,
    ),
    # The highest accuracy we aim for, meant for a GPU: a wide CIFAR-style ResNet with random
    # erasing, best weights picked on a validation split (never on the test set).
    "best": dict(
        CIFAR_RECIPE,
        model_kwargs={"width": 64},
        crop_padding=2,
        erasing=0.5,
        epochs=60,
        batch_size=256,
        warmup=0.15,
    ),
    # The degradation experiment's recipe (`resnetlab experiment degradation` sets each net, its
    # width, the epochs, the subset, the seed and the rate; docs/degradation.md): SGD with
    # momentum 0.9, weight decay 1e-4 and batch 128 as in He et al., at a high peak rate for few
    # epochs, the regime where deep plain nets lag. The rate warms up over the first 15% of steps
    # and decays linearly to zero, so the last epoch measures what each net can fit rather than
    # the noise of a high constant rate (with a constant 0.1, resnet56 had not yet overtaken
    # resnet20 after 8 epochs). Everything else is TrainConfig's default: no augmentation, no
    # label smoothing, no EMA, no TTA and no validation split, so the training error measures
    # optimisation alone, and the test error of every epoch is drawn (BN everywhere: the paper's
    # plain nets have it too).
    "degradation": dict(
        batch_size=128,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="onecycle",
        warmup=0.15,
    ),
    # torchvision's current ResNet-50 recipe ("How to train state-of-the-art models using
    # TorchVision's latest primitives", 2021; references/classification/README.md, resnet50 v2:
    # 80.86 % top-1), each ingredient its own flag:
    #   --train-crop-size 176        resize=176, random_resized_crop (streamed data keeps the photos)
    #   random horizontal flip       flip (ClassificationPresetTrain's hflip_prob 0.5)
    #   --auto-augment ta_wide       trivial_augment (data/trivial_augment.py)
    #   --random-erase 0.1           erasing=0.1
    #   --mixup-alpha 0.2, --cutmix-alpha 1.0    mixup, cutmix (data/mixing.py), one per batch
    #   --label-smoothing 0.1        label_smoothing
    #   --model-ema                  ema (per step: see imagenet_ema below)
    #   --lr-scheduler cosineannealinglr, --lr-warmup-epochs 5 (linear)
    #                                schedule="cosine", warmup=5/600 (of the steps)
    #   --weight-decay 2e-5, --norm-weight-decay 0.0    weight_decay (never on BN and biases)
    #   --lr 0.5 at 8 GPUs x 128     lr=0.5 at batch_size=1024, scaled linearly with --batch-size
    #   --epochs 600, SGD momentum 0.9
    #   --val-resize-size 232, --val-crop-size 224    eval_resize, eval_crop
    # Not here: --ra-sampler (repeated augmentation), the warm-up's start at 1 % of the rate
    # (resnetlab's rises from lr / warm-up steps), the EMA reset during the warm-up epochs, and
    # weight decay on the classifier's bias (torchvision spares only the norm layers).
    "imagenet": dict(
        model="resnet50",
        resize=176,
        random_resized_crop=True,
        eval_resize=232,
        eval_crop=224,
        normalize=True,
        flip=True,
        trivial_augment=True,
        erasing=0.1,
        mixup=0.2,
        cutmix=1.0,
        label_smoothing=0.1,
        epochs=600,
        batch_size=1024,
        lr=0.5,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=2e-5,
        schedule="cosine",
        warmup=5 / 600,
    ),
}

IMAGENET_BATCH, IMAGENET_LR = 1024, 0.5


def imagenet_ema(batch_size: int, epochs: int) -> float:
    """The per-step decay of torchvision's --model-ema --model-ema-steps 32 --model-ema-decay
    0.99998 for a global batch and epoch count. torchvision (references/classification/train.py)
    makes the decay independent of batch and run length: alpha = (1 - 0.99998) * batch * 32 /
    epochs, capped at 1, and averages every 32 steps with decay 1 - alpha; averaging every step
    with decay (1 - alpha) ** (1 / 32) ends the same after each 32 steps. At batch 1024 and 600
    epochs: 0.99996585."""
    alpha = min(1.0, (1 - 0.99998) * batch_size * 32 / epochs)
    return (1 - alpha) ** (1 / 32)


def _scale_imagenet(settings: dict, given: dict) -> None:
    """The imagenet preset's rate, linear in the batch (0.5 at 1024) unless --lr is given, and
    its EMA decay for the run's batch and epochs (imagenet_ema) unless --ema is given."""
    if "lr" not in given:
        settings["lr"] = IMAGENET_LR * settings["batch_size"] / IMAGENET_BATCH
    if "ema" not in given:
        settings["ema"] = imagenet_ema(settings["batch_size"], settings["epochs"])


# What a preset changes on one kind of device, applied before the caller's overrides.
DEVICE_SETTINGS: dict[str, dict[str, dict]] = {
    # On a GPU the 10-minute CPU budget is not the limit, and the GPU target is test accuracy
    # >= 0.94, which the width-16 net does not reach by training longer (0.9374 after 15 epochs).
    # A width-32 ResNet-20 for 10 epochs at batch 256, lr 0.4, reached 0.9430 (val 0.9404) on the
    # CPU (BENCHMARKS.md, "Training presets"); batch 256 halves the steps a GPU launches. Its time
    # on a GPU is not measured yet. The CPU's time savers stay off: progressive resizing would
    # change the captured step's shape every epoch, and the whitened layer was measured at width 16 only.
    # Its crop stays the 2 pixels it was measured with.
    "quick": {
        "cuda": dict(
            model_kwargs={"width": 32},
            init="default",
            progressive_resize=0,
            epochs=10,
            batch_size=256,
            lr=0.4,
            crop_padding=2,
        )
    },
}


def make_config(preset: str | None = None, *, base: dict | None = None, **overrides) -> TrainConfig:
    """The preset's configuration (default "quick"), with its settings for the device (see
    DEVICE_SETTINGS), then `overrides` (None values are ignored) applied. `base`, a saved
    configuration (a run's config.json "config"), replaces the preset as the starting point.
    A preset's model options (model_kwargs) belong to its model: another `model` without
    `model_kwargs` gets the model's own defaults; its `--init whiten` yields to `init_from`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if base is not None:
        if preset is not None:
            raise UsageError("give a preset or a saved configuration to start from, not both")
        settings = TrainConfig.from_dict(base).to_dict()
    else:
        preset = preset or "quick"
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        settings = dict(PRESETS[preset], preset=preset)
        settings.update(DEVICE_SETTINGS.get(preset, {}).get(device_type(given.get("device")), {}))
    if (
        given.get("model", settings.get("model")) != settings.get("model")
        and "model_kwargs" not in given
    ):
        settings["model_kwargs"] = {}
    if given.get("init_from") and "init" not in given and settings.get("init") == "whiten":
        settings["init"] = (
            "default"  # a preset's whitened first layer gives way to pretrained weights
        )
    if "resize" in given:
        # a --resize of the user's own carries to evaluation where --eval-* do not say otherwise:
        # a preset's (or saved config's) evaluation sizes were chosen for its own training size
        settings.update({k: None for k in ("eval_resize", "eval_crop") if k not in given})
    settings.update(given)
    if settings.get("time_limit") is not None and "epochs" in given:
        raise UsageError(
            "--time-limit plans the epochs to fit the time; drop --epochs or --time-limit"
        )
    if preset == "imagenet" and all(
        isinstance(settings[k], int) and settings[k] > 0 for k in ("batch_size", "epochs")
    ):
        _scale_imagenet(settings, given)
    return TrainConfig(**settings)


def run_warnings(cfg: TrainConfig, train_examples: int, steps_per_epoch: int) -> list[str]:
    """A line for each setting (a preset's, fitted to ImageNet, or the user's) that cannot work on
    this run's data: a batch larger than the training set, an average longer than the run."""
    lines = []
    if cfg.batch_size > train_examples:
        lines.append(
            f"warning: --batch-size {cfg.batch_size} is more than the {train_examples} training "
            f"images: each epoch is one step of {train_examples}, at a rate set for "
            f"{cfg.batch_size}; give a --batch-size of a tenth of them or less"
        )
    ema = ema_warning(cfg.ema, steps_per_epoch * cfg.epochs)
    return lines + ([ema] if ema else [])


def ema_warning(ema: float, total_steps: int) -> str | None:
    """One line when --ema (a preset's, fitted to a long run, or the user's) averages over more
    steps than the run takes: its decay is never reached, and the average's warm-up
    (steps.WeightAverage) is what keeps the weights from staying near their start."""
    if not ema or total_steps <= 0 or 1 / (1 - ema) <= total_steps:
        return None
    last = min(ema, total_steps / (9 + total_steps))  # the decay of update t = total_steps - 1
    decimals = 1 - math.floor(math.log10(1 - ema))  # two digits after the leading nines
    return (
        f"warning: --ema {ema:.{max(decimals, 2)}f} averages over about {1 / (1 - ema):,.0f} steps, more than "
        f"this run's {total_steps}: its decay warms up as (1 + t) / (10 + t) at step t and ends "
        f"at {last:.3g}, so the kept weights average the last steps (give --ema {last:.3g} "
        "or less, or 0 for no average, to silence this)"
    )
