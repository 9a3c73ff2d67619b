"""data/shards.py on sets of a few 8 x 8 px images (fast enough for mutation testing): what
packing writes (each image's bytes in plain tar shards of about the size asked, the manifest, its
statistics, the files left out), how it refuses and cleans up, how a split is opened (every
member listed, each share of the shards hashed and verified, remembered while unchanged) and
read, image folders read as they are, and the listing of packed sets. The end-to-end tests with
training and worker processes are in test_stream.py and tests/train/."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_packed import CLASSES, write_tiny_folder

from resnetlab.data import decode, formats, remote, shards
from resnetlab.data.datasets import Dataset, describe_held_out, image_folder_files, load_dataset
from resnetlab.data.eval_view import EvalView
from resnetlab.data.manifest import FORMAT
from resnetlab.data.shards import (
    IMAGE_OFFSET,
    MANIFEST,
    StreamSplit,
    check_shard,
    default_side,
    format_packed,
    is_stream_name,
    list_packed,
    open_image_folder,
    open_shards,
    open_stream,
    pack_builtin,
    pack_folder,
    read_manifest,
    shards_home,
    split_digest,
)
from resnetlab.errors import DataError, UsageError, WriteError


@dataclass
class Packed:
    folder: Path  # the source image folder
    out: Path  # the packed set
    manifest: dict  # what pack_folder returned
    said: list[str]  # what it said
    broken: Path  # the training file that does not decode


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The source folder: 10 training and 5 test images, and a training file that does not decode."""
    folder = write_tiny_folder(tmp_path_factory.mktemp("shards") / "photos")
    (folder / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    return folder


def packed_into(photos: Path, out: Path) -> Packed:
    said: list[str] = []
    manifest = pack_folder(photos, out, shard_bytes=4000, say=said.append)
    return Packed(photos, out, manifest, said, photos / "train" / "bee" / "broken.jpg")


@pytest.fixture(scope="module")
def pack(photos, tmp_path_factory) -> Packed:
    """The set packed once, for the tests that read it."""
    return packed_into(photos, tmp_path_factory.mktemp("packed") / "packed")


@pytest.fixture
def fresh(photos, tmp_path) -> Packed:
    """The set packed in the test itself, for the tests of what packing writes: a mutation
    tester credits a module fixture's calls to the first test that uses it alone."""
    return packed_into(photos, tmp_path / "sets" / "new" / "packed")  # folders made


def listing(pack: Packed, split: str) -> list[tuple[Path, int]]:
    """The source files of `split` in the order packing reads them (data/datasets.py's)."""
    return image_folder_files(f"imagefolder:{pack.folder}").splits[split]


def kept(pack: Packed, split: str) -> list[tuple[Path, int]]:
    return [(p, label) for p, label in listing(pack, split) if p != pack.broken]


def moments(paths) -> tuple[list[float], list[float]]:
    """The mean and std of the images, each image weighing the same, rounded as the manifest."""
    pixels = [decode.read_image(Path(p).read_bytes(), 3).reshape(-1, 3) / 255 for p in paths]
    mean = np.mean([p.mean(0) for p in pixels], 0)
    square = np.mean([(p * p).mean(0) for p in pixels], 0)
    std = np.sqrt(square - mean * mean)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def padded(n: int) -> int:
    return -(-n // 512) * 512


# --- packing ------------------------------------------------------------------------------------


def test_pack_stores_each_image_s_bytes_in_listing_order(fresh):
    for split in ("train", "test"):
        entry = fresh.manifest["splits"][split]
        stored = []
        for k, shard in enumerate(entry["shards"]):
            data = (fresh.out / shard["file"]).read_bytes()
            assert shard["file"] == f"{split}-{k:06d}.tar"
            assert shard["bytes"] == len(data)
            assert shard["sha256"] == hashlib.sha256(data).hexdigest()
            assert shard["count"] == len(shard["members"]) and data.endswith(bytes(1024))
            stored += [(data[o : o + n], label) for o, n, label in shard["members"]]
        want = [(p.read_bytes(), label) for p, label in kept(fresh, split)]
        assert stored == want
        labels = [label for _, label in want]
        assert entry["count"] == len(want) == len(listing(fresh, split)) - (split == "train")
        assert entry["class_counts"] == np.bincount(labels, minlength=3).tolist()
    assert sorted(p.name for p in fresh.out.iterdir()) == sorted(
        [MANIFEST] + [s["file"] for v in fresh.manifest["splits"].values() for s in v["shards"]]
    )


def test_each_shard_is_a_plain_tar_of_a_label_then_an_image_member(fresh):
    files = listing(fresh, "train")
    want = []  # keys are the files' places in the listing: the one left out leaves a gap
    for i, (p, label) in enumerate(files):
        if p != fresh.broken:
            want += [(f"{i:08d}.cls", str(label).encode()), (f"{i:08d}{p.suffix}", p.read_bytes())]
    assert any(name.endswith(".png") for name, _ in want) and any(
        name.endswith(".jpg") for name, _ in want
    )
    got, offsets = [], []
    for shard in fresh.manifest["splits"]["train"]["shards"]:
        with tarfile.open(fresh.out / shard["file"]) as tar:
            members = tar.getmembers()
            for m in members:
                assert m.isfile() and m.mode == 0o444 and m.mtime == 0
                assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "bigdata", "bigdata")
                got.append((m.name, tar.extractfile(m).read()))
            offsets.append([m.offset_data for m in members[1::2]])
        assert offsets[-1] == [o for o, _, _ in shard["members"]]
    assert got == want
    header = (fresh.out / "train-000000.tar").read_bytes()[:512]
    assert header[257:265] == b"ustar\x0000"  # POSIX ustar, as WebDataset's TarWriter writes


def test_a_shard_closes_once_its_samples_reach_the_size_asked(fresh):
    for split in ("train", "test"):
        samples = [
            [IMAGE_OFFSET + padded(n) for _, n, _ in shard["members"]]
            for shard in fresh.manifest["splits"][split]["shards"]
        ]
        for shard, sizes in zip(fresh.manifest["splits"][split]["shards"], samples, strict=True):
            assert shard["bytes"] == sum(sizes) + 1024  # and the archive's two end blocks
        for sizes in samples[:-1]:
            assert sum(sizes) >= 4000 > sum(sizes[:-1])
    assert len(fresh.manifest["splits"]["train"]["shards"]) >= 3


def test_the_manifest_holds_the_training_images_statistics_and_what_was_left_out(fresh):
    m = fresh.manifest
    assert json.loads((fresh.out / MANIFEST).read_text()) == m
    # and it opens: its sizes whole numbers though a run of files (the broken one) gave none
    assert read_manifest(fresh.out) == m
    assert (m["format"], m["name"], m["classes"], m["channels"]) == (
        FORMAT,
        "photos",
        list(CLASSES),
        3,
    )
    assert m["image_size"] == {"min": [8, 8], "max": [8, 8]}
    mean, std = moments(p for p, _ in kept(fresh, "train"))  # the test images do not count
    assert (m["mean"], m["std"]) == (mean, std)
    assert m["skipped"] == 1 and len(m["left_out"]) == 1
    left = m["left_out"][0]
    assert left["file"] == str(fresh.broken) and left["error"]
    with pytest.raises(decode.BadImage) as e:
        decode.read_image(fresh.broken.read_bytes(), 3)
    assert left["error"] == str(e.value)
    assert fresh.said == [f"skipped {fresh.broken}: {left['error']}"]


def random_image(rng, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8))


