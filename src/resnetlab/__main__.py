from resnetlab.cli import main
from resnetlab.distributed.group import exit_status

raise SystemExit(exit_status(main()))
