"""Recipe search over `resnetlab train`'s settings, on Optuna (`resnetlab sweep`):

    import resnetlab
    study = resnetlab.sweep({"lr": "log:0.02:1"}, trials=16, preset="quick", epochs=4)

This package is itself callable (`resnetlab.sweep(...)` is `resnetlab.sweep.sweep(...)`), so the
function and the package share one name. Importing it is cheap: Optuna and torch load on the
first call.
"""

import sys
import types

__all__ = ["sweep", "run_sweep", "parse_space"]


def __getattr__(name: str):
    if name in ("sweep", "run_sweep"):
        from resnetlab.sweep import search

        return getattr(search, name)
    if name == "parse_space":
        from resnetlab.sweep.space import parse_space

        return parse_space
    raise AttributeError(f"module 'resnetlab.sweep' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, space, trials=None, **kwargs):
        from resnetlab.sweep.search import sweep

        return sweep(space, trials, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