def test_pack_shrinks_images_over_max_side_and_stores_other_formats_as_png(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    for d in ("train/a", "train/b", "test/a"):
        (src / d).mkdir(parents=True)
    random_image(rng, 8, 20).save(src / "train/a/0-big.jpg", quality=95)  # its long side over
    random_image(rng, 10, 10).save(src / "train/a/1-keep.png")  # at max_side: kept
    random_image(rng, 6, 9).save(src / "train/a/2-other.bmp")
    random_image(rng, 5, 5).save(src / "train/b/0-only.png")  # class b has no test image
    random_image(rng, 16, 16).save(src / "test/a/0-big.png")
    manifest = pack_folder(src, tmp_path / "out", max_side=10)
    train = open_shards(tmp_path / "out", True, verify=False)
    big, keep, other, only = (train.read(i) for i in range(4))

    def shrunk(path, fmt, **options):  # PIL's thumbnail, re-encoded
        im = Image.fromarray(decode.read_image(path.read_bytes(), 3))
        im.thumbnail((10, 10), Image.Resampling.LANCZOS)
        return encoded(im, fmt, **options)

    def encoded(im, fmt, **options):
        buf = io.BytesIO()
        im.save(buf, fmt, **options)
        return buf.getvalue()

    assert big == shrunk(src / "train/a/0-big.jpg", "JPEG", quality=90)
    assert keep == (src / "train/a/1-keep.png").read_bytes()
    assert only == (src / "train/b/0-only.png").read_bytes()
    pixels = decode.read_image((src / "train/a/2-other.bmp").read_bytes(), 3)
    assert other == encoded(Image.fromarray(pixels), "PNG", compress_level=1)
    test = open_shards(tmp_path / "out", False, verify=False)
    assert test.read(0) == shrunk(src / "test/a/0-big.png", "PNG", compress_level=1)
    # the sizes and statistics of what is stored: 4 x 10, 10 x 10, 6 x 9, 5 x 5 and 10 x 10
    assert manifest["image_size"] == {"min": [4, 5], "max": [10, 10]}
    stored = tmp_path / "stored"
    stored.mkdir()
    for i, data in enumerate((big, keep, other, only)):
        (stored / str(i)).write_bytes(data)
    assert (manifest["mean"], manifest["std"]) == moments(sorted(stored.iterdir()))
    counts = [manifest["splits"][s]["class_counts"] for s in ("train", "test")]
    assert counts == [[3, 1], [1, 0]]  # a count for every class, present or not


def test_a_pack_whose_images_all_fail_to_decode_is_an_empty_set(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "src" / split / "a").mkdir(parents=True)
        (tmp_path / "src" / split / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    manifest = pack_folder(tmp_path / "src", tmp_path / "out")
    assert manifest["image_size"] == {"min": [0, 0], "max": [0, 0]}
    assert (manifest["mean"], manifest["std"]) == ([0.5] * 3, [0.25] * 3)
    assert manifest["skipped"] == 2
    assert [(v["count"], v["shards"]) for v in manifest["splits"].values()] == [(0, [])] * 2
    assert [p.name for p in (tmp_path / "out").iterdir()] == [MANIFEST]  # no empty shard


def test_a_source_file_that_cannot_be_read_is_left_out_with_its_reason(tmp_path):
    job = (str(tmp_path / "gone.png"), None, "00000000", 0)
    assert shards._pack_one(job) == ("bad", "No such file or directory")


def test_a_run_of_files_gives_its_samples_end_to_end_in_memory_or_in_a_file(pack, tmp_path):
    files = listing(pack, "train")  # the broken file amid the others
    job = ([str(p) for p, _ in files], [label for _, label in files], 20, None, None)
    data, done, found, bad = shards._pack_run(job)
    good = [(i, p, label) for i, (p, label) in enumerate(files) if p != pack.broken]
    samples = [shards._tar_sample(f"{20 + i:08d}", p.read_bytes(), y) for i, p, y in good]
    assert data == b"".join(samples)  # keyed by their places in the split
    assert done.tolist() == [
        [i, len(sample), p.stat().st_size, 8, 8] for (i, p, _), sample in zip(good, samples)
    ]
    assert found.shape == (len(good), 6)
    assert [i for i, _ in bad] == [[p for p, _ in files].index(pack.broken)]
    spill = tmp_path / ".train-00000020.run"
    handed, done_too, found_too, bad_too = shards._pack_run((*job[:4], str(spill)))
    assert handed == str(spill) and spill.read_bytes() == data
    assert (done_too.tolist(), found_too.tolist(), bad_too) == (done.tolist(), found.tolist(), bad)


def test_a_shard_is_written_once_its_samples_reach_shard_bytes(tmp_path):
    for limit, counts in ((1024, [2, 2, 2, 1]), (1025, [3, 3, 1])):  # samples of 512 bytes
        writer = shards._ShardWriter(tmp_path, f"s{limit}", limit)
        for i in range(7):
            writer.add_sample(bytes(512), 1, i % 2)
        writer.flush()
        assert [s["count"] for s in writer.shards] == counts
        assert [s["file"] for s in writer.shards] == [
            f"s{limit}-{k:06d}.tar" for k in range(len(counts))
        ]
        assert writer.labels == [0, 1, 0, 1, 0, 1, 0]


def test_pack_holds_out_a_seeded_test_split_of_a_folder_without_one(tmp_path):
    rng = np.random.default_rng(2)
    for c in ("a", "b", "c"):  # 6 images a class: 20 ways to hold out 3, 6 to hold out 1
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(6):
            random_image(rng, 8, 8).save(tmp_path / "src" / c / f"{i}.png")
    name = f"imagefolder:{tmp_path / 'src'}"

    def held_out(out) -> list[bytes]:
        test = open_shards(out, False, verify=False)
        return [test.read(i) for i in range(len(test))]

    said = []
    manifest = pack_folder(
        tmp_path / "src", tmp_path / "out", say=said.append, test_split=0.5, seed=3
    )
    files = image_folder_files(name, 0.5, 3)
    assert files.splits["test"] != image_folder_files(name, 0.5, 0).splits["test"]  # the seed's
    assert said == [
        describe_held_out(files, str(tmp_path / "src"), 0.5, 3) + "; --test-split changes it"
    ]
    assert held_out(tmp_path / "out") == [p.read_bytes() for p, _ in files.splits["test"]]
    assert manifest["splits"]["train"]["count"] == len(files.splits["train"]) == 9
    # by default, the images that --stream and the in-memory loader hold out of it
    pack_folder(tmp_path / "src", tmp_path / "default")
    default = open_image_folder(name, False).files
    assert default != [str(p) for p, _ in image_folder_files(name, None, 1).splits["test"]]
    assert held_out(tmp_path / "default") == [Path(p).read_bytes() for p in default]
    for c in ("a", "b", "c"):  # one image a class: nothing left to hold out
        for p in sorted((tmp_path / "src" / c).iterdir())[1:]:
            p.unlink()
    message = (
        f"{tmp_path / 'src'}: too few images to hold out a test split (a class needs 2 or more); "
        "add images, or give it train/ and test/ folders of class folders"
    )
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        pack_folder(tmp_path / "src", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_pack_refuses_an_out_folder_in_use_and_a_source_without_classes(tmp_path):
    src = write_tiny_folder(tmp_path / "src", train=3, test=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(
        UsageError, match=f"^{re.escape(str(out))} exists and is not an empty folder"
    ):
        pack_folder(src, out)
    (out / "x").unlink()
    (out / MANIFEST).write_text("{}")
    # checked before the source is listed: a refusal comes at once
    with pytest.raises(UsageError, match=f"^{re.escape(str(out))} holds a packed set already"):
        pack_folder(tmp_path / "nowhere", out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not an empty folder"):
        pack_folder(src, tmp_path / "file")
    (tmp_path / "bare" / "train").mkdir(parents=True)
    message = (
        f"{tmp_path / 'bare'} holds no class folders of images (.jpg/.jpeg/.jfif/.png/.bmp/.dib/"
        ".gif/.tif/.tiff/.webp/.ppm/.pgm/.pbm/.pnm/.tga/.ico); give a folder with one sub-folder "
        "of images per class"
    )
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        pack_folder(tmp_path / "bare", tmp_path / "out3")


def test_pack_warns_of_class_folders_without_images(tmp_path):
    src = write_tiny_folder(tmp_path / "src", train=3, test=3)
    names = [f"none{i:02d}" for i in range(11)]
    for count, shown in (
        (1, "none00"),
        (10, ", ".join(names[:10])),
        (11, ", ".join(names[:10]) + " ..."),
    ):
        for name in names[:count]:
            (src / "train" / name).mkdir(exist_ok=True)
        said = []
        pack_folder(src, tmp_path / f"out{count}", say=said.append)
        folders = "class folder" if count == 1 else "class folders"
        assert said == [f"warning: {count} {folders} without images left out: {shown}"]


def test_a_failed_pack_leaves_nothing_and_a_dead_pack_s_leftovers_go(tmp_path):
    src = write_tiny_folder(tmp_path / "src", train=3, test=3)
    (src / "train" / "ant" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    sleeper = subprocess.Popen(["sleep", "60"])  # a live pack's process (of this test's own)
    try:
        dead = tmp_path / ".my-set.partial-999999999"  # no such process
        live = tmp_path / f".my-set.partial-{sleeper.pid}"
        odd = tmp_path / ".my-set.partial-x"
        for d in (dead, live, odd):
            d.mkdir()

        def stop(line):
            raise KeyboardInterrupt  # Ctrl-C midway

        with pytest.raises(KeyboardInterrupt):
            pack_folder(src, tmp_path / "my-set", say=stop)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", live.name, odd.name])
        assert not shards._alive(999999999) and shards._alive(sleeper.pid)
        (tmp_path / "my-set").mkdir()  # an empty folder is fine
        manifest = pack_folder(src, tmp_path / "my-set", workers=1)
        assert sleeper.poll() is None  # it was only asked whether it lives
    finally:
        sleeper.kill()
        sleeper.wait()
    assert json.loads((tmp_path / "my-set" / MANIFEST).read_text()) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["src", "my-set", live.name, odd.name]
    )


def test_a_process_of_another_user_counts_as_alive(monkeypatch):
    def refuse(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refuse)
    assert shards._alive(12345)


# runs of 1 file; of 5, shards cut inside (workers None: the default, this process)
@pytest.mark.parametrize("workers,runs", [(2, shards.SPLIT_RUNS), (2, 2), (None, 2)])
def test_pack_writes_the_same_set_byte_for_byte_whatever_its_runs_and_workers(
    pack, tmp_path, monkeypatch, workers, runs
):
    monkeypatch.setattr(shards, "SPLIT_RUNS", runs)
    handed = []  # where each run's samples come back: worker processes write them to a file

    def jobs(runs, max_side, spill):
        for job in real_jobs(runs, max_side, spill):
            handed.append(job[4])
            yield job

    real_jobs = shards._jobs
    monkeypatch.setattr(shards, "_jobs", jobs)
    options = {} if workers is None else {"workers": workers}
    manifest = pack_folder(
        pack.folder, tmp_path / "again", shard_bytes=4000, progress=True, **options
    )
    assert manifest == pack.manifest
    staging = tmp_path / f".again.partial-{os.getpid()}"
    runs = shards._runs(image_folder_files(f"imagefolder:{pack.folder}").splits)
    if workers is None:
        assert handed == [None] * len(runs)  # passed in memory
    else:
        assert handed == [str(staging / f".{split}-{start:08d}.run") for split, start, _ in runs]
    assert multiprocessing.active_children() == []  # the workers ended and were reaped
    names = sorted(p.name for p in pack.out.iterdir())
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == names  # no run file left
    assert len(names) > 3 and MANIFEST in names
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (pack.out / name).read_bytes()


def test_a_pack_stopped_midway_in_worker_processes_leaves_no_set_and_no_worker(pack, tmp_path):
    def stop(line):
        raise KeyboardInterrupt  # Ctrl-C midway: at the file left out

    with pytest.raises(KeyboardInterrupt):
        pack_folder(pack.folder, tmp_path / "set", shard_bytes=4000, say=stop, workers=2)
    assert os.listdir(tmp_path) == []  # neither the set nor its staging folder
    assert multiprocessing.active_children() == []  # the workers ended and were reaped


def test_a_run_of_samples_makes_the_shards_its_samples_make_one_by_one(tmp_path):
    samples = [bytes([i + 1]) * 512 * (1 + i % 3) for i in range(7)]  # 512 to 1536 bytes
    sizes, labels = [3 * i for i in range(7)], [i % 2 for i in range(7)]
    one, runs = tmp_path / "one", tmp_path / "runs"
    one.mkdir(), runs.mkdir()
    apart = shards._ShardWriter(one, "s", 1500)
    for sample, size, label in zip(samples, sizes, labels):
        apart.add_sample(sample, size, label)
    apart.flush()
    together = shards._ShardWriter(runs, "s", 1500)
    for part in (slice(0, 4), slice(4, 7)):  # a shard closes inside each run
        lengths = [len(x) for x in samples[part]]
        together.add_run(b"".join(samples[part]), lengths, sizes[part], labels[part])
    together.flush()
    assert len(apart.shards) == 5 and together.shards == apart.shards
    assert together.labels == apart.labels == labels
    for shard in apart.shards:
        assert (runs / shard["file"]).read_bytes() == (one / shard["file"]).read_bytes()


def test_a_shard_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch):
    with pytest.raises(WriteError, match=r"cannot write .*gone/s-000000\.tar: No such file"):
        shards._ShardWriter(tmp_path / "gone", "s", 10_000).add_sample(bytes(512), 1, 0)
    writer = shards._ShardWriter(tmp_path, "s", 10_000)
    writer.add_sample(bytes(512), 1, 0)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    writer.flush()  # its sync begun in a thread
    with pytest.raises(WriteError, match=r"cannot write .*/s-000000\.tar: No space left"):
        writer.finish()  # and its failure said once the shards are all written


def open_files() -> list[str]:
    """What this process's file descriptors point at (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_shard_the_disk_has_no_room_for_is_one_line_naming_it_and_closed(tmp_path):
    (tmp_path / "s-000000.tar").symlink_to("/dev/full")  # a disk that is full
    message = f"cannot write {tmp_path / 's-000000.tar'}: No space left on device;"
    for size in (512, 1 << 16):  # buffered, then handed to the disk at the flush; at once
        writer = shards._ShardWriter(tmp_path, "s", 1 << 20)
        with pytest.raises(WriteError, match=f"^{re.escape(message)}") as failed:
            writer.add_sample(bytes(size), 1, 0)
            writer.flush()
        # no descriptor left on the failed shard, though its traceback is kept (as an
        # interactive session keeps its last one)
        assert "/dev/full" not in open_files() and failed.tb is not None


def test_the_manifest_is_indented_json_with_one_member_a_line():
    manifest = {
        "name": "x",
        "splits": {"train": {"shards": [{"members": [[1536, 7, 0], [3072, 9, 1]]}]}},
        "also": {"shards": [{"members": []}]},  # a split without images: none
    }
    manifest["splits"]["test"] = {"shards": [{"members": []}, {"members": [[1536, 2, 1]]}]}
    text = shards._manifest_text(manifest)
    assert json.loads(text) == manifest
    assert text == (
        '{\n  "name": "x",\n  "splits": {\n    "train": {\n      "shards": [\n        {\n'
        '          "members": [\n            [1536,7,0],\n            [3072,9,1]\n          ]\n'
        '        }\n      ]\n    },\n    "test": {\n      "shards": [\n        {\n'
        '          "members": []\n        },\n        {\n          "members": [\n'
        "            [1536,2,1]\n          ]\n        }\n      ]\n    }\n  },\n"
        '  "also": {\n    "shards": [\n      {\n        "members": []\n      }\n    ]\n  }\n}\n'
    )


def test_the_cyclic_collector_is_paused_while_packing_and_then_restored(photos, tmp_path):
    during = []
    pack_folder(photos, tmp_path / "a", say=lambda line: during.append(gc.isenabled()))
    assert during and not any(during) and gc.isenabled()
    gc.disable()  # a caller's own setting is left as it was
    try:
        pack_folder(photos, tmp_path / "b")
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.fixture
def bars(monkeypatch) -> list:
    """tqdm's interface, recorded: the bars drawn."""
    drawn = []

    class Bar:
        def __init__(self, **settings):
            self.settings, self.n, self.closed = settings, 0, False
            drawn.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm", type(sys)("tqdm"))
    sys.modules["tqdm"].tqdm = Bar
    return drawn


def test_progress_is_a_bar_when_tqdm_is_there(bars, monkeypatch):
    seen = []
    for result in shards._progress(iter(["a", "b"]), [3, 2], "packing"):  # runs of 3, 2 images
        seen.append((result, bars[0].n))
    assert seen == [("a", 3), ("b", 5)]  # each run counts for its images as it comes
    assert bars[0].settings == {"total": 5, "desc": "packing", "unit": "img", "leave": False}
    assert bars[0].closed
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed
    results = iter([3])
    assert shards._progress(results, [1], "x") is results


def test_a_pack_draws_its_bar_only_when_asked(photos, tmp_path, bars):
    pack_folder(photos, tmp_path / "quiet")
    assert bars == []
    pack_folder(photos, tmp_path / "shown", progress=True)
    images = sum(len(v) for v in image_folder_files(f"imagefolder:{photos}").splits.values())
    assert [(bar.settings["desc"], bar.n, bar.closed) for bar in bars] == [
        ("packing", images, True)
    ]


def test_pack_builtin_writes_each_image_as_png_with_the_catalog_s_figures(tiny, tmp_path):
    files = tiny.write(tmp_path / "tiny-files")
    manifest = pack_builtin("tiny", tmp_path / "set", root=files, shard_bytes=20_000)
    spec = tiny.spec
    assert (manifest["name"], manifest["classes"], manifest["channels"]) == (
        "tiny",
        ["a", "b", "c"],
        1,
    )
    assert (manifest["mean"], manifest["std"]) == (list(spec.mean), list(spec.std))
    assert manifest["image_size"] == {"min": [8, 8], "max": [8, 8]}
    assert (manifest["skipped"], manifest["left_out"]) == (0, [])
    assert json.loads((tmp_path / "set" / MANIFEST).read_text()) == manifest
    for split, prefix in ((True, "train"), (False, "t10k")):
        opened = open_shards(tmp_path / "set", split)
        images = tiny.arrays[f"{prefix}-images-idx3-ubyte"]
        labels = tiny.arrays[f"{prefix}-labels-idx1-ubyte"]
        assert opened.labels.tolist() == labels.tolist() and opened.side == 8
        for i in range(len(opened)):
            data = opened.read(i)
            assert decode.is_png(data)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), images[i])
            assert opened.describe(i).endswith(f":{i:08d}.png")
        with tarfile.open(opened.files[0]) as tar:  # each image's label member holds its label
            first = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cls")]
        assert first == [str(y).encode() for y in labels[: len(first)]]
    assert len(manifest["splits"]["train"]["shards"]) > 1
    few = pack_builtin("tiny", tmp_path / "few", root=files, subset=5)  # what --subset takes
    for split, train in (("train", True), ("test", False)):
        want = load_dataset("tiny", train, files, subset=5).labels.tolist()
        assert open_shards(tmp_path / "few", train).labels.tolist() == want
        assert few["splits"][split]["count"] == 5


def test_moments_and_statistics():
    flat = np.zeros((8, 8, 3), np.uint8)
    assert shards._moments([], []) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # nothing measured
    mean, square = shards._pixel_moments(flat + 51)
    assert mean == pytest.approx((0.2,) * 3) and square == pytest.approx((0.04,) * 3)
    # a flat image has std 0, kept at 0.001 (normalising divides by it)
    assert shards._moments([mean], [square]) == ((0.2,) * 3, (0.001,) * 3)
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)  # every pixel counts
    mean, square = shards._pixel_moments(small)
    every = small.reshape(-1, 3) / 255
    assert mean == pytest.approx(tuple(every.mean(0)), abs=1e-12)
    assert square == pytest.approx(tuple((every * every).mean(0)), abs=1e-12)
    big = rng.integers(0, 256, (600, 500, 3)).astype(
        np.uint8
    )  # 300,000 px: every 2nd row and column
    mean, square = shards._pixel_moments(big)
    grid = big[::2, ::2].reshape(-1, 3) / 255
    assert mean == pytest.approx(tuple(grid.mean(0)), abs=1e-12)
    assert square == pytest.approx(tuple((grid * grid).mean(0)), abs=1e-12)


def test_statistics_pass_over_files_that_do_not_decode(pack, tmp_path):
    paths = [p for p, _ in kept(pack, "train")]
    missing = tmp_path / "gone.png"
    assert shards._statistics(paths + [pack.broken, missing]) == tuple(map(tuple, moments(paths)))
    assert shards._statistics([]) == ((0.5,) * 3, (0.25,) * 3)


def test_tar_headers_refuse_what_ustar_cannot_hold():
    assert len(shards._tar_header("x" * 100, 8**11 - 1)) == 512
    with pytest.raises(ValueError, match="does not fit a ustar header"):
        shards._tar_header("x" * 101, 1)
    with pytest.raises(ValueError, match="does not fit a ustar header"):
        shards._tar_header("x", 8**11)
    writer = shards._ShardWriter(Path("/nonexistent"), "train", 10)
    writer.flush()  # nothing to write: no file
    assert writer.shards == [] and writer.labels == []


def test_png_keeps_grey_and_colour_pixels():
    rng = np.random.default_rng(4)
    for image in (rng.integers(0, 256, (1, 5, 7)), rng.integers(0, 256, (3, 5, 7))):
        image = image.astype(np.uint8)
        data = shards._png(image)
        got = np.asarray(Image.open(io.BytesIO(data)))
        assert decode.is_png(data)
        assert np.array_equal(got, image[0] if len(image) == 1 else image.transpose(1, 2, 0))


# --- reading ------------------------------------------------------------------------------------


def test_read_manifest_says_what_to_do(tmp_path):
    message = f"{tmp_path} holds no {MANIFEST}: pack a dataset there with `resnetlab data pack SRC {tmp_path}`"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        read_manifest(tmp_path)
    (tmp_path / "dir" / MANIFEST).mkdir(parents=True)
    where = re.escape(str(tmp_path / "dir" / MANIFEST))
    with pytest.raises(
        DataError, match=f"^{where} cannot be read .*pack the data again into an empty folder$"
    ):
        read_manifest(tmp_path / "dir")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{")
    with pytest.raises(
        DataError, match=f"^{re.escape(str(tmp_path / 'bad' / MANIFEST))} is not JSON"
    ):
        read_manifest(tmp_path / "bad")
    with pytest.raises(UsageError) as e:
        read_manifest("https://host/set")
    assert str(e.value) == (
        "shards:https://host/set: this reads a packed set from a local folder, not over https:// "
        "(training and eval read URLs); copy the set (its manifest.json and .tar shards) to a "
        "local disk"
    )
    with pytest.raises(UsageError, match="not over https:// "):  # the scheme: before the first ://
        read_manifest("https://host/get?from=s3://bucket")


def test_a_local_folder_may_start_with_a_tilde(pack, monkeypatch):
    monkeypatch.setenv("HOME", str(pack.out.parent))
    assert read_manifest(f"~/{pack.out.name}") == pack.manifest
    assert open_shards(f"~/{pack.out.name}", True, verify=False).files[0] == str(
        pack.out / "train-000000.tar"
    )


@pytest.fixture
def copied(pack, tmp_path) -> Path:
    """A copy of the packed set, to damage."""
    return Path(shutil.copytree(pack.out, tmp_path / "copy"))


def test_check_shard_verifies_size_and_sha256_and_remembers_what_it_verified(copied, monkeypatch):
    shard = read_manifest(copied)["splits"]["train"]["shards"][1]
    (copied / "sub").mkdir()
    folder = copied / "sub" / ".."  # remembered by the shard's resolved path
    path = folder / shard["file"]
    redo = f"restore it, or pack the data again (`resnetlab data pack SRC {folder}`)"
    damaged = (
        f"^{re.escape(f'shard {path} is damaged (its sha256 differs from {MANIFEST}); {redo}')}$"
    )
    verified = {}
    check_shard(folder, shard, verified)
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, shard["sha256"]]
    assert verified == {str((copied / shard["file"]).resolve()): stamp}
    real = shards._sha256
    monkeypatch.setattr(shards, "_sha256", lambda p: pytest.fail("hashed again"))
    check_shard(folder, shard, verified)  # unchanged since: not hashed again
    monkeypatch.setattr(shards, "_sha256", real)
    with pytest.raises(DataError, match=damaged):  # a new manifest's checksum: hashed again
        check_shard(folder, {**shard, "sha256": "0" * 64}, verified)
    with pytest.raises(DataError, match=damaged):  # the size alone differs
        check_shard(folder, {**shard, "bytes": shard["bytes"] + 1})
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_mtime_ns + 10**7,) * 2)  # a rewrite's new mtime, on any clock
    with pytest.raises(DataError, match=damaged):
        check_shard(folder, shard, verified)
    assert verified == {
        str((copied / shard["file"]).resolve()): stamp
    }  # a damaged shard is not recorded
    os.utime(path, ns=(st.st_mtime_ns,) * 2)
    check_shard(folder, shard, verified)  # unchanged by size and mtime: trusted
    with pytest.raises(DataError, match=damaged):
        check_shard(folder, shard)  # with nothing remembered, hashed
    path.unlink()
    with pytest.raises(DataError, match=f"^{re.escape(f'shard {path} is missing; {redo}')}$"):
        check_shard(folder, shard, verified)


