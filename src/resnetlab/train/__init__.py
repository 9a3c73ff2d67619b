"""Training: configuration, presets, the loop, the run folder.

    from resnetlab.train import make_config, train

The names below are imported on first use, so that `resnetlab.train.config` (which the CLI reads
to make its flags) loads without torch.
"""

import importlib

_WHERE = {
    "TrainConfig": "resnetlab.train.config",
    "PRESETS": "resnetlab.train.presets",
    "make_config": "resnetlab.train.presets",
    "train": "resnetlab.train.trainer",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'resnetlab.train' has no attribute {name!r}")
