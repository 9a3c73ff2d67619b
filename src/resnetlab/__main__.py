import os
import sys

from resnetlab.cli import main

code = main()
if "TORCHELASTIC_RUN_ID" in os.environ:
    # A torchrun rank whose work is done and saved leaves without the interpreter's teardown:
    # under load, Gloo's threads sometimes abort there ("terminate called without an active
    # exception", seen twice in one CI-like run of the multi-process tests) after a clean run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
raise SystemExit(code)
