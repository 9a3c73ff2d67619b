"""The resolved configuration of a run: one dataclass, preset defaults plus overrides.

Every field is a `resnetlab train` flag (`batch_size` is `--batch-size`), made from the field's
type, choices and help text below; `--config FILE` starts from a saved configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from resnetlab.errors import UsageError
from resnetlab.inference import TTA_MODES  # torch-free: the CLI's flags read it at start-up
from resnetlab.train.plan import parse_duration, resize_schedule


def setting(default, help: str, choices: tuple[str, ...] | None = None):
    """A configuration field with the help text (and choices) of its command-line flag; a dict
    default is made afresh for each configuration."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


MAX_RESIZE = 4096  # pixels a side: a 256-image batch of 4096 x 4096 RGB floats is already 48 GiB


@dataclass
class TrainConfig:
    preset: str = setting(
        "quick",
        "the recipe the other settings start from: d2l (the textbook's), "
        "quick (~10 min on a CPU), best (for a GPU), degradation (the degradation experiment's), "
        "imagenet (torchvision's ResNet-50 recipe; "
        "its rate 0.5 at batch 1024 scales with --batch-size)",
    )
    # model
    model: str = setting("resnet20", "model name (see `resnetlab models`)")
    model_kwargs: dict = setting(
        {}, "options of the model's builder as JSON, e.g. '{\"width\": 32}'"
    )
    init: str = setting(
        "default",
        "weight init: default (PyTorch's), xavier (the textbook's train_ch6) or whiten "
        "(PyTorch's, with the first convolution set to the training images' patch-whitening filters and "
        "frozen, as airbench's; train/whiten.py)",
        choices=("default", "xavier", "whiten"),
    )
    init_from: str | None = setting(
        None,
        "start from these weights: a torchvision/timm checkpoint (.pth, .pt, "
        ".safetensors) or a run's model.safetensors, loaded after --init; another "
        "class count re-initialises the classifier (models/pretrained.py)",
    )
    # data
    data: str = setting(
        "fashion-mnist",
        "dataset: fashion-mnist, mnist, cifar10, cifar100, imagefolder:PATH, or shards:PATH "
        "(a set packed by `resnetlab data pack`, streamed)",
    )
    stream: bool = setting(
        False,
        "stream the data from disk, decoded by --workers processes, instead of holding it in "
        "memory (implied by shards:PATH; with imagefolder:PATH reads the folder as it is)",
    )
    workers: int = setting(
        2, "with streamed data: DataLoader worker processes that decode (0: none)"
    )
    data_dir: str | None = setting(
        None, "folder holding the dataset files (used alone, no fall-back)"
    )
    cache: str | None = setting(
        None,
        "with shards:URL: the folder of the local shard cache (default: the user cache's "
        "remote-shards/)",
    )
    cache_size: str = setting(
        "20G",
        "with shards:URL: the most the shard cache holds, e.g. 500M or 20G; the least recently "
        "used shards leave first",
    )
    shard_order: str = setting(
        "random",
        "streamed training's reading order: random (any sample from anywhere: local disks) or "
        "shards (shards shuffled, samples shuffled within --shard-window shards: remote or slow "
        "storage)",
        choices=("random", "shards"),
    )
    shard_window: int = setting(
        4, "with --shard-order shards: how many shards' samples are shuffled together"
    )
    resize: int | None = setting(
        None,
        "resize images to PX x PX (default: the dataset's size; streamed data: 224, or the "
        "images' own when all are one size up to 64 px)",
    )
    normalize: bool = setting(True, "subtract the dataset mean, divide by its std")
    crop_padding: int = setting(
        0, "random crop after padding each side by this many pixels (0: off)"
    )
    random_resized_crop: bool = setting(
        False,
        "torchvision's RandomResizedCrop (area fraction 0.08-1, aspect 3/4-4/3) from the "
        "full-resolution image, instead of the padded crop: streamed data only",
    )
    flip: bool = setting(False, "random horizontal flip")
    alternate_flip: bool = setting(
        False,
        "with --flip: mirror each image in every other epoch, from a random start "
        "(airbench), instead of with probability 1/2 each epoch",
    )
    erasing: float = setting(0.0, "random-erasing probability (0: off)")
    trivial_augment: bool = setting(
        False,
        "TrivialAugmentWide on each training image (torchvision's: one of 14 operations at one "
        "of 31 magnitudes; data/trivial_augment.py), on the uint8 images before resizing",
    )
    mixup: float = setting(
        0.0,
        "mixup: blend each batch with itself rolled by one, weight ~ Beta(A, A), and the "
        "targets alike (A: this alpha; 0: off; with --cutmix one of the two per batch)",
    )
    cutmix: float = setting(
        0.0,
        "CutMix: paste a box of the batch rolled by one, area fraction ~ 1 - Beta(A, A), "
        "targets mixed by the area (A: this alpha; 0: off; with --mixup one of the two per batch)",
    )
    eval_resize: int | None = setting(
        None,
        "evaluate images resized to PX on their shorter side (default: as --resize trains; "
        "after --random-resized-crop: round(eval crop / 0.875); a --resize you give replaces "
        "a preset's evaluation sizes); train and test sizes may differ, FixRes",
    )
    eval_crop: int | None = setting(
        None,
        "evaluate the centre PX x PX of the images, after --eval-resize (default: no crop; "
        "streamed data: the training size)",
    )
    progressive_resize: int = setting(
        0,
        "progressive resizing: train the first epoch at PX x PX, growing linearly "
        "to the full size (--resize, or the dataset's) by --progressive-until; evaluation "
        "stays at the full size (0: off)",
    )
    progressive_until: float = setting(
        0.5,
        "with --progressive-resize: where in the run training reaches the full "
        "size, as a fraction of the epochs (0: from the second epoch, 1: in the last)",
    )
    val_split: int = setting(0, "hold out N training examples to pick best.safetensors (0: none)")
    subset: int | None = setting(None, "use a seeded random subset of N examples of each split")
    # optimisation
    epochs: int = setting(10, "passes over the training set")
    time_limit: str | None = setting(
        None,
        "fit the whole run (training, evaluations, final test, report) in this time, e.g. 10m, "
        "90s, 1h30m: step times measured at the start choose the epochs and the resize schedule, "
        "and the rest is shortened if the machine slows down (train/plan.py; not with --epochs)",
    )
    batch_size: int = setting(256, "the global batch, split across processes")
    lr: float = setting(0.1, "the (peak) learning rate")
    optimizer: str = setting("sgd", "optimizer", choices=("sgd", "adamw"))
    momentum: float = setting(0.0, "SGD momentum")
    nesterov: bool = setting(False, "Nesterov momentum (SGD)")
    weight_decay: float = setting(
        0.0, "weight decay of conv and linear weights (not of BN and biases)"
    )
    schedule: str = setting(
        "constant",
        "learning-rate schedule: constant, onecycle (linear warm-up, linear decay to 0) or cosine",
        choices=("constant", "onecycle", "cosine"),
    )
    warmup: float = setting(0.0, "fraction of all steps spent warming up (onecycle, cosine)")
    label_smoothing: float = setting(0.0, "label smoothing of the training loss")
    # the weights kept, and how they are measured
    ema: float = setting(
        0.0,
        "keep an exponential moving average of the weights, batch-norm statistics included, "
        "with this decay per step (e.g. 0.99; 0: off), warmed up as min(decay, (1 + t) / (10 + t)) "
        "at step t: the average is what is evaluated and saved",
    )
    tta: str = setting(
        "none",
        "test-time augmentation of the kept weights' final test figure: flip, or flip and "
        "one-pixel shifts (flip-shift; inference/tta.py); per-epoch evaluations stay plain",
        choices=TTA_MODES,
    )
    epoch_test: bool = setting(
        True,
        "evaluate the test set after every epoch (--no-epoch-test: only the kept weights, "
        "at the end; validation picks them, and the curves show it)",
    )
    final_test: bool = setting(
        True,
        "evaluate the test set at the end, for the kept weights (--no-final-test, with "
        "--no-epoch-test: the run measures no test figure at all, as a sweep's trials do)",
    )
    # execution
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    amp: bool | None = setting(
        None, "bf16 autocast (default: a timed probe decides where bf16 is native; else off)"
    )
    channels_last: bool | None = setting(
        None, "channels_last memory format (default: a timed probe decides on CPU and CUDA)"
    )
    capture: bool | None = setting(
        None,
        "replay each training step and evaluation batch from a CUDA graph "
        "(default: on CUDA with one process, SGD and no --compile)",
    )
    compile: bool = setting(
        False,
        "torch.compile the model for training (each epoch then drops its last, "
        "smaller batch: one shape, one compilation)",
    )
    sync_bn: bool = setting(False, "batch norm over the global batch across processes")
    seed: int = setting(0, "seed of the initial weights, data order and augmentation")
    # reporting
    tensorboard: bool = setting(
        False, "TensorBoard event files in the run folder (the tensorboard extra)"
    )
    mlflow: str | None = setting(
        None,
        "log the run to this MLflow tracking URI too (e.g. http://127.0.0.1:5000): the "
        "configuration, each epoch's metrics, the summary, report.html and the kept weights; "
        "--resume continues the same MLflow run (the mlflow extra)",
    )

    def __post_init__(self) -> None:
        self._check_types()  # also: every float finite (NaN compares false: `lr <= 0` let --lr nan train)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        for name in ("momentum", "weight_decay", "crop_padding", "val_split", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise UsageError(  # named as a Python caller and as the command line know it
                    f"{name} (--{flag_name(name)}) must be zero or positive, got {getattr(self, name)}"
                )
        for name in ("warmup", "erasing", "progressive_until"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}"
                )
        if not 0 <= self.ema < 1:
            raise UsageError(f"--ema must be at least 0 (off) and below 1, got {self.ema}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(
                f"--label-smoothing must be at least 0 and below 1, got {self.label_smoothing}"
            )
        if self.workers < 0:
            raise UsageError(f"--workers must be zero or positive, got {self.workers}")
        if self.shard_window < 1:
            raise UsageError(f"--shard-window must be at least 1, got {self.shard_window}")
        if self.resize is not None and self.resize <= 0:
            raise UsageError(f"--resize must be positive, got {self.resize}")
        if (
            self.resize is not None and self.resize > MAX_RESIZE
        ):  # beyond, a batch takes terabytes (or overflows)
            raise UsageError(f"--resize must be at most {MAX_RESIZE} pixels, got {self.resize}")
        self._check_eval_sizes()
        if self.init == "whiten" and self.init_from:
            raise UsageError(
                "--init whiten sets the first layer from the data and --init-from would overwrite it; drop one"
            )
        if not 0 <= self.progressive_resize <= MAX_RESIZE:
            raise UsageError(
                f"--progressive-resize must be between 1 and {MAX_RESIZE} pixels (0: off), "
                f"got {self.progressive_resize}"
            )
        if self.time_limit is not None:
            parse_duration(self.time_limit)
        if not -(2**63) <= self.seed < 2**63:  # torch seeds are 64-bit
            raise UsageError(f"--seed must fit in 64 bits, got {self.seed}")
        if not self.final_test and self.epoch_test:
            raise UsageError(
                "--no-final-test measures no test figure, but --epoch-test tests every epoch; "
                "add --no-epoch-test"
            )
        if self.subset is not None and self.subset <= 0:
            raise UsageError(f"--subset must be positive, got {self.subset}")
        if self.random_resized_crop and self.crop_padding:
            raise UsageError(
                "a random-resized crop replaces the padded crop: drop --crop-padding (add "
                "--crop-padding 0 after a preset that sets it) or --random-resized-crop"
            )
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UsageError(
                    f"unknown {f.name} {getattr(self, f.name)!r}; use {', '.join(choices)}"
                )

    def _check_eval_sizes(self) -> None:
        for name in ("eval_resize", "eval_crop"):
            size = getattr(self, name)
            if size is not None and not 0 < size <= MAX_RESIZE:
                raise UsageError(
                    f"--{flag_name(name)} must be between 1 and {MAX_RESIZE} pixels, got {size}"
                )
        if self.eval_crop and self.eval_resize and self.eval_crop > self.eval_resize:
            raise UsageError(
                f"--eval-crop {self.eval_crop} is larger than the --eval-resize {self.eval_resize} "
                "image it crops; pass a crop at most that size"
            )

    def _check_types(self) -> None:
        """Each value of the field's type (a whole number where an int is wanted, a finite number
        where a float is): a configuration file or a Python caller gets one clear line."""
        for name, kinds in field_types().items():
            value = getattr(self, name)
            if value is None and type(None) in kinds:
                continue
            if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise UsageError(f"--{flag_name(name)} must be a finite number, got {value}")
                setattr(self, name, float(value))
            elif not any(
                isinstance(value, k) and not (k is int and isinstance(value, bool)) for k in kinds
            ):
                wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise UsageError(f"--{flag_name(name)} takes {wanted}, got {value!r}")

    @property
    def streamed(self) -> bool:
        """Whether the data is streamed from disk (data/stream.py) rather than held in memory."""
        return self.stream or self.data.startswith("shards:")

    def epoch_sizes(self, full: int) -> list[int] | None:
        """The training image side of each epoch under --progressive-resize (None without it): from
        `progressive_resize` in the first epoch, linearly to `full`, reached at epoch
        `progressive_until` * (epochs - 1) (counted from 0) and kept after it."""
        if not self.progressive_resize:
            return None
        return resize_schedule(self.progressive_resize, full, self.progressive_until, self.epochs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(
                f"unknown configuration keys {unknown}; this configuration was made by another "
                "resnetlab version or by hand: remove them"
            )
        return cls(**d)


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def field_types() -> dict[str, tuple[type, ...]]:
    """Each field's accepted Python types, from its annotation (`int | None` -> (int, NoneType))."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: typing.get_args(hint) or (hint,) for name, hint in hints.items()}


def read_config_file(path: str | Path) -> dict:
    """The configuration saved in a JSON file: a run's config.json (its "config") or a bare one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path} does not exist; pass a run's config.json") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path} is a folder; pass its config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--config {path} is not a JSON configuration ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} holds no configuration object; pass a run's config.json")
    return data