def test_verified_shards_are_remembered_in_the_user_cache(isolated_cache):
    path = shards._stamps_path()
    assert path == isolated_cache / "verified-shards.json"
    assert shards._read_stamps() == {}
    shards._write_stamps({"a": [1, 2, "x"]})
    shards._write_stamps({"b": [3, 4, "y"]})  # others' entries kept (other sets, processes)
    assert shards._read_stamps() == {"a": [1, 2, "x"], "b": [3, 4, "y"]}
    shards._write_stamps({"a": [5, 6, "z"]})  # and a shard verified again, updated
    assert shards._read_stamps() == {"a": [5, 6, "z"], "b": [3, 4, "y"]}
    for text in ("[1, 2]", "{not json"):
        path.write_text(text)
        assert shards._read_stamps() == {}
    path.unlink()
    path.mkdir()  # a cache that cannot be written or read: no error, nothing remembered
    shards._write_stamps({"c": [1, 1, "w"]})
    assert shards._read_stamps() == {}


def test_open_shards_lists_every_member_and_remembers_the_shards_it_verified(pack, isolated_cache):
    split = open_shards(pack.out, True)
    m = pack.manifest
    listed = m["splits"]["train"]["shards"]
    assert (split.name, split.classes, split.channels) == (f"shards:{pack.out}", list(CLASSES), 3)
    assert split.files == [str(pack.out / s["file"]) for s in listed]
    assert split.entries.dtype == np.int64 and split.entries.tolist() == [
        [f, o, n] for f, s in enumerate(listed) for o, n, _ in s["members"]
    ]
    assert split.labels.dtype == torch.int64
    assert split.labels.tolist() == [label for _, label in kept(pack, "train")]
    assert (split.mean, split.std, split.side) == (tuple(m["mean"]), tuple(m["std"]), 8)
    assert split.digest == split_digest(listed) and split.source is None
    assert [split.read(i) for i in range(len(split))] == [
        p.read_bytes() for p, _ in kept(pack, "train")
    ]
    stamps = json.loads((isolated_cache / "verified-shards.json").read_text())
    assert set(stamps) == {str((pack.out / s["file"]).resolve()) for s in listed}
    test = open_shards(pack.out, False)
    assert test.labels.tolist() == [label for _, label in kept(pack, "test")]
    assert len(json.loads((isolated_cache / "verified-shards.json").read_text())) == len(
        listed
    ) + len(m["splits"]["test"]["shards"])


