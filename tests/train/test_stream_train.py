"""Training on streamed data (--data shards:PATH, imagefolder:PATH --stream) on the CPU: resume
replays exactly, bad images are counted in every report, a dead worker leaves the checkpoint."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_photos import TINY_RUN, write_folder

from resnetlab import cli
from resnetlab.data.shards import open_shards, pack_folder
from resnetlab.errors import DataError, Interrupted
from resnetlab.train import make_config, train
from resnetlab.train.checkpoint import load_checkpoint
from resnetlab.weights import load_weights

STREAM = dict(TINY_RUN, epochs=2, epoch_test=True, workers=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    pack_folder(write_folder(root / "photos"), root / "packed")
    return root / "packed"


def test_resume_at_an_epoch_boundary_is_bit_identical(shards, tmp_path, monkeypatch, ctrl_c_at):
    cfg = make_config("quick", data=f"shards:{shards}", **STREAM)
    train(cfg, out=tmp_path / "straight", verbose=False)
    ctrl_c_at(4)  # the last of epoch 1's 4 steps: the run stops after epoch 1
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    state = load_checkpoint(tmp_path / "broken")["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    monkeypatch.undo()
    train(resume=tmp_path / "broken", verbose=False)
    a, _ = load_weights(tmp_path / "straight" / "model.safetensors")
    b, _ = load_weights(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_resume_inside_an_epoch_is_bit_identical(shards, tmp_path, monkeypatch, ctrl_c_at):
    cfg = make_config("quick", data=f"shards:{shards}", **dict(STREAM, workers=1))
    train(cfg, out=tmp_path / "straight", verbose=False)
    ctrl_c_at(7)  # 4 steps and the end of epoch 1 read the flag: epoch 2, step 2
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    assert load_checkpoint(tmp_path / "broken")["state"]["step_in_epoch"] == 2
    monkeypatch.undo()
    train(resume=tmp_path / "broken", verbose=False)
    a, _ = load_weights(tmp_path / "straight" / "model.safetensors")
    b, _ = load_weights(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_resume_inside_an_epoch_with_mixing_is_bit_identical(
    shards, tmp_path, monkeypatch, ctrl_c_at
):
    """The batches done before the resume are not read again, but their mixing draws are still
    made (data/mixing.py), so the later batches mix as in the unbroken run."""
    cfg = make_config("quick", data=f"shards:{shards}", **dict(STREAM, mixup=0.2, cutmix=1.0))
    train(cfg, out=tmp_path / "straight", verbose=False)
    ctrl_c_at(7)  # epoch 2, step 2
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    assert load_checkpoint(tmp_path / "broken")["state"]["step_in_epoch"] == 2
    monkeypatch.undo()
    train(resume=tmp_path / "broken", verbose=False)
    a, _ = load_weights(tmp_path / "straight" / "model.safetensors")
    b, _ = load_weights(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_a_resume_on_a_set_changed_since_is_refused_in_one_line(
    shards, tmp_path, monkeypatch, ctrl_c_at
):
    """A set re-packed (or replaced on its server) between the runs: another order, other
    samples at the saved step, other indices for the images that did not decode; the resume
    went on silently."""
    here = tmp_path / "packed"
    shutil.copytree(shards, here)
    cfg = make_config("quick", data=f"shards:{here}", **dict(STREAM, workers=0))
    ctrl_c_at(1)  # the run stops at epoch 1, step 1
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    monkeypatch.undo()
    shutil.rmtree(here)
    pack_folder(write_folder(tmp_path / "photos"), here, shard_bytes=4000)  # the same images
    with pytest.raises(DataError, match=f"shards:{here} has changed since the checkpoint") as e:
        train(resume=tmp_path / "broken", verbose=False)
    assert getattr(e.value, "shared", False) is True  # every process raises it: rank 0 says it


def test_bad_images_before_a_resume_inside_an_epoch_are_still_counted(
    tmp_path, monkeypatch, ctrl_c_at
):
    root = write_folder(tmp_path / "photos")
    good = next((root / "train" / "c0").glob("*.jpg")).read_bytes()
    for n in range(4):  # spread over the epoch's order: some in the batches before the stop
        (root / "train" / f"c{n % 2}" / f"cut{n}.jpg").write_bytes(good[: len(good) // 2])
    cfg = make_config("quick", data=f"imagefolder:{root}", **dict(STREAM, stream=True))
    train(cfg, out=tmp_path / "straight", verbose=False)
    ctrl_c_at(9)  # 5 steps and the end of epoch 1 read the flag: epoch 2, step 3
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    assert load_checkpoint(tmp_path / "broken")["state"]["step_in_epoch"] == 3
    monkeypatch.undo()
    train(resume=tmp_path / "broken", verbose=False)
    runs = [tmp_path / "straight", tmp_path / "broken"]
    skipped = []
    for run in runs:
        with open(run / "metrics.csv") as f:
            skipped.append([r["skipped"] for r in csv.DictReader(f)])
    assert skipped[0] == skipped[1]
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert summaries[0]["skipped_images"] == summaries[1]["skipped_images"] == 4
    a, _ = load_weights(tmp_path / "straight" / "model.safetensors")
    b, _ = load_weights(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


def test_unreadable_test_images_are_counted_listed_and_the_run_reads_back(tmp_path, capsys):
    root = write_folder(tmp_path / "photos")
    good = next((root / "test" / "c0").glob("*.jpg")).read_bytes()
    (root / "test" / "c0" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "c0" / "cut.jpg").write_bytes(good[: len(good) // 2])  # read back too
    run = tmp_path / "run"
    args = ["train", "--data", f"imagefolder:{root}", "--stream", "--out", str(run)]
    flags = ["--model", "resnet20", "--model-kwargs", '{"width": 4}', "--batch-size", "8"]
    flags += ["--epochs", "1", "--val-split", "0", "--resize", "16", "--progressive-resize", "0"]
    flags += ["--init", "default", "--tta", "none", "--device", "cpu", "--no-amp"]
    assert cli.main(args + flags) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err
    assert "1 test image could not be read" in out and "cut.jpg" in out
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["test_count"], summary["test_unreadable"]) == (8, 1)
    assert summary["test_unreadable_files"] == [str(root / "test" / "c0" / "cut.jpg")]
    with open(run / "unreadable.csv") as f:
        (row,) = csv.DictReader(f)
    assert (row["true"], row["file"]) == ("c0", str(root / "test" / "c0" / "cut.jpg"))
    with open(run / "mistakes.csv") as f:
        indices = [int(r["index"]) for r in csv.DictReader(f)]
    assert int(row["index"]) not in indices  # mistakes index the test set, the bad one left out
    assert cli.main(["report", str(run)]) == 0
    assert "cut.jpg" in (run / "report.html").read_text()
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert cli.main(["compare", str(run), str(run), "--out", str(tmp_path / "cmp")]) == 0


def test_bad_images_are_counted_in_the_epoch_line_metrics_and_summary(tmp_path, capsys):
    root = write_folder(tmp_path / "photos")
    good = next((root / "train" / "c0").glob("*.jpg")).read_bytes()
    (root / "train" / "c0" / "cut.jpg").write_bytes(good[: len(good) // 2])
    args = ["train", "--data", f"imagefolder:{root}", "--stream", "--out", str(tmp_path / "run")]
    flags = ["--model", "resnet20", "--model-kwargs", '{"width": 4}', "--batch-size", "8"]
    flags += ["--epochs", "2", "--val-split", "0", "--resize", "16", "--progressive-resize", "0"]
    flags += ["--init", "default", "--tta", "none", "--device", "cpu", "--no-amp"]
    assert cli.main(args + flags) == 0
    out = capsys.readouterr().out
    assert out.count("1 bad image replaced") == 2
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert [r["skipped"] for r in csv.DictReader(f)] == ["1", "1"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # distinct images, however many epochs met them; per epoch beside it
    assert summary["skipped_images"] == 1 and summary["skipped_images_per_epoch"] == [1, 1]
    assert summary["skipped_image_files"] == [str(root / "train" / "c0" / "cut.jpg")]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["stream"] is True


def test_a_damaged_shard_stops_the_run_before_it_starts(shards, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shards.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    shard = next(copy.glob("test-*.tar"))
    shard.write_bytes(shard.read_bytes()[:-512])
    code = cli.main(["train", "--data", f"shards:{copy}", "--epochs", "1", "--val-split", "0"])
    err = capsys.readouterr().err
    assert code == 1 and f"shard {shard} is damaged" in err and len(err.strip().splitlines()) == 1


class _KillWhenFlagged:
    """An extra_transform whose worker dies once `flag` exists (the main process creates it)."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __call__(self, image, gen):
        if self.flag.exists() and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return image


