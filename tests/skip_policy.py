"""No silent skips in CI: with RESNETLAB_TEST_STRICT=1 (.ci/run sets it), a test or a test module
that would skip (a missing extra such as onnxruntime, Pillow or tensorboard, a missing browser,
missing data, a measurement this machine cannot make) fails instead, saying what was missing.
Only the CUDA tests may skip there: their reason starts with "needs a CUDA GPU", and pytest's
summary line counts them.

tests/conftest.py takes these hooks in (`from skip_policy import ...`); tests/test_skip_policy.py
runs them on a small suite of its own.
"""

from __future__ import annotations

import os

import pytest

STRICT_ENV = "RESNETLAB_TEST_STRICT"
MAY_SKIP = "needs a CUDA GPU"  # the start of the one skip reason allowed in strict runs


def strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def _reason(longrepr) -> str:
    """The reason a skip report gives (pytest keeps (path, line, "Skipped: reason"))."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_instead(report) -> None:
    if not (strict() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _reason(report.longrepr)
    if reason.startswith(MAY_SKIP):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{STRICT_ENV}=1 (CI) but this would have skipped: {reason}. Only the CUDA tests may "
        "skip here: install what it needs (.ci/run, pip install -e '.[test]')"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_instead(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole module at collection
    _fail_instead(outcome.get_result())
