"""The resolved configuration of a run: one dataclass, preset defaults plus overrides."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from resnetlab.errors import UsageError


MAX_RESIZE = 4096  # pixels a side: a 256-image batch of 4096 x 4096 RGB floats is already 48 GiB


@dataclass
class TrainConfig:
    preset: str = "quick"
    # model
    model: str = "resnet20"
    model_kwargs: dict = field(default_factory=dict)
    init: str = "default"  # "default" (PyTorch's) or "xavier" (the textbook's train_ch6)
    # data
    data: str = "fashion-mnist"
    data_dir: str | None = None
    resize: int | None = None  # pixels; None keeps the dataset's size
    normalize: bool = True  # subtract the dataset mean, divide by its std
    crop_padding: int = 0  # random crop after padding by this many pixels
    flip: bool = False  # random horizontal flip
    erasing: float = 0.0  # random-erasing probability
    val_split: int = 0  # examples held out of the training set to pick the best weights
    subset: int | None = None  # train on a seeded random subset of this many examples
    # optimisation
    epochs: int = 10
    batch_size: int = 256  # the global batch, split across processes
    lr: float = 0.1  # the peak learning rate
    optimizer: str = "sgd"  # "sgd" or "adamw"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant", "onecycle" (linear warm-up, linear decay) or "cosine"
    warmup: float = 0.0  # fraction of all steps spent warming up (onecycle, cosine)
    label_smoothing: float = 0.0
    # execution
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    amp: bool | None = None  # bf16 autocast; None: on where it pays (CUDA, CPUs with bf16)
    channels_last: bool | None = None  # None: on (measured faster on CPU and CUDA)
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        # Every float must be a finite number: NaN compares false with everything, so `lr <= 0`
        # alone let `--lr nan` train, evaluate and save NaN weights without a word.
        for name in ("lr", "momentum", "weight_decay", "warmup", "label_smoothing", "erasing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(self, name)}")
        for name in ("warmup", "erasing"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing must be at least 0 and below 1, got {self.label_smoothing}")
        if self.crop_padding < 0:
            raise UsageError(f"--crop-padding must be zero or positive, got {self.crop_padding}")
        if self.resize is not None and self.resize <= 0:
            raise UsageError(f"--resize must be positive, got {self.resize}")
        if self.resize is not None and self.resize > MAX_RESIZE:  # beyond, a batch takes terabytes (or overflows)
            raise UsageError(f"--resize must be at most {MAX_RESIZE} pixels, got {self.resize}")
        if not -2**63 <= self.seed < 2**63:  # torch seeds are 64-bit
            raise UsageError(f"--seed must fit in 64 bits, got {self.seed}")
        if self.val_split < 0:
            raise UsageError(f"--val-split must be zero or positive, got {self.val_split}")
        if self.subset is not None and self.subset <= 0:
            raise UsageError(f"--subset must be positive, got {self.subset}")
        if self.optimizer not in ("sgd", "adamw"):
            raise UsageError(f"unknown optimizer {self.optimizer!r}; use sgd or adamw")
        if self.schedule not in ("constant", "onecycle", "cosine"):
            raise UsageError(f"unknown schedule {self.schedule!r}; use constant, onecycle or cosine")
        if self.init not in ("default", "xavier"):
            raise UsageError(f"unknown init {self.init!r}; use default or xavier")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown configuration keys {unknown}; this run was made by another resnetlab version")
        try:
            return cls(**d)
        except TypeError as e:  # a value of the wrong type ("5" for epochs) fails a comparison
            raise UsageError(f"a configuration value has the wrong type ({e}); this run was made by another "
                             "resnetlab version or edited") from None

    def replace(self, **overrides) -> "TrainConfig":
        return dataclasses.replace(self, **overrides)