def test_open_shards_without_verify_hashes_nothing(pack, isolated_cache, monkeypatch):
    monkeypatch.setattr(shards, "_sha256", lambda p: pytest.fail("hashed"))
    assert len(open_shards(pack.out, True, verify=False)) == 10
    assert not (isolated_cache / "verified-shards.json").exists()


def test_each_process_hashes_its_share_of_the_shards(pack, monkeypatch):
    hashed, real = [], shards._sha256
    monkeypatch.setattr(shards, "_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    monkeypatch.setattr(shards, "_read_stamps", dict)  # nothing verified before
    monkeypatch.setattr(shards, "_write_stamps", lambda stamps: None)
    names = [s["file"] for s in pack.manifest["splits"]["train"]["shards"]]
    for k, n in ((0, 2), (1, 2), (1, 3), (0, 1)):
        hashed.clear()
        assert len(open_shards(pack.out, True, share=(k, n))) == 10  # every sample all the same
        assert hashed == names[k::n]
    hashed.clear()
    open_stream(f"shards:{pack.out}", True, share=(1, 2))
    assert hashed == names[1::2]


def test_open_shards_of_a_split_the_set_lacks_says_how_to_get_one(pack, tmp_path):
    manifest = dict(pack.manifest, splits={"train": pack.manifest["splits"]["train"]})
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    message = (
        f"{tmp_path} has no test split; pack its source again into a new folder: `resnetlab data "
        "pack SRC OUT` holds out a test split of a folder without test/ (--test-split)"
    )
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        open_shards(tmp_path, False)


class FakeSource:
    """What data/remote.py's RemoteShards gives a split: names, reads, read-ahead."""

    url = "https://host/sets/x"

    def name(self, f: int) -> str:
        return f"{self.url}/shard-{f}"

    def read(self, f: int, offset: int, size: int) -> bytes:
        return f"{f}/{offset}/{size}".encode()

    def reading(self, batches, entries):
        return ("ahead", batches, entries)


def test_a_remote_set_is_read_through_its_source(pack, monkeypatch):
    asked = []

    def open_remote(url, train, **options):
        asked.append((url, train, options))
        split = pack.manifest["splits"]["train" if train else "test"]
        return pack.manifest, split["shards"], FakeSource()

    monkeypatch.setattr(remote, "open_remote", open_remote)
    split = open_stream("shards:https://host/sets/x", False, cache="/c", cache_size=5)
    assert asked == [("https://host/sets/x", False, {"cache": "/c", "cache_size": 5})]
    listed = pack.manifest["splits"]["test"]["shards"]
    assert split.name == "shards:https://host/sets/x" and split.classes == list(CLASSES)
    assert split.files == [f"https://host/sets/x/shard-{f}" for f in range(len(listed))]
    assert split.entries.tolist() == [
        [f, o, n] for f, s in enumerate(listed) for o, n, _ in s["members"]
    ]
    assert split.labels.tolist() == [label for _, label in kept(pack, "test")]
    assert split.labels.dtype == torch.int64 and split.entries.dtype == np.int64
    assert (split.channels, split.mean, split.std, split.side) == (
        3,
        tuple(pack.manifest["mean"]),
        tuple(pack.manifest["std"]),
        8,
    )
    assert split.digest == split_digest(listed) and isinstance(split.source, FakeSource)
    f, o, n = split.entries[2].tolist()
    assert split.read(2) == f"{f}/{o}/{n}".encode()
    batches = iter([])
    assert split.reading(batches) == ("ahead", batches, split.entries)
    assert split.subset([1]).source is split.source


def test_split_digest_tells_versions_apart():
    a, b = {"sha256": "a" * 64}, {"sha256": "b" * 64}
    digest = split_digest([a, b])
    assert digest == hashlib.blake2b(("a" * 64 + "b" * 64).encode(), digest_size=12).hexdigest()
    assert split_digest([b, a]) != digest and split_digest([a]) != digest


def test_default_side_is_the_images_own_when_small_and_square():
    def side(lo, hi):
        return default_side({"image_size": {"min": lo, "max": hi}})

    assert side([28, 28], [28, 28]) == 28 and side([64, 64], [64, 64]) == 64
    assert side([1, 1], [1, 1]) == 1
    assert side([65, 65], [65, 65]) == 224 and side([0, 0], [0, 0]) == 224
    assert side([28, 32], [28, 32]) == 224 and side([28, 28], [32, 32]) == 224


def test_a_split_reads_describes_and_subsets_its_samples(pack, tmp_path):
    split = open_shards(pack.out, True, verify=False)
    with tarfile.open(split.files[1]) as tar:
        names = {m.offset_data: m.name for m in tar.getmembers()}
    i = int(np.flatnonzero(split.entries[:, 0] == 1)[0])
    f, offset, size = split.entries[i].tolist()
    assert split.read(i) == Path(split.files[f]).read_bytes()[offset : offset + size]
    assert split.describe(i) == f"{split.files[1]}:{names[offset]}"
    sub = split.subset([7, 2, 2])
    assert len(sub) == 3 and sub.entries.tolist() == split.entries[[7, 2, 2]].tolist()
    assert sub.labels.tolist() == split.labels[[7, 2, 2]].tolist()
    assert (sub.name, sub.classes, sub.channels, sub.files) == (
        split.name,
        split.classes,
        split.channels,
        split.files,
    )
    assert (sub.mean, sub.std, sub.side, sub.digest) == (
        split.mean,
        split.std,
        split.side,
        split.digest,
    )
    assert sub.classes is not split.classes  # its own list
    assert len(split.subset([])) == 0 and len(split.subset(torch.tensor([[1, 2]]))) == 2
    for bad in ([10], [-1], [0, 10]):
        with pytest.raises(
            UsageError, match=re.escape(f"subset indices must lie in [0, 10) for {split.name}")
        ):
            split.subset(bad)
    batches = iter([])
    assert split.reading(batches) is batches  # local shards: nothing fetched ahead
    # take: as Dataset.take
    ds = Dataset("x", torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10), ["a"])
    for n, seed in ((4, 3), (4, 0), (6, 1)):
        want = ds.take(n, seed).labels
        assert split.take(n, seed).entries.tolist() == split.entries[want.numpy()].tolist()
    assert split.take(4).entries.tolist() == split.take(4, 0).entries.tolist()
    assert split.take(100).entries.tolist() == split.entries.tolist()  # at most all, in order


