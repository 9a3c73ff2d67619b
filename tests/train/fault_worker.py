"""`python -m resnetlab` plus test-only hooks, for tests/train/test_faults.py:

    python tests/train/fault_worker.py train ...

Every hook is set by an environment variable; without them this is `resnetlab` unchanged.

RESNETLAB_TEST_PHASES  print "phase: WHAT" on stderr as the run enters each phase (step,
                       eval, write=NAME, plot), so the test knows what a kill interrupted;
                       "rss" adds the resident memory and the bytes malloc has handed out:
                       "phase: WHAT rss=BYTES heap=BYTES"
RESNETLAB_TEST_KILL    PHASE:N: SIGKILL this process on the N-th entry (1-based) into PHASE, where
                       PHASE is step, eval, plot, or write=NAME (a file name: the kill comes after
                       half of the file's bytes reached its temporary file, before the rename)
RESNETLAB_TEST_LEAK    "batch": keep a copy of one training batch every epoch, a deliberate leak
                       (test_soak.py's control: its bound must catch it)
"""

import contextlib
import ctypes
import os
import signal
import sys

import resnetlab.fileio as fileio
import resnetlab.inference.evaluation as evaluation
import resnetlab.report.plots as plots
import resnetlab.train.engine as engine
import resnetlab.train.trainer  # noqa: F401  (loaded first, so that its names can be patched)
from resnetlab.cli import main

# where each patched function is defined
HOMES = {
    "atomic_open": fileio,
    "evaluate": evaluation,
    "fit": engine,
    "plot_curves": plots,
    "plot_confusion": plots,
}

SHOW = os.environ.get("RESNETLAB_TEST_PHASES", "")
KILL = os.environ.get("RESNETLAB_TEST_KILL", "")
KILL_PHASE, _, KILL_AT = KILL.rpartition(":")
LEAK = os.environ.get("RESNETLAB_TEST_LEAK", "")
counts: dict[str, int] = {}


def _rss() -> int:
    """Resident memory now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        )
    ]


def _heap() -> int:
    """Bytes malloc has handed out and not had back, all arenas and mmapped blocks (glibc's
    mallinfo2): what a leak of tensors grows byte for byte, while resident memory hides it in the
    pages that freed blocks leave; -1 where glibc has no mallinfo2."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return -1
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def _die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def enter(phase: str, kill_now: bool = True) -> bool:
    """Note the phase; True when this entry is the one to be killed in."""
    counts[phase] = counts.get(phase, 0) + 1
    if SHOW:
        print(
            f"phase: {phase}{f' rss={_rss()} heap={_heap()}' if SHOW == 'rss' else ''}",
            file=sys.stderr,
            flush=True,
        )
    due = KILL_PHASE == phase and counts[phase] == int(KILL_AT)
    if due and kill_now:
        _die()
    return due


class _HalfThenDie:
    """A file that writes half of the first large write (or of everything), then kills the process."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data):
        self.f.write(data[: max(1, len(data) // 2)])
        self.f.flush()
        _die()

    def __getattr__(self, name):
        return getattr(self.f, name)


def _watched_atomic_open(real):
    @contextlib.contextmanager
    def atomic_open(path, mode="wb"):
        due = enter(f"write={os.path.basename(str(path))}", kill_now=False)
        with real(path, mode) as f:
            yield _HalfThenDie(f) if due else f

    return atomic_open


def _watched(name, fn):
    def run(*args, **kwargs):
        enter(name)
        return fn(*args, **kwargs)

    return run


class _LeakyStep:
    """The step, keeping a copy of the last batch it took at each epoch's start: a leak of one
    batch an epoch."""

    def __init__(self, step) -> None:
        self.step, self.last, self.kept = step, None, []

    def __call__(self, x, y, lr, *rest):  # rest: the share's loss weight (several processes)
        self.last = x
        return self.step(x, y, lr, *rest)

    def start_epoch(self, partial):
        if self.last is not None:
            self.kept.append(self.last.clone())
        return self.step.start_epoch(partial)

    def __getattr__(self, name):
        return getattr(self.step, name)


def _watched_fit(fit):
    def run(step, *args, **kwargs):
        def before_step(opt, args, kwargs):  # a pre-hook must return None
            enter("step")

        step.optimizer.register_step_pre_hook(before_step)
        return fit(_LeakyStep(step) if LEAK == "batch" else step, *args, **kwargs)

    return run


def _patch_everywhere(name: str, wrap) -> None:
    """Replace `name` in every loaded resnetlab module that bound it (`from x import name`), so the
    hooks survive the trainer's code moving between modules."""
    original = getattr(HOMES[name], name)
    wrapped = wrap(original)
    for module in list(sys.modules.values()):
        if (
            getattr(module, "__name__", "").startswith("resnetlab")
            and getattr(module, name, None) is original
        ):
            setattr(module, name, wrapped)


_patch_everywhere("atomic_open", _watched_atomic_open)  # fileio's own writers and weights.py
_patch_everywhere("evaluate", lambda fn: _watched("eval", fn))  # per-epoch and final evaluation
_patch_everywhere("plot_curves", lambda fn: _watched("plot", fn))
_patch_everywhere("plot_confusion", lambda fn: _watched("plot", fn))
_patch_everywhere("fit", _watched_fit)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
