"""A study shared by worker processes, as by machines: each runs the same `resnetlab sweep`
command against one storage and they split the trials; a worker killed mid-trial leaves that trial
failed and queued again, and the study still finishes. On PostgreSQL (Debian's, the throw-away
cluster .ci/postgres starts on 127.0.0.1: RESNETLAB_TEST_POSTGRES_URL); the kill test runs on a
SQLite file where that is not set, and test_sweep.py splits trials on SQLite (--jobs 2).
The PostgreSQL password must appear nowhere: not in any file of the sweep folders, not in output."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from sweep_tools import POSTGRES_ENV, load_study, start_worker, tiny_flags, trial_numbers

needs_fashion_mnist = pytest.mark.needs_fashion_mnist

pytest.importorskip("optuna", reason="needs the sweep extra: pip install 'resnetlab[sweep]'")
pytestmark = [
    needs_fashion_mnist,
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


def _postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is not set: start a throw-away PostgreSQL with "
            '`eval "$(.ci/postgres)"` (CI does)'
        )
    return url


@pytest.fixture
def postgres() -> str:
    """The shared store. (The same split on SQLite: test_sweep.py's --jobs 2 test.)"""
    return _postgres_url()


@pytest.fixture
def storage(tmp_path) -> str:
    """PostgreSQL where CI started it, else a SQLite file: the kill test runs everywhere."""
    if os.environ.get(POSTGRES_ENV):
        return os.environ[POSTGRES_ENV]
    return f"sqlite:///{tmp_path / 'shared.db'}"


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def _assert_no_password(url: str, folders: list[Path], outputs: list[str]) -> None:
    """The URL's password (it must have one: .ci/postgres sets it), plain or percent-encoded, is
    in no file of `folders` and in none of `outputs`."""
    password = _password(url)
    assert password, f"{url.split('@')[-1]}: a URL without a password leaves nothing to check"
    forms = {password, quote(password, safe="")}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(f.encode() in data for f in forms), f"password in {path}"
    for text in outputs:
        assert not any(f in text for f in forms), "password in the output"


def _sweep_args(storage: str, study: str, out: Path, trials: int, **flags) -> list[str]:
    return [
        "--space", "lr=log:0.05:0.5", "--trials", str(trials), "--pruner", "none",
        "--storage", storage, "--study", study, "--out", str(out), *tiny_flags(**flags),
    ]  # fmt: skip


def test_two_workers_split_the_trials(postgres, tmp_path):
    storage = postgres
    study = f"split-{uuid.uuid4().hex[:8]}"
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    workers = [start_worker(_sweep_args(storage, study, out, 4)) for out in (a, b)]
    outputs = [w.communicate(timeout=240) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err
    ran_a, ran_b = trial_numbers(a), trial_numbers(b)
    assert ran_a and ran_b, "one worker ran every trial"
    assert not ran_a & ran_b, f"trials {ran_a & ran_b} ran twice"
    assert ran_a | ran_b == {0, 1, 2, 3}
    trials = load_study(storage, study).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert all(
        (a if t.number in ran_a else b).joinpath(t.user_attrs["run"]).is_dir() for t in trials
    )
    _assert_no_password(storage, [a, b], [text for pair in outputs for text in pair])


def _wait_mid_trial(folder: Path, worker, timeout: float = 120) -> Path:
    """A trial folder of `folder` that has started training (config.json) and not finished."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert worker.poll() is None, worker.communicate()[1]
        for trial in sorted(folder.glob("trial-*")):
            if (trial / "metrics.csv").is_file() and not (trial / "summary.json").exists():
                return trial
        time.sleep(0.02)
    raise AssertionError("no trial started")


def test_killed_worker_fails_its_trial_and_the_study_finishes(storage, tmp_path):
    study = f"kill-{uuid.uuid4().hex[:8]}"
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    # heartbeats every second: a trial silent for two is failed and queued again
    args = ["--heartbeat", "1"]
    victim = start_worker([*_sweep_args(storage, study, a, 4, epochs=4), *args])
    trial = _wait_mid_trial(a, victim)  # after its first epoch, before its end
    survivor = start_worker([*_sweep_args(storage, study, b, 4, epochs=4), *args])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    out, err = survivor.communicate(timeout=240)
    assert survivor.returncode == 0, err
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    trials = load_study(storage, study).trials
    killed = int(trial.name.split("-")[1])
    states = {t.number: t.state.name for t in trials}
    assert states[killed] == "FAIL", states
    retries = [t for t in trials if Retry.retried_trial_number(t) == killed]
    assert [t.state.name for t in retries] == ["COMPLETE"], states
    assert sorted(states.values()).count("COMPLETE") == 4 and "RUNNING" not in states.values()
    for t in trials:  # nothing else lost: every completed trial's run folder is whole
        if t.state.name == "COMPLETE":
            run = (a if (a / t.user_attrs["run"]).is_dir() else b) / t.user_attrs["run"]
            assert (run / "summary.json").is_file() and (run / "best.safetensors").is_file()
    assert "trial" in out and not (trial / "summary.json").exists()
    if not storage.startswith("sqlite:"):  # a SQLite file has no password to leak
        _assert_no_password(storage, [a, b], [out, err])


def test_the_password_check_finds_each_form_of_the_password(tmp_path):
    """_assert_no_password above finds the password written plain or percent-encoded in any file
    under a folder, or in an output, and refuses a URL without one."""
    password = "p@ss/w:rd"
    url = f"postgresql://u:{quote(password, safe='')}@127.0.0.1:5432/db"
    assert _password(url) == password
    _assert_no_password(url, [tmp_path], ["clean"])  # nothing there
    for leaked in (password, quote(password, safe="")):
        (tmp_path / "deep" / "er").mkdir(parents=True, exist_ok=True)
        (tmp_path / "deep" / "er" / "log.txt").write_text(f"storage {leaked} here")
        with pytest.raises(AssertionError, match="password in .*log.txt"):
            _assert_no_password(url, [tmp_path], [])
        (tmp_path / "deep" / "er" / "log.txt").unlink()
        with pytest.raises(AssertionError, match="password in the output"):
            _assert_no_password(url, [tmp_path], [f"connecting to {leaked}"])
    with pytest.raises(AssertionError, match="without a password"):
        _assert_no_password("postgresql://u@127.0.0.1:5432/db", [tmp_path], [])
