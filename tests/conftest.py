"""What the whole suite shares: the `needs_fashion_mnist` mark and the skip policy.

Tests so marked train or evaluate on the real Fashion-MNIST. Where it is not on this machine (in
Debian's dataset-fashion-mnist package or the user cache; the tests never download), they skip
and say how to get it. CI sets RESNETLAB_TEST_STRICT=1, which turns such a skip, and every other
skip but the CUDA tests' (a missing extra, browser, measurement), into an error, so that every one
of them runs there (tests/skip_policy.py). RESNETLAB_TEST_REQUIRE_DATA=1, the older switch, still
makes missing data an error.
"""

from __future__ import annotations

import os

import pytest
from skip_policy import (  # noqa: F401  (pytest's hooks, taken in by name)
    STRICT_ENV,
    pytest_make_collect_report,
    pytest_runtest_makereport,
)

needs_fashion_mnist = pytest.mark.needs_fashion_mnist
REQUIRE_ENV = "RESNETLAB_TEST_REQUIRE_DATA"


def _fashion_mnist_missing() -> str | None:
    """Why the real Fashion-MNIST cannot be read here, or None when it can."""
    from resnetlab.data import dataset_status

    status = dataset_status("fashion-mnist")
    bad = {split: s["status"] for split, s in status["splits"].items() if s["status"] != "ok"}
    return f"Fashion-MNIST {bad} here" if bad else None


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if "needs_fashion_mnist" in item.keywords]
    if not marked:
        return
    missing = _fashion_mnist_missing()
    if missing is None:
        return
    for switch in (STRICT_ENV, REQUIRE_ENV):
        if os.environ.get(switch) == "1":
            raise pytest.UsageError(
                f"{switch}=1 but {missing}: install Debian's dataset-fashion-mnist"
            )
    skip = pytest.mark.skip(
        reason=f"needs the real Fashion-MNIST ({missing}): apt-get install dataset-fashion-mnist, "
        "or `resnetlab data fetch fashion-mnist` where the network allows"
    )
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory):
    """The precision-and-layout probe's cache (train/precision.py) in a folder of the test
    session's: runs here neither read the user's decisions nor leave theirs behind."""
    path = tmp_path_factory.mktemp("probe") / "probe.json"
    previous = os.environ.get("RESNETLAB_PROBE_CACHE")
    os.environ["RESNETLAB_PROBE_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("RESNETLAB_PROBE_CACHE", None)
    else:
        os.environ["RESNETLAB_PROBE_CACHE"] = previous


@pytest.fixture
def ctrl_c_at(monkeypatch):
    """`ctrl_c_at(n)`: Ctrl-C arrives as the training loop reads its stop flag for the n-th time
    (it reads it once a step). `monkeypatch.undo()` takes it away again."""
    from resnetlab.train import engine

    def arm(n: int) -> None:
        class StopAtStep(engine.StopFlag):
            calls = 0

            @property
            def requested(self):
                StopAtStep.calls += 1
                return StopAtStep.calls >= n

            @requested.setter
            def requested(self, value):
                pass

        monkeypatch.setattr(engine, "StopFlag", StopAtStep)

    return arm
