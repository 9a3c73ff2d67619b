"""The settings of each experiment, in a module without torch, so that `resnetlab --help` (which
shows them) starts without importing it (measured: --help 1.9 s with torch imported, 0.2 s without).
The recipe each net of the degradation experiment trains with is the `degradation` preset
(train/presets.py)."""

# The settings `resnetlab experiment degradation` uses when no flag is given (docs/degradation.md
# records the runs that chose them): narrow nets on a subset of Fashion-MNIST at its native 28 px.
DEGRADATION_DEFAULTS = dict(
    data="fashion-mnist", depths=(20, 56), epochs=8, width=8, subset=8000, seed=0, lr=0.1
)
