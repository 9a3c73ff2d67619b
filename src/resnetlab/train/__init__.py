"""Training: configuration, presets, the loop, the run folder."""

from resnetlab.train.config import TrainConfig
from resnetlab.train.presets import PRESETS, make_config
from resnetlab.train.trainer import train

__all__ = ["TrainConfig", "PRESETS", "make_config", "train"]
