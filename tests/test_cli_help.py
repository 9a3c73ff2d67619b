"""Issue 31, item 15: every command and flag explains itself; `train --show-config`."""

from __future__ import annotations

import argparse
import json

from resnetlab import cli


def _parsers(parser: argparse.ArgumentParser, name: str = "resnetlab"):
    """Every parser and sub-parser, by its command line (argparse keeps them in `_actions`)."""
    yield name, parser
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_command_has_a_description_and_every_argument_help():
    missing = []
    for name, parser in _parsers(cli.build_parser()):
        if name.count(" ") >= 1 and not parser.description:
            if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):  # noqa: SLF001
                pass  # a group of commands (`data`, `experiment`): its commands describe themselves
            else:
                missing.append(f"{name}: no description")
        for action in parser._actions:  # noqa: SLF001
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_bench_shows_its_defaults():
    bench = cli.build_parser()._subparsers._group_actions[0].choices["bench"]  # noqa: SLF001
    text = " ".join(bench.format_help().split())
    assert "(training, evaluation, loading; default 3)" in text
    assert "the median counts (default 3)" in text


def test_show_config_prints_the_resolved_settings_and_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--preset", "quick", "--epochs", "3", "--show-config"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["preset"] == "quick" and settings["epochs"] == 3 and "lr" in settings
    assert not (tmp_path / "runs").exists()
    train_help = (
        cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()  # noqa: SLF001
    )
    assert "--show-config" in train_help


def test_every_source_file_a_help_text_names_exists():
    """Issue 40: `train --help` sent --tta's readers to train/tta.py, gone since TTA moved to
    inference/. A help text names files relative to the package (train/whiten.py) or the
    checkout (benchmarks/...)."""
    import re
    from pathlib import Path

    package = Path(cli.__file__).parent
    named, missing = set(), []
    for name, parser in _parsers(cli.build_parser()):
        for path in re.findall(r"[\w./-]+\.py\b", " ".join(parser.format_help().split())):
            named.add(path)
            if not ((package / path).is_file() or (package.parents[1] / path).is_file()):
                missing.append(f"{name}: {path}")
    assert named and not missing, missing