def test_a_dead_worker_ends_the_run_and_keeps_the_last_checkpoint(shards, tmp_path, monkeypatch):
    from resnetlab.data import stream

    flag, original = tmp_path / "kill", stream.StreamLoader.set_epoch

    def set_epoch(self, epoch):  # the training workers die in the second epoch
        if epoch == 1 and self.shuffle:
            flag.touch()
        original(self, epoch)

    class WithExtra(stream.StreamDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.extra_transform = _KillWhenFlagged(flag) if self.train else None

    monkeypatch.setattr(stream.StreamLoader, "set_epoch", set_epoch)
    monkeypatch.setattr(stream, "StreamDataset", WithExtra)
    cfg = make_config("quick", data=f"shards:{shards}", **dict(STREAM, workers=1))
    with pytest.raises(DataError, match="worker failed.*resume with --resume") as e:
        train(cfg, out=tmp_path / "run", verbose=False)
    assert "\n" not in str(e.value)
    assert load_checkpoint(tmp_path / "run")["state"]["epoch"] == 1


@pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32",
    reason="needs torch.distributed with Gloo on a POSIX system",
)
def test_two_processes_share_the_stream_and_evaluate_every_example_once(tmp_path):
    root = write_folder(tmp_path / "photos", train=32, test=9)  # 9: shares of 4 and 5
    pack_folder(root, tmp_path / "packed")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    flags = ["--data", f"shards:{tmp_path / 'packed'}", "--nproc", "2", "--workers", "1"]
    flags += ["--model", "resnet20", "--model-kwargs", '{"width": 4}', "--batch-size", "8"]
    flags += ["--epochs", "1", "--val-split", "0", "--resize", "16", "--progressive-resize", "0"]
    flags += ["--init", "default", "--tta", "none", "--no-amp", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", *flags, "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_count"] == 9 and summary["skipped_images"] == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert [r["skipped"] for r in csv.DictReader(f)] == ["0"]


def test_streaming_settings_are_checked(tmp_path):
    from resnetlab.errors import UsageError
    from resnetlab.train.setup import check_streamed

    with pytest.raises(UsageError, match="--stream reads shards:PATH or imagefolder:PATH"):
        cfg = make_config("quick", **dict(STREAM, data="fashion-mnist", stream=True))
        train(cfg, out=tmp_path / "run", verbose=False)
    with pytest.raises(UsageError, match="--eval-crop must be between 1 and"):
        make_config("quick", eval_crop=0)
    with pytest.raises(UsageError, match="--workers must be zero or positive"):
        make_config("quick", workers=-1)
    heard = []
    check_streamed(make_config("quick", data="shards:x", erasing=0.5), heard.append)
    assert heard == []  # every augmentation applies to streamed data too
    check_streamed(make_config("imagenet", data="fashion-mnist"), heard.append)
    assert "--random-resized-crop" in heard[0] and "not applied" in heard[0]
    with pytest.raises(UsageError, match="replaces the padded crop"):
        make_config("quick", **dict(STREAM, data="shards:x", random_resized_crop=True))


def test_the_recipes_ingredients_apply_to_streamed_batches_and_resume(
    shards, tmp_path, monkeypatch, ctrl_c_at
):
    """--trivial-augment runs in the workers and --mixup/--cutmix on the streamed batches: the
    weights differ from a plain run's, and a run stopped after epoch 1 resumes to the same bits."""
    recipe = dict(STREAM, trivial_augment=True, mixup=0.2, cutmix=1.0)
    train(
        make_config("quick", data=f"shards:{shards}", **STREAM),
        out=tmp_path / "plain",
        verbose=False,
    )
    cfg = make_config("quick", data=f"shards:{shards}", **recipe)
    train(cfg, out=tmp_path / "straight", verbose=False)
    ctrl_c_at(4)
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "broken", verbose=False)
    monkeypatch.undo()
    train(resume=tmp_path / "broken", verbose=False)
    plain, _ = load_weights(tmp_path / "plain" / "model.safetensors")
    a, _ = load_weights(tmp_path / "straight" / "model.safetensors")
    b, _ = load_weights(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert not all(torch.equal(a[k], plain[k]) for k in a), "the ingredients changed nothing"
    only_ta = make_config("quick", data=f"shards:{shards}", **dict(STREAM, trivial_augment=True))
    train(only_ta, out=tmp_path / "ta", verbose=False)
    ta, _ = load_weights(tmp_path / "ta" / "model.safetensors")
    assert not all(torch.equal(ta[k], plain[k]) for k in ta), "--trivial-augment changed nothing"


def test_streamed_processes_check_their_shards_without_waiting_on_another(tmp_path, monkeypatch):
    """The first multi-process start on a large set timed out: local rank 0 hashed every shard
    while the others waited in a barrier bounded by the collectives' timeout. Rank 1 of 2 now
    hashes its half and waits on nobody (a barrier here would block: there is no rank 0)."""
    from contextlib import contextmanager

    from resnetlab.data import shards as shard_module
    from resnetlab.distributed.group import DistInfo
    from resnetlab.train import setup

    pack_folder(write_folder(tmp_path / "photos"), tmp_path / "packed", shard_bytes=8_000)
    shard_count = len(list((tmp_path / "packed").glob("train-*.tar")))
    assert shard_count >= 2

    @contextmanager
    def no_waiting(dist):
        raise AssertionError("a streamed start waited on another process")
        yield

    hashed, real = [], shard_module._sha256
    monkeypatch.setattr(shard_module, "_sha256", lambda p: hashed.append(p.name) or real(p))
    monkeypatch.setattr(shard_module, "_read_stamps", dict)
    monkeypatch.setattr(shard_module, "_write_stamps", lambda stamps: None)
    monkeypatch.setattr(setup, "local_main_first", no_waiting)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cfg = make_config("quick", data=f"shards:{tmp_path / 'packed'}", **STREAM)
    splits = setup.load_process_splits(cfg, DistInfo(rank=1, world_size=2, local_rank=1))
    assert len(splits.train) + len(splits.test) == 40
    train_hashed = [h for h in hashed if h.startswith("train-")]
    assert train_hashed == [f"train-{i:06d}.tar" for i in range(1, shard_count, 2)]


@pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32",
    reason="needs torch.distributed with Gloo on a POSIX system",
)
def test_a_streamed_run_of_two_processes_resumes_with_one(shards, tmp_path, monkeypatch, capsys):
    """Elastic resume: epoch 1 with 2 processes, stopped by Ctrl-C, then the rest with 1. The
    resumed epoch reads the same samples in the same global batches as the 2 processes would."""
    from resnetlab.data import stream

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", RESNETLAB_TEST_FAULT="0:4:sigint")
    flags = ["--data", f"shards:{shards}", "--workers", "1", "--model", "resnet20"]
    flags += ["--model-kwargs", '{"width": 4}', "--batch-size", "8", "--epochs", "2"]
    flags += ["--val-split", "0", "--resize", "16", "--progressive-resize", "0", "--seed", "3"]
    flags += ["--init", "default", "--tta", "none", "--no-amp", "--device", "cpu"]
    run = tmp_path / "run"
    worker = str(Path(__file__).with_name("dist_worker.py"))
    stopped = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        + [worker, "train", *flags, "--out", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode != 0 and "interrupted" in stopped.stdout + stopped.stderr
    saved = load_checkpoint(run)
    assert saved["world_size"] == 2 and saved["state"]["epoch"] == 1

    read = []  # the resumed epoch's batches of (epoch, sample, side) keys, as read
    keys = stream.StreamLoader.epoch_keys

    def recorded(self):
        for batch in keys(self):
            if self.shuffle:
                read.append([i for _, i, _ in batch])
            yield batch

    monkeypatch.setattr(stream.StreamLoader, "epoch_keys", recorded)
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert "resuming with 1 process (trained with 2)" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2
    monkeypatch.undo()
    split = open_shards(shards, True)
    shares = []  # what the 2 processes read of each global batch of epoch 2
    for rank in range(2):
        loader = stream.StreamLoader(
            split, 8, shuffle=True, size=16, seed=3, rank=rank, world_size=2, workers=0
        )
        loader.set_epoch(1)
        shares.append([[i for _, i, _ in b] for b in loader.epoch_keys()])
    assert read == [a + b for a, b in zip(*shares)] and len(read) == 4


@pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32",
    reason="needs torch.distributed with Gloo on a POSIX system",
)
def test_two_processes_count_and_name_unreadable_images_once(tmp_path):
    root = write_folder(tmp_path / "photos", train=32, test=9)
    good = next((root / "train" / "c0").glob("*.jpg")).read_bytes()
    for where in ("train/c0/cut0.jpg", "train/c1/cut1.jpg", "test/c1/cut2.jpg"):
        (root / where).write_bytes(good[: len(good) // 2])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    flags = ["--data", f"imagefolder:{root}", "--stream", "--nproc", "2", "--workers", "1"]
    flags += ["--model", "resnet20", "--model-kwargs", '{"width": 4}', "--batch-size", "8"]
    flags += ["--epochs", "2", "--val-split", "0", "--resize", "16", "--progressive-resize", "0"]
    flags += ["--init", "default", "--tta", "none", "--no-amp", "--device", "cpu"]
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", *flags, "--out", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == 2 and summary["skipped_images_per_epoch"] == [2, 2]
    assert (summary["test_count"], summary["test_unreadable"]) == (9, 1)
    with open(run / "unreadable.csv") as f:
        assert [r["file"] for r in csv.DictReader(f)] == [str(root / "test" / "c1" / "cut2.jpg")]
