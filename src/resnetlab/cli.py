"""The `resnetlab` command: argument parsing and one-line errors, nothing else.

Each sub-command is a pair: `_add_<name>(subparsers)` declares its flags and `_cmd_<name>(args)`
calls the package function that does the work. A `ResnetlabError` becomes one line on stderr
and its exit status (2 for bad usage, 1 for a failed run); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys

from resnetlab.errors import ResnetlabError


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


COMMANDS = []  # each section appends its `_add_<name>`, in the order --help shows them


# --- sub-commands -------------------------------------------------------------------------
# (each section below belongs to one feature; keep them independent)


def build_parser() -> argparse.ArgumentParser:
    from resnetlab import __version__

    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Residual networks on PyTorch: models, data, training, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ResnetlabError as e:
        print(f"resnetlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("resnetlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
