"""Mutation testing of the modules where a silent bug costs most: prints the kill rate per module.

    python benchmarks/mutation.py                      # every module below (slow: not for CI)
    python benchmarks/mutation.py data/mixing.py ...   # some of them
    python benchmarks/mutation.py --survivors data/mixing.py   # and each survivor's diff

Each module runs mutmut (the `mutation` extra) in its own scratch copy of src/, tests/ and
pyproject.toml, with only that module mutated (for a module in PARTS, only some of its functions'
mutants run) and only the fast tests that cover it. A scratch copy because mutmut puts its
trampolined copy of the package in mutants/src and the tests must import resnetlab from there:
run in the worktree itself, the editable install's path to src/ can win and every mutant reads
"no tests". Survivors that are equivalent mutants (no test can tell
them from the original) are listed, each with its reason, in docs/robustness.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "src/resnetlab"

# module (under src/resnetlab) -> the tests that cover it: files, then an optional -k selection.
# Fast tests only; the slow end-to-end runs would make one module take hours.
MODULES: dict[str, list[str]] = {
    "data/mixing.py": ["tests/data/test_mixing.py"],
    "inference/tta.py": ["tests/train/test_recipes.py", "-k", "flip or with_tta"],
    "explain/cam.py": ["tests/test_explain.py", "tests/test_explain_cli.py", "-m", "not slow"],
    "train/checkpoint.py": [
        "tests/train/test_checkpoint.py",
        "tests/test_hostile_input.py",
        "-k",
        "test_checkpoint or checkpoint_loader or run_code",
    ],
    "train/steps.py": [
        "tests/train/test_steps.py",
        "tests/train/test_recipes.py",
        "-k",
        "test_steps or weight_average or warm",
    ],
    "data/decode.py": [
        "tests/data/test_decode.py",
        "tests/data/test_image_reader.py",
        "tests/data/test_stream.py",
        "-m",
        "not slow",
        "-k",
        "test_image_reader or box or decode or view or augmentations or bad",
    ],
    # their end-to-end tests (test_stream.py) pack a set and start worker processes per test
    "data/stream.py": ["tests/data/test_stream_loader.py"],
    "data/shards.py": ["tests/data/test_shards.py"],
    # the shared draws and settings; test_augment.py checks each piece, the loaders' tests the wiring
    "data/augment.py": [
        "tests/data/test_augment.py",
        "tests/data/test_loader_rules.py",
        "tests/data/test_stream_loader.py",
        "tests/data/test_mixing.py",
        "tests/data/test_path.py",
        "-m",
        "not slow",
    ],
    "data/loader.py": [
        "tests/data/test_loader_rules.py",
        "tests/data/test_data_loader.py",
        "tests/data/test_loader_recipe.py",
        "-m",
        "not slow",
    ],
    # its end-to-end tests (test_learning.py, test_train.py) train a run each
    "train/engine.py": ["tests/train/test_engine.py"],
    # the comparison's end-to-end tests (test_folder_changes.py, test_stream_train.py) train a run
    "data/identity.py": ["tests/data/test_identity.py"],
    # what both loaders share: each loader's fast tests exercise it
    "data/batching.py": [
        "tests/data/test_loader_rules.py",
        "tests/data/test_data_loader.py",
        "tests/data/test_loader_recipe.py",
        "tests/data/test_stream_loader.py",
        "-m",
        "not slow",
    ],
    # FolderFiles.digest alone (PARTS), the folder's version identity.py compares
    "data/datasets.py": [
        "tests/data/test_identity.py",
        "tests/data/test_shards.py",
        "-k",
        "test_identity or digest or an_image_folder_is_read_as_it_is",
    ],
}

# modules mutated in part: module -> the functions (mutmut's mangled names) whose mutants are run
PARTS: dict[str, list[str]] = {"data/datasets.py": ["xǁFolderFilesǁdigest"]}

PYTEST_ARGS = ["-x", "-q", "-n", "0", "-p", "no:cacheprovider"]
KILLED = {1, 3, 36, -9, -11, 24, -24, 152, 255}  # failed, pytest error, timeout, crash
# the equivalent mutants, each with its reason, live in one place: docs/robustness.md's table
EQUIVALENT_DOC = ROOT / "docs" / "robustness.md"
MUTANT_NAME = re.compile(r"`(resnetlab\.[\w.\u01c1]+__mutmut_\d+)`")


def equivalent_mutants() -> set[str]:
    """The mutant names docs/robustness.md lists as equivalent (mutmut's names: they hold for the
    commit the table was written at; a changed function renumbers its mutants)."""
    return set(MUTANT_NAME.findall(EQUIVALENT_DOC.read_text()))


def scratch_copy(module: str, tests: list[str], where: Path) -> Path:
    work = where / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(work, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    files = [t for t in tests if t.startswith("tests/")]
    selection = [t for t in tests if not t.startswith("tests/")]
    config = {
        "source_paths": ["src"],
        "only_mutate": [f"{PACKAGE}/{module}"],
        "pytest_add_cli_args": PYTEST_ARGS + selection,
        "pytest_add_cli_args_test_selection": files,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    text = (ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n"
    (work / "pyproject.toml").write_text(text)
    return work


def mutant_patterns(module: str) -> list[str]:
    """mutmut's names of the mutants to run in `module`: all (none given), or its PARTS'."""
    dotted = PACKAGE.removeprefix("src/").replace("/", ".") + "."
    dotted += module.removesuffix(".py").replace("/", ".")
    return [f"{dotted}.{function}__mutmut_*" for function in PARTS.get(module, [])]


def outcome(work: Path, module: str) -> dict[str, int]:
    meta = json.loads((work / "mutants" / PACKAGE / f"{module}.meta").read_text())
    codes = meta["exit_code_by_key"]
    patterns = mutant_patterns(module)
    return {
        name: code
        for name, code in sorted(codes.items())
        if not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "modules", nargs="*", help=f"under {PACKAGE}; default: all of {list(MODULES)}"
    )
    parser.add_argument(
        "--survivors", action="store_true", help="print each surviving mutant's diff"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the scratch copies here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"not a listed module: {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    where = args.workdir or Path(tempfile.mkdtemp(prefix="resnetlab-mutation-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    mutmut = [sys.executable, "-m", "mutmut"]
    equivalent = equivalent_mutants()
    for module in args.modules or list(MODULES):
        work = scratch_copy(module, MODULES[module], where)
        log = work / "mutmut.log"
        with log.open("w") as out:
            run = subprocess.run(
                [*mutmut, "run", "--max-children", "1", *mutant_patterns(module)],
                cwd=work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if run.returncode != 0:
            print(f"{module}: mutmut failed (status {run.returncode}); see {log}", file=sys.stderr)
            return 1
        codes = outcome(work, module)
        survived = [name for name, code in codes.items() if code == 0 and name not in equivalent]
        excluded = [name for name, code in codes.items() if code == 0 and name in equivalent]
        # a listed mutant that is now killed is not equivalent: it counts as killed, and is named
        stale = [name for name, code in codes.items() if code != 0 and name in equivalent]
        killed = sum(code in KILLED for code in codes.values())
        other = len(codes) - killed - len(survived) - len(excluded)  # no tests, skipped, ...
        counted = len(codes) - len(excluded)
        rate = 100 * killed / counted if counted else 0.0
        print(
            f"{module:20} {rate:5.1f} %  killed {killed}/{counted}  survived {len(survived)}  "
            f"equivalent {len(excluded)} (of {len(codes)} generated)  not run {other}",
            flush=True,
        )
        for name in stale:
            print(f"  listed as equivalent but killed: {name}")
        for name in survived:
            print(f"  survived: {name}")
            if args.survivors:
                diff = subprocess.run(
                    [*mutmut, "show", name], cwd=work, env=env, capture_output=True, text=True
                )
                print("    " + diff.stdout.replace("\n", "\n    ").rstrip())
    print(f"\nscratch copies and mutmut's logs: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