def test_a_split_s_images_are_its_evaluation_views_decoded_when_asked(pack):
    split = open_shards(pack.out, True, verify=False)
    images = split.images
    assert images.shape == (10, 3, 8, 8) and len(images) == 10
    pngs = [i for i in range(10) if decode.is_png(split.read(i))]
    assert pngs  # an 8 x 8 image's view at side 8 is the image (PNG: decoded exactly)
    for i in pngs:
        assert torch.equal(images[i], decode.decode_image(split.read(i), 3))
    split.view = EvalView(8, 6)  # a run's evaluation view (data/path.py sets it)
    some = split.subset([5, 2])  # and a subset's images, through the same view
    assert some.images.shape == (2, 3, 6, 6)
    assert all(torch.equal(some.images[k], split.images[i]) for k, i in enumerate([5, 2]))
    assert split.take(4).view == split.view


def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path):
    gone = tmp_path / "gone.tar"
    split = StreamSplit(
        "x",
        ["a"],
        3,
        [str(gone)],
        np.array([[0, 1536, 10]]),
        torch.tensor([0]),
        (0.5,) * 3,
        (0.25,) * 3,
        8,
    )
    message = f"cannot read {gone}: No such file or directory; restore it (or pack the data again)"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        split.read(0)
    assert split.describe(0) == f"{gone}:bytes 1536-1546"
    whole = tmp_path / "whole.png"
    whole.write_bytes(b"12345")
    split.files[0], split.entries[0] = str(whole), [0, 0, -1]
    assert split.read(0) == b"12345" and split.describe(0) == str(whole)


