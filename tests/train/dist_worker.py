"""`resnetlab` as torchrun runs it, plus test-only hooks set by environment variables.

    torchrun --nproc-per-node 2 tests/train/dist_worker.py train ...

RESNETLAB_TEST_DUMP_DIR   each process saves its weights after training to DIR/rank<R>.pt (and with
                          --ema their moving average to DIR/rank<R>_average.pt)
RESNETLAB_TEST_SYNC_EVERY steps between the loop's sync points (engine.SYNC_EVERY)
RESNETLAB_TEST_FLOAT64    train in float64, so that runs that differ only in how the global batch
                          is split agree to ~1e-12 instead of float32 rounding amplified by training
RESNETLAB_TEST_FAULT      RANK:STEP:WHAT: after optimizer step STEP, process RANK does WHAT:
                          exit (dies with status 3), hang (stops taking part), sigint (sends
                          Ctrl-C to its launcher, as a terminal would); it first prints
                          "fault: rank R WHAT after step STEP at T" on stderr, T its
                          time.monotonic() (one clock for every process of the machine)
"""

import os
import signal
import sys
import time

import torch

import resnetlab.train.engine as engine
import resnetlab.train.setup as setup
import resnetlab.train.trainer as trainer
from resnetlab.cli import main
from resnetlab.distributed.group import exit_status

RANK = int(os.environ.get("RANK", "0"))


def _fault_hook(spec: str):
    rank, step, what = spec.split(":")
    steps = [0]

    def after_step(optimizer, args, kwargs):
        steps[0] += 1
        if int(rank) != RANK or steps[0] != int(step):
            return
        print(
            f"fault: rank {RANK} {what} after step {step} at {time.monotonic():.3f}",
            file=sys.stderr,
            flush=True,
        )
        if what == "exit":
            os._exit(3)
        elif what == "hang":
            time.sleep(3600)
        elif what == "sigint":
            os.kill(os.getppid(), signal.SIGINT)
        else:
            raise ValueError(f"unknown fault {what!r}")

    return after_step


def _patched_fit(fit):
    def run(step, *args, **kwargs):
        if os.environ.get("RESNETLAB_TEST_FAULT"):
            step.optimizer.register_step_post_hook(_fault_hook(os.environ["RESNETLAB_TEST_FAULT"]))
        state = fit(step, *args, **kwargs)
        if os.environ.get("RESNETLAB_TEST_DUMP_DIR"):
            raw = getattr(step.model, "module", step.model)
            torch.save(
                raw.state_dict(),
                os.path.join(os.environ["RESNETLAB_TEST_DUMP_DIR"], f"rank{RANK}.pt"),
            )
            average = step.average  # --ema's moving average
            if average is not None:
                torch.save(
                    average.model.state_dict(),
                    os.path.join(os.environ["RESNETLAB_TEST_DUMP_DIR"], f"rank{RANK}_average.pt"),
                )
        return state

    return run


def _float64(build_model):
    def build(*args, **kwargs):
        model = build_model(*args, **kwargs).double()
        model.register_forward_pre_hook(lambda module, inputs: tuple(x.double() for x in inputs))
        return model

    return build


if os.environ.get("RESNETLAB_TEST_FLOAT64"):
    setup.build_model = _float64(setup.build_model)
if os.environ.get("RESNETLAB_TEST_SYNC_EVERY"):
    engine.SYNC_EVERY = int(os.environ["RESNETLAB_TEST_SYNC_EVERY"])
trainer.fit = _patched_fit(trainer.fit)

if __name__ == "__main__":
    sys.exit(exit_status(main(sys.argv[1:])))
