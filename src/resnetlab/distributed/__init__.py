"""torch.distributed for resnetlab: a process learns its rank from torchrun's environment.

    group.py        joining and leaving the process group (DistInfo, init_from_env, session),
                    errors every process raises alike (shared), local rank 0 first
    collectives.py  the sums, gathers and flags the training loop and evaluation exchange
    ddp.py          DistributedDataParallel as the trainer wraps a model
    syncbn.py       batch norm over all processes (--sync-bn), also on the CPU
    setup_check.py  refusing processes started with different flags, data or versions
    launch.py       `resnetlab train --nproc N`: starts the processes with torchrun

Only the CLI imports launch.py (on demand): the training processes it starts never load it.
"""

from resnetlab.distributed.group import DistInfo, init_from_env, session, shared

__all__ = ["DistInfo", "init_from_env", "session", "shared"]