def test_an_image_folder_is_read_as_it_is(pack, monkeypatch):
    name = f"imagefolder:{pack.folder}"
    split = open_image_folder(name, True)
    files = listing(pack, "train")  # the broken file too: training counts it when met
    assert split.files == [str(p) for p, _ in files] and split.name == name
    assert (
        split.labels.tolist() == [label for _, label in files] and split.labels.dtype == torch.int64
    )
    assert (split.classes, split.channels, split.side) == (list(CLASSES), 3, 224)
    assert split.entries.dtype == np.int64
    assert split.entries.tolist() == [[i, 0, -1] for i in range(len(files))]
    assert split.read(3) == files[3][0].read_bytes() and split.describe(3) == str(files[3][0])
    # packing's measure of the training images (the one that does not decode passed over)
    assert (split.mean, split.std) == (tuple(pack.manifest["mean"]), tuple(pack.manifest["std"]))
    assert open_stream(name, True).files == split.files
    test = open_stream(name, False)
    assert test.files == [str(p) for p, _ in listing(pack, "test")]
    assert (test.mean, test.std) == ((0.5,) * 3, (0.25,) * 3)  # not measured on test images
    assert len({split.digest, test.digest}) == 2 and len(split.digest) == 24
    assert open_image_folder(name, True).digest == split.digest
    monkeypatch.setattr(shards, "STAT_IMAGES", 3)  # a spread-out sample: files 0, 3 and 6 of 11
    sampled = open_image_folder(name, True)
    assert (sampled.mean, sampled.std) == shards._statistics([files[i][0] for i in (0, 3, 6)])


