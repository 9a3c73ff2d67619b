"""resnetlab: residual networks on PyTorch."""

import importlib

from resnetlab.version import __version__

__all__ = ["__version__", "create_model", "list_models", "d2l", "sweep"]

# Imported on first use, so that `import resnetlab` stays cheap (no torch).
_WHERE = {
    "create_model": "resnetlab.models",
    "list_models": "resnetlab.models",
    "d2l": None,  # the module itself
    "sweep": None,  # a callable package: resnetlab.sweep(...) (see its docstring)
}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
    if _WHERE[name] is None:
        return importlib.import_module(f"resnetlab.{name}")
    return getattr(importlib.import_module(_WHERE[name]), name)
