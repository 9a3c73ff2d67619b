"""Faults during training: SIGKILL at any moment, writes that fail, two runs on one folder.

Each fault is injected, then the run folder is checked: every file under its final name parses
(a kill may leave only hidden temporary files), the previous checkpoint is usable, and resuming
ends with weights bit-identical to a run that was never interrupted.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnetlab import cli, fileio
from resnetlab.errors import WriteError
from resnetlab.train.checkpoint import load_checkpoint
from resnetlab.train.run import LOCK_FILE
from resnetlab.train.trainer import _finished as finished  # what --resume refuses to redo
from resnetlab.weights import load_weights

WORKER = str(Path(__file__).with_name("fault_worker.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")
# ~0.3 s an epoch here: 320 training, 64 validation and 384 test images at 16 px, 5 steps an epoch.
FLAGS = [
    "--model",
    "resnet20",
    "--subset",
    "384",
    "--val-split",
    "64",
    "--resize",
    "16",
    "--batch-size",
    "64",
    "--seed",
    "3",
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNETLAB_TEST_")}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def check_final_files(run: Path) -> list[str]:
    """Every file under a final name parses; returns their names. (Hidden `.NAME.*.tmp` files are
    the temporaries of atomic writes: a kill may leave one, the next run of the folder removes it.)"""
    from PIL import Image

    names = []
    for path in sorted(run.iterdir()):
        name = path.name
        if name.startswith(".") and name.endswith(".tmp") or name == LOCK_FILE:
            continue
        names.append(name)
        if name.endswith(".json"):
            assert isinstance(json.loads(path.read_text()), dict), name
        elif name == "metrics.csv":
            rows = list(csv.DictReader(path.open()))
            assert rows and all(r["epoch"] and r["epoch_seconds"] for r in rows), (
                "metrics.csv is cut short"
            )
            assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        elif name == "checkpoint.pt":
            load_checkpoint(path)
        elif name.endswith(".safetensors"):
            tensors, meta = load_weights(path)
            assert tensors and meta["model"] == "resnet20"
        elif name.endswith(".png"):
            with Image.open(path) as img:
                img.load()
        elif name == "events.jsonl":
            assert all(
                isinstance(json.loads(line), dict) for line in path.read_text().splitlines()
            ), name
        elif name in ("mistakes.csv", "confusion.csv"):
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            assert rows and all(len(r) == len(rows[0]) for r in rows), f"{name} is cut short"
        elif name == "report.html":
            assert path.read_text().rstrip().endswith("</html>"), "report.html is cut short"
        else:
            raise AssertionError(f"unexpected file {name} in the run folder")
    return names


def same_weights(a: Path, b: Path) -> bool:
    wa, _ = load_weights(a)
    wb, _ = load_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics_without_timing(run: Path) -> list[list[str]]:
    return [line.split(",")[:-2] for line in (run / "metrics.csv").read_text().splitlines()]


# --- SIGKILL at random moments ---------------------------------------------------------------


def _start(cmd: list[str], env: dict):
    """(process, its stderr lines as they come, an Event set, with the time in `.at`, at its first phase note)."""
    import threading

    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    working = threading.Event()
    working.ended = threading.Event()  # its stderr is read to the end

    def read():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("phase: ") and not working.is_set():
                working.at = time.monotonic()
                working.set()
        working.at = getattr(working, "at", time.monotonic())
        working.set()  # the process ended (perhaps before any phase): nobody waits forever
        working.ended.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, working


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_twenty_sigkills_at_random_moments_resume_to_bit_identical_weights(tmp_path):
    """20 SIGKILLs across a 4-epoch run: 8 at seeded random times, 12 at chosen moments (in a
    training step, in evaluation, half-way through writing the checkpoint, the metrics, the best
    and the final weights, while plotting). After each, every file under its final name parses;
    `--resume` then finishes with the weights of the uninterrupted run, bit for bit."""
    flags = [*FLAGS, "--epochs", "4"]
    reference = tmp_path / "straight"
    proc, lines, working = _start(
        [sys.executable, WORKER, "train", *flags, "--out", str(reference)],
        _env(RESNETLAB_TEST_PHASES="1"),
    )
    assert working.wait(300) and proc.wait(300) == 0, lines
    work = (
        time.monotonic() - working.at
    )  # from the first step to the end: the span random kills are drawn from

    rng = random.Random(18)
    epochs, steps_per_epoch = 4, 5
    # (kind, what, a seeded draw u in [0, 1)): a phase kill comes on the N-th entry into the phase,
    # N drawn from what is left of the run; a time kill u x (the work left) after start-up
    chosen = [
        "step",
        "step",
        "step",
        "eval",
        "eval",
        "write=checkpoint.pt",
        "write=checkpoint.pt",
        "write=metrics.csv",
        "write=best.safetensors",
        "write=model.safetensors",
        "plot",
        "plot",
    ]
    plan = [("phase", k, rng.random()) for k in chosen] + [
        ("time", "", rng.random()) for _ in range(8)
    ]
    rng.shuffle(plan)

    def reachable(
        item, done: int
    ) -> bool:  # can this kill come in a process that resumes after epoch `done`?
        what = item[1]
        if what == "write=best.safetensors":
            return done == 0  # the reference's best epoch is its first
        return done < epochs or what in ("", "write=model.safetensors", "plot")

    def kill_spec(what: str, u: float, done: int) -> str:
        left = epochs - done
        n = {
            "step": left * steps_per_epoch,
            "eval": 2 * left,
            "write=checkpoint.pt": left,
            "write=metrics.csv": left,
            "plot": 2,
        }.get(what, 1)
        return f"{what}:{1 + int(u * n)}"

    killed_in: list[str] = []  # what each kill interrupted, from the worker's phase notes
    rounds, run, fresh = 0, None, True
    while plan:
        if run is None:
            rounds += 1
            run, fresh = tmp_path / f"round{rounds}", True
        done = 0 if fresh else load_checkpoint(run)["state"]["epoch"]
        item = next((p for p in plan if reachable(p, done)), plan[0])
        kind, what, u = item
        args = (
            ["train", *flags, "--out", str(run), "--overwrite"]
            if fresh
            else ["train", "--resume", str(run)]
        )
        env = _env(
            RESNETLAB_TEST_PHASES="1",
            **({"RESNETLAB_TEST_KILL": kill_spec(what, u, done)} if kind == "phase" else {}),
        )
        proc, lines, working = _start([sys.executable, WORKER, *args], env)
        if kind == "time" and working.wait(
            300
        ):  # a random moment after start-up (import and data loading)
            time.sleep(u * work * (epochs - done + 1) / (epochs + 1))
            proc.send_signal(signal.SIGKILL)
        proc.wait(300)
        working.ended.wait(30)
        err = "".join(lines)
        if proc.returncode == 0 or finished(run):
            # finished before the kill came, or in the instant between its last file and its
            # exit (a loaded machine's teardown): check it, then a new round, where a time kill
            # is drawn again at half its moment (a fresh run has the whole run left to cut)
            assert same_weights(reference / "model.safetensors", run / "model.safetensors")
            assert metrics_without_timing(run) == metrics_without_timing(reference)
            check_final_files(run)
            if proc.returncode != 0 and kind == "time":
                plan[plan.index(item)] = (kind, what, u / 2)
            run = None
            continue
        assert proc.returncode == -signal.SIGKILL, err
        plan.remove(item)
        phases = [line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("phase: ")]
        killed_in.append(phases[-1] if phases else "start-up")
        names = check_final_files(run) if run.exists() else []
        # no checkpoint yet (killed in the first epoch): start the run again, over what it left
        fresh = "checkpoint.pt" not in names
        if fresh:
            assert not {"model.safetensors", "summary.json"} & set(names)

    # the last round, resumed to its end
    if run is not None:
        args = (
            ["train", *flags, "--out", str(run), "--overwrite"]
            if fresh
            else ["train", "--resume", str(run)]
        )
        done = subprocess.run(
            [sys.executable, WORKER, *args], env=_env(), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert same_weights(reference / "model.safetensors", run / "model.safetensors")
        assert same_weights(reference / "best.safetensors", run / "best.safetensors")
        assert metrics_without_timing(run) == metrics_without_timing(reference)
        assert set(check_final_files(run)) == set(check_final_files(reference))
        assert not list(run.glob(".*.tmp")), "the resumed run removes the temporaries a kill left"
    assert len(killed_in) == 20
    kinds = {p.split("=")[0].split(" ")[0] for p in killed_in}
    assert {"step", "eval", "write", "plot"} <= kinds, killed_in
    print(
        f"\n20 SIGKILLs over {rounds} run(s) ({work:.1f} s of work each); interrupted: {sorted(killed_in)}"
    )


# --- writes that fail ------------------------------------------------------------------------


class _FailingFile:
    """Writes the first `keep` bytes, then fails as a full (or read-only) disk does."""

    def __init__(self, f, code: int, keep: int = 100) -> None:
        self.f, self.code, self.keep = f, code, keep

    def write(self, data):
        self.f.write(data[: self.keep])
        raise OSError(self.code, os.strerror(self.code))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def inject_write_fault(
    monkeypatch, target: str, code: int, at: str, after: int = 0, on_fault=None
) -> list[str]:
    """Make the write of file `target` fail with `code` after `after` successful writes of it:
    at="create" (no temporary file can be made: a read-only or removed folder), "write" (the disk
    fills half-way), "rename" (the final os.replace fails). `on_fault(folder)` runs just before
    the failure. Returns the paths that failed."""
    real_mkstemp, real_fdopen, real_replace = fileio.tempfile.mkstemp, os.fdopen, os.replace
    seen, failed, fds = [0], [], {}

    def due(folder) -> bool:
        seen[0] += 1
        if seen[0] > after:
            failed.append(str(Path(folder) / target))
            if on_fault:
                on_fault(Path(folder))
            return True
        return False

    def mkstemp(prefix="", suffix="", dir=None):
        if prefix == f".{target}." and at == "create" and due(dir):
            raise OSError(code, os.strerror(code), str(dir))
        fd, tmp = real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        if prefix == f".{target}.":
            fds[fd] = tmp
        return fd, tmp

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        tmp = fds.pop(fd, None)
        if tmp and at == "write" and due(Path(tmp).parent):
            return _FailingFile(f, code)
        return f

    def replace(src, dst, *args, **kwargs):
        if at == "rename" and Path(dst).name == target and due(Path(dst).parent):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(os, "replace", replace)
    return failed


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli.main(["train", *FLAGS, "--epochs", "3", "--out", str(out)]) == 0
    return out


WRITE_FAULTS = [  # (file, errno, where it fails, writes of that file that succeed first)
    (
        "checkpoint.pt",
        errno.ENOSPC,
        "write",
        1,
    ),  # the disk fills while epoch 2's checkpoint is written
    ("checkpoint.pt", errno.EROFS, "create", 2),  # the folder turns read-only before epoch 3's
    ("metrics.csv", errno.ENOSPC, "write", 1),
    ("best.safetensors", errno.ENOSPC, "rename", 0),
    ("model.safetensors", errno.ENOSPC, "write", 0),  # training done, the final weights fail
    ("summary.json", errno.EROFS, "create", 0),
    ("confusion.png", errno.ENOSPC, "write", 0),
]


@pytest.mark.parametrize(
    "target,code,at,after",
    WRITE_FAULTS,
    ids=[f"{t}-{errno.errorcode[c]}-{a}" for t, c, a, _ in WRITE_FAULTS],
)
@pytest.mark.needs_fashion_mnist
def test_a_failed_write_stops_with_one_line_keeps_the_last_checkpoint_and_resume_finishes(
    target, code, at, after, straight, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    before = {}

    def snapshot(
        folder,
    ):  # the files just before the failed write: each must come through it unchanged
        before.update(
            {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}
        )

    failed = inject_write_fault(monkeypatch, target, code, at, after, on_fault=snapshot)
    code_ = cli.main(["train", *FLAGS, "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err
    monkeypatch.undo()

    assert failed, "the fault was not reached"
    assert code_ == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("resnetlab: error: cannot write ") and str(out / target) in lines[0]
    assert os.strerror(code) in lines[0]
    resumable = (
        "checkpoint.pt" in before
    )  # a failure before the first checkpoint: the run starts again
    assert ("--resume" in lines[0]) == resumable
    assert not list(out.glob(".*.tmp")), "the failed write left its temporary file"
    names = check_final_files(out)
    assert sorted(names) == sorted(before), "a file appeared or vanished after the failed write"
    for name in names:
        if (
            name == "events.jsonl"
        ):  # the one change allowed: the failure itself, recorded after the old events
            old, new = before[name].decode(), (out / name).read_text()
            assert new.startswith(old) and json.loads(new[len(old) :])["event"] == "failed", new
            continue
        assert (out / name).read_bytes() == before[name], f"{name} changed after the failed write"
    if "checkpoint.pt" in names:  # the previous checkpoint and weights are usable
        assert load_checkpoint(out)["state"]["epoch"] >= 1

    # space is back
    again = (
        ["--resume", str(out)]
        if resumable
        else [*FLAGS, "--epochs", "3", "--out", str(out), "--overwrite"]
    )
    assert cli.main(["train", *again]) == 0
    assert same_weights(straight / "model.safetensors", out / "model.safetensors")
    assert metrics_without_timing(out) == metrics_without_timing(straight)
    assert set(check_final_files(out)) == set(check_final_files(straight))


@pytest.mark.needs_fashion_mnist
def test_a_run_folder_removed_during_the_run_stops_it_with_one_line(tmp_path, monkeypatch, capsys):
    import shutil

    from resnetlab.train import run as run_module

    out = tmp_path / "run"
    real = run_module.RunDir.write_metrics

    def write_metrics(self, rows):
        if len(rows) == 2:
            shutil.rmtree(self.path)  # someone cleans up while epoch 2 ends
        return real(self, rows)

    monkeypatch.setattr(run_module.RunDir, "write_metrics", write_metrics)
    assert cli.main(["train", *FLAGS, "--epochs", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"run folder {out} was removed during the run" in err
    assert not out.exists(), "the run must not quietly make a new, empty folder"


def test_write_error_is_an_oserror_naming_path_and_cause(tmp_path, monkeypatch):
    inject_write_fault(monkeypatch, "a.txt", errno.ENOSPC, "write")
    fileio.write_text(tmp_path / "b.txt", "fine")
    with pytest.raises(WriteError) as e:
        fileio.write_text(tmp_path / "a.txt", "x" * 1000)
    assert (
        isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    )  # callers catching OSError still do
    assert (
        str(e.value)
        == f"cannot write {tmp_path / 'a.txt'}: No space left on device; the previous file there is intact"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


# --- two runs, one folder --------------------------------------------------------------------


@pytest.mark.needs_fashion_mnist
def test_a_live_run_folder_is_refused_to_a_second_run_and_freed_when_its_process_is_killed(
    tmp_path, capsys
):
    out = tmp_path / "run"
    assert cli.main(["train", *FLAGS, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    # a live training process in the folder (200 epochs: busy for a minute or more)
    holder = subprocess.Popen(
        [
            sys.executable,
            WORKER,
            "train",
            *FLAGS,
            "--epochs",
            "200",
            "--out",
            str(out),
            "--overwrite",
        ],
        env=_env(RESNETLAB_TEST_PHASES="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in holder.stderr:  # the lock is taken before the first step
            if line.startswith("phase: step"):
                break
        time.sleep(0.5)
        assert holder.poll() is None, holder.stderr.read()
        for args in (
            ["--resume", str(out)],
            [*FLAGS, "--epochs", "1", "--out", str(out), "--overwrite"],
            [*FLAGS, "--epochs", "1", "--out", str(out)],
        ):
            assert cli.main(["train", *args]) == 2
            err = capsys.readouterr().err.strip()
            assert (
                len(err.splitlines()) == 1
                and f"{out} is in use by another training process (pid {holder.pid})" in err
            )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # SIGKILL leaves no stale lock: the folder is free at once
    assert cli.main(["train", *FLAGS, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert (
        cli.main(["train", *FLAGS, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    )  # and after our own run


# --- checkpoints that load but hold the wrong things ----------------------------------------

DAMAGE = {  # each was a traceback somewhere in the trainer before load_checkpoint checked contents
    "config a list": (lambda c: c.update(config=[1, 2]), 1, "its 'config' is list"),
    "epochs a string": (lambda c: c["config"].update(epochs="5"), 2, "--epochs takes int, got '5'"),
    "lr a string": (lambda c: c["config"].update(lr="x"), 2, "--lr takes float, got 'x'"),
    "no model": (lambda c: c.pop("model"), 1, "its 'model' is NoneType"),
    "empty model": (lambda c: c.update(model={}), 1, "its model holds no tensors"),
    "a weight of another shape": (
        lambda c: c["model"].update({"fc.weight": torch.zeros(3)}),
        1,
        "weights do not fit the model its configuration builds",
    ),
    "empty optimizer": (lambda c: c.update(optimizer={}), 1, "its optimizer state is incomplete"),
    "epoch a string": (lambda c: c["state"].update(epoch="x"), 1, "its state's epoch is 'x'"),
    "an unknown state entry": (
        lambda c: c["state"].update(nosuch=1),
        1,
        "unknown entries ['nosuch']",
    ),
    "no state": (lambda c: c.pop("state"), 1, "its 'state' is NoneType"),
    "rng of floats": (
        lambda c: c.update(rng={"torch": torch.zeros(3)}),
        1,
        "random-number state is not a byte tensor",
    ),
    "past the end": (
        lambda c: c["state"].update(epoch=99),
        1,
        "past the run's end (epoch 99 of 3)",
    ),
    "history of numbers": (
        lambda c: c["state"].update(history=[1, 2, 3]),
        1,
        "history is not a list of rows",
    ),
    "history too short": (
        lambda c: c["state"].update(history=[]),
        1,
        "history has 0 rows for 3 epochs",
    ),
    "bad images not indices": (
        lambda c: c["state"].update(bad_images=["x"]),
        1,
        "its state's bad_images holds something other than image indices",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.needs_fashion_mnist
def test_a_checkpoint_with_damaged_contents_is_one_line(damage, straight, tmp_path, capsys):
    import copy
    import shutil

    change, status, words = DAMAGE[damage]
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    (run / "summary.json").unlink()  # as if stopped before its end: a finished run is not resumed
    ckpt = copy.deepcopy(torch.load(run / "checkpoint.pt", weights_only=True))
    change(ckpt)
    torch.save(ckpt, run / "checkpoint.pt")
    code = cli.main(["train", "--resume", str(run)])
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (status, 1) and words in err, err