def test_an_image_folder_s_digest_follows_its_files_and_its_held_out_split_is_said(
    tmp_path, capsys
):
    src = tmp_path / "flat"
    rng = np.random.default_rng(5)
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(3):
            random_image(rng, 8, 8).save(src / c / f"{i}.png")
    name = f"imagefolder:{src}"
    open_image_folder(name, False)
    assert capsys.readouterr().err == ""  # said for the training split (once a process)
    before = open_image_folder(name, True)
    said = capsys.readouterr().err
    assert (
        said
        == f"resnetlab: warning: {describe_held_out(image_folder_files(name), name, None, 0)}\n"
    )
    with open(src / "a" / "0.png", "ab") as f:
        f.write(b"more")
    changed = open_image_folder(name, True).digest
    assert changed != before.digest
    first = Path(before.files[0])  # a training file renamed: the same sizes, another file
    first.rename(first.with_name(f"{first.stem}b.png"))
    assert open_image_folder(name, True).digest != changed


def test_an_image_folder_s_class_folders_without_images_are_said_with_its_training_split(
    tmp_path, capsys
):
    src = write_tiny_folder(tmp_path / "src", train=3, test=3)
    (src / "train" / "dog").mkdir()
    name = f"imagefolder:{src}"
    assert open_image_folder(name, False).classes == list(CLASSES)
    assert capsys.readouterr().err == ""
    open_image_folder(name, True)
    assert capsys.readouterr().err == (
        f"resnetlab: warning: {src}: 1 class folder without images left out (dog); images are "
        f"{'/'.join(formats.IMAGE_SUFFIXES)}\n"
    )


