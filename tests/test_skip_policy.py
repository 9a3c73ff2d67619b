"""The skip policy (tests/skip_policy.py) on a small suite of its own, run by pytest in a
subprocess: without the switch everything that cannot run skips; with RESNETLAB_TEST_STRICT=1
only the CUDA test does, and the rest fail saying what was missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SUITE = {
    "conftest.py": "from skip_policy import pytest_make_collect_report, pytest_runtest_makereport\n",
    "test_a.py": """
import pytest

def test_runs():
    assert True

def test_without_a_browser():
    pytest.skip("needs Chromium")

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_on_cuda():
    pass

@pytest.mark.skipif(True, reason="needs Linux /proc")
def test_on_linux():
    pass
""",
    "test_b.py": 'import pytest\npytest.importorskip("no_such_extra_installed")\n\ndef test_x():\n    pass\n',
}


def run_suite(tmp_path: Path, strict: bool) -> tuple[dict[str, int], str]:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNETLAB_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if strict:
        env["RESNETLAB_TEST_STRICT"] = "1"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--rootdir",
            str(tmp_path),
        ]
        + ["--continue-on-collection-errors", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = done.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    return counts, done.stdout


@pytest.mark.parametrize("strict", [False, True])
def test_only_the_cuda_tests_may_skip_under_the_switch(tmp_path, strict):
    counts, out = run_suite(tmp_path, strict)
    if not strict:
        assert counts == {"passed": 1, "skipped": 4}, out
        return
    # a skip in the test fails it; one at setup (skipif) or collection (importorskip) is an error
    assert counts == {"passed": 1, "failed": 1, "skipped": 1, "errors": 2}, out
    assert "RESNETLAB_TEST_STRICT=1 (CI) but this would have skipped: needs Chromium" in out
    assert "would have skipped: needs Linux /proc" in out
    assert "would have skipped: could not import 'no_such_extra_installed'" in out
    assert re.search(r"SKIPPED \[1\] test_a.py:\d+: needs a CUDA GPU", out), out
