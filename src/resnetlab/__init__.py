"""resnetlab: residual networks on PyTorch."""

__version__ = "0.1.0"


def __getattr__(name):
    # Keep `import resnetlab` cheap (no torch import) until a model function is used.
    if name in ("create_model", "list_models"):
        from resnetlab import models

        return getattr(models, name)
    if name in ("d2l", "sweep"):  # resnetlab.sweep(...) calls the package (see its docstring)
        import importlib

        return importlib.import_module(f"resnetlab.{name}")
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