def test_open_stream_names_what_it_reads():
    message = (
        "--stream reads shards:PATH or imagefolder:PATH, not fashion-mnist; pack a built-in "
        "dataset with `resnetlab data pack fashion-mnist OUT` and train with --data shards:OUT"
    )
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        open_stream("fashion-mnist", True)
    assert is_stream_name("shards:x") and not is_stream_name("imagefolder:x")
    assert not is_stream_name("x/shards:")


def test_packed_sets_are_listed_with_their_sizes(pack, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("x")
    (home / "photos").mkdir()  # no manifest: not a set
    shutil.copytree(pack.out, home / "b-set")
    (home / "a-bad").mkdir()
    (home / "a-bad" / MANIFEST).write_text("{")
    rows = list_packed(home)
    assert [Path(r["path"]).name for r in rows] == ["a-bad", "b-set"]
    assert "is not JSON" in rows[0]["error"] and set(rows[0]) == {"path", "error"}
    splits = pack.manifest["splits"]
    assert rows[1] == {
        "name": "photos",
        "path": str(home / "b-set"),
        "classes": 3,
        "examples": {"train": 10, "test": 5},
        "shards": sum(len(v["shards"]) for v in splits.values()),
        "bytes": sum(s["bytes"] for v in splits.values() for s in v["shards"]),
        "default_side": 8,
    }
    assert list_packed(home / "b-set") == [dict(rows[1])]  # the folder itself
    monkeypatch.setenv("HOME", str(tmp_path))
    assert list_packed("~/home") == rows
    assert list_packed(tmp_path / "nowhere") == [] and list_packed(home / "notes.txt") == []


def test_format_packed_lines():
    assert format_packed([], "/x") == "no packed sets in /x"
    rows = [
        {
            "name": "big",
            "path": "/x/big",
            "classes": 10,
            "examples": {"train": 1234, "test": 5},
            "shards": 3,
            "bytes": 3 * 2**20 + 2**19,
            "default_side": 224,
        },
        {"path": "/x/bad", "error": "it broke"},
        {
            "name": "one",
            "path": "/x/one",
            "classes": 2,
            "examples": {"train": 1},
            "shards": 1,
            "bytes": 0,
            "default_side": 8,
        },
    ]
    assert format_packed(rows, "/x") == "\n".join(
        [
            "packed sets in /x:",
            "  shards:/x/big  big, 10 classes, 1,234 train, 5 test, 3 shards, 3.5 MiB, trains at 224 px",
            "  /x/bad: it broke",
            "  shards:/x/one  one, 2 classes, 1 train, 1 shard, 0.0 MiB, trains at 8 px",
        ]
    )


def test_shards_home_is_the_environment_s_or_the_cache_s(monkeypatch, isolated_cache):
    monkeypatch.setenv("RESNETLAB_SHARDS", "/data/sets")
    assert shards_home() == Path("/data/sets")
    monkeypatch.setenv("RESNETLAB_SHARDS", "")
    assert shards_home() == isolated_cache / "shards"
    monkeypatch.delenv("RESNETLAB_SHARDS")
    assert shards_home() == isolated_cache / "shards"
