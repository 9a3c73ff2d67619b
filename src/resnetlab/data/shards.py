"""Datasets bigger than memory: WebDataset tar shards with a checked manifest, and image folders
read as they are. Neither is ever loaded whole: a split is a list of (file, offset, size, label).

    pack_folder("photos/", "packed/")        # photos/{train,test}/CLASS/*.jpg (or photos/CLASS/*)
    pack_builtin("fashion-mnist", "packed/")  # the built-in datasets, as PNG (for tests, small runs)
    train = open_stream("shards:packed/", train=True)   # a StreamSplit: checked, not read

Why WebDataset tars: a plain POSIX tar of `KEY.jpg` + `KEY.cls` members is the format
`webdataset` (and tar, and every WebDataset reader) reads, written here as its TarWriter does, with
each image's encoded bytes kept as they are. WebDataset's own reader streams shards in order,
which cannot give an epoch order that depends only on the seed (it depends on the worker count
and a shuffle buffer), so the manifest also records where each member's bytes lie in its shard,
and a sample is one positioned read: any order, any share of it per process, at the cost of
random reads (fine on SSDs and page cache; on spinning disks pack bigger shards and expect seeks).

The manifest (`manifest.json`) holds the classes, counts per class, image sizes, the mean and std
used for normalisation, and per shard its bytes, sha256 and members. Every shard is checked
against it (size and sha256) when a split is opened (a shard verified before and unchanged since,
by size and mtime, is not hashed again): a missing or damaged shard is one DataError naming it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from resnetlab.data import decode, formats
from resnetlab.data.datasets import (
    IMAGEFOLDER,
    describe_held_out,
    image_folder_files,
    load_dataset,
    resolve_spec,
)
from resnetlab.data.eval_view import EvalView
from resnetlab.data.manifest import FORMAT, parse_manifest
from resnetlab.data.remote import is_url
from resnetlab.errors import DataError, UsageError, WriteError, plural
from resnetlab.fileio import write_json, write_text

if TYPE_CHECKING:
    from resnetlab.data.remote import RemoteShards

SHARDS = "shards:"
MANIFEST = "manifest.json"
SHARD_BYTES = 256 * 2**20  # WebDataset's advice: shards of 100 MB - 1 GB read efficiently
SMALL_SIDE = 64  # images no larger than this train at their own size by default, others at 224
DEFAULT_SIDE = 224
STAT_IMAGES = 500  # images the mean and std of a packed folder are measured on


@dataclass
class StreamSplit:
    """One split that stays on disk: sample i is `size` bytes at `offset` of `files[file]` (size
    -1: the whole file), with label `labels[i]`."""

    name: str
    classes: list[str]
    channels: int
    files: list[str]
    entries: np.ndarray  # int64 [N, 3]: file index, offset, size
    labels: torch.Tensor  # int64 [N]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    side: int  # the default training (and evaluation crop) side
    # what tells two versions apart (data/identity.py): a packed set's shard checksums
    # (split_digest), an image folder's files (datasets.FolderFiles.digest)
    digest: str = ""
    source: RemoteShards | None = None  # shards elsewhere, read through a cache (data/remote.py)
    # how `images` shows them: a run's evaluation view (data/path.load_splits sets its test
    # split's); None: the whole image, square, at `side` (Resize(side) + CenterCrop(side))
    view: EvalView | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        """Sample i's encoded bytes; a DataError naming the file when it cannot be read."""
        f, offset, size = (int(v) for v in self.entries[i])
        if self.source is not None:
            return self.source.read(f, offset, size)
        path = self.files[f]
        try:
            with open(path, "rb") as fh:
                if size < 0:
                    return fh.read()
                fh.seek(offset)
                return fh.read(size)
        except OSError as e:
            raise DataError(
                f"cannot read {path}: {e.strerror or e}; restore it (or pack the data again)"
            ) from None

    def describe(self, i: int) -> str:
        """Where sample i lies, as a user finds it: its image file, or its shard and member name
        (from the member's tar header, just before its bytes)."""
        f, offset, size = (int(v) for v in self.entries[i])
        path = self.files[f]
        if size < 0:
            return path
        try:
            with open(path, "rb") as fh:
                fh.seek(offset - 512)
                name = fh.read(100).split(b"\0", 1)[0].decode("utf-8")
        except (OSError, ValueError):
            name = f"bytes {offset}-{offset + size}"
        return f"{path}:{name}"

    def subset(self, indices) -> StreamSplit:
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise UsageError(f"subset indices must lie in [0, {len(self)}) for {self.name}")
        return StreamSplit(
            self.name,
            list(self.classes),
            self.channels,
            self.files,
            self.entries[index.numpy()],
            self.labels[index],
            self.mean,
            self.std,
            self.side,
            self.digest,
            self.source,
            self.view,
        )

    def reading(self, batches):
        """The loader's batches of (epoch, index, side) keys as they are handed out: passed on,
        and for shards elsewhere the next shards fetched ahead meanwhile."""
        return batches if self.source is None else self.source.reading(batches, self.entries)

    def take(self, n: int, seed: int = 0) -> StreamSplit:
        """A seeded random subset of `n` examples, in their order (as Dataset.take)."""
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[: min(n, len(self))].sort().values)

    @property
    def images(self) -> LazyImages:
        """The images through the split's `view`, decoded one at a time when asked for (what the
        report's mistakes picture draws)."""
        return LazyImages(self, self.view or EvalView(self.side, self.side))


class LazyImages:
    """What code written for in-memory datasets reads of `images`: the shape [N, C, crop, crop]
    and single images, uint8, each shown through `view` (data/eval_view.py) when asked for."""

    def __init__(self, split: StreamSplit, view: EvalView) -> None:
        self.split, self.view = split, view
        self.shape = torch.Size((len(split), split.channels, view.crop, view.crop))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.view.read(self.split.read(int(i)), self.split.channels)


def is_stream_name(name: str) -> bool:
    return name.startswith(SHARDS)


def _local_folder(path) -> Path:
    """A packed set's local folder; a URL is refused in one line saying what is read."""
    if is_url(path):
        scheme = path.split("://", 1)[0]
        raise UsageError(
            f"shards:{path}: this reads a packed set from a local folder, not over {scheme}:// (training "
            "and eval read URLs); copy the set (its manifest.json and .tar shards) to a local disk"
        )
    return Path(path).expanduser()


# --- packing --------------------------------------------------------------------------------


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
        buf, "PNG", compress_level=1
    )
    return buf.getvalue()


def _pack_one(job: tuple[str, int | None, str, int]) -> tuple:
    """One source file (path, max_side, key, label) for packing, fully decoded once (in a worker
    process): ("ok", the sample's tar members (_tar_sample), the image's bytes, (height, width),
    per-channel mean, per-channel mean of squares) or ("bad", the error).
    JPEG and PNG are stored as they are unless larger than `max_side` (then shrunk and
    re-encoded, JPEG as JPEG at quality 90, others as PNG); other formats as the PNG of the
    pixels the reader gives them, so every path sees the same pixels."""
    path, max_side, key, label = job
    try:
        data = Path(path).read_bytes()
        pixels = decode.read_image(data, 3)
    except (OSError, decode.BadImage) as e:
        return ("bad", str(getattr(e, "strerror", None) or e))
    h, w = pixels.shape[:2]
    shrink = max_side is not None and max(h, w) > max_side
    if shrink or not (decode.is_jpeg(data) or decode.is_png(data)):
        from PIL import Image

        im = Image.fromarray(pixels)
        if shrink:
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if decode.is_jpeg(data):
            im.save(buf, "JPEG", quality=90)
        else:
            im.save(buf, "PNG", compress_level=1)
        data = buf.getvalue()
        if shrink:  # the statistics of what is stored
            pixels = decode.read_image(data, 3)
            h, w = pixels.shape[:2]
    mean, square = _pixel_moments(pixels)
    return ("ok", _tar_sample(key, data, label), len(data), (h, w), mean, square)


_LEVELS = np.arange(256, dtype=np.float64) / 255
STAT_PIXELS = 65536  # pixels of each image the statistics read: a regular grid over larger ones


def _pixel_moments(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and mean of squares in [0, 1] of uint8 [H, W, 3] pixels, from their
    histograms (a tenth of a float conversion's time) over a grid of at most ~STAT_PIXELS."""
    h, w = pixels.shape[:2]
    step = max(1, math.isqrt(h * w // STAT_PIXELS))
    flat = pixels[::step, ::step].reshape(-1, 3)
    hist = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(3)]).astype(np.float64)
    n = hist.sum(1)
    return tuple(hist @ _LEVELS / n), tuple(hist @ (_LEVELS * _LEVELS) / n)


class _ShardWriter:
    """Samples into `split`-NNNNNN.tar files of about `shard_bytes` each: plain POSIX (ustar)
    tars of `KEY.cls` + `KEY.jpg|png` members, the layout (and member order) WebDataset's
    TarWriter writes, each indexed and hashed as it is written (parsing it back cost the packing
    process more than decoding the images). A shard closes once its samples reach
    `shard_bytes`: the layout follows from the samples alone. Written straight into the
    staging folder (_staging: the whole set appears at once or not at all), each sample as it
    comes, so the last shard's writing does not wait for the last image."""

    def __init__(self, out: Path, split: str, shard_bytes: int) -> None:
        self.out, self.split, self.shard_bytes = out, split, shard_bytes
        self.shards: list[dict] = []
        self.labels: list[int] = []
        self._file = None  # the open shard
        self._syncer = None  # the thread syncing the written shards to disk
        self._syncing: list = []  # (path, its sync's future) of each shard written
        self._hash = hashlib.sha256()
        self._members: list[list[int]] = []  # its images' [offset, size, label]
        self._bytes = 0

    def add(self, key: str, data: bytes, label: int) -> None:
        self.add_sample(_tar_sample(key, data, label), len(data), label)

    def add_sample(self, sample: bytes, size: int, label: int) -> None:
        """A sample's tar members (_tar_sample), its image `size` bytes long."""
        self.add_run(sample, [len(sample)], [size], [label])

    def add_run(self, data, lengths: list[int], sizes: list[int], labels: list[int]) -> None:
        """Samples (_tar_sample's, built in the worker that decoded them) end to end in `data`,
        each `lengths` bytes long, their images `sizes` bytes."""
        view, start, at = memoryview(data), 0, 0
        for length, size, label in zip(lengths, sizes, labels, strict=True):
            self._members.append([self._bytes + IMAGE_OFFSET, size, label])
            self._bytes += length
            at += length
            if self._bytes >= self.shard_bytes:
                self._write(view[start:at])
                start = at
                self.flush()
        if at > start:
            self._write(view[start:at])

    def _path(self) -> Path:
        return self.out / f"{self.split}-{len(self.shards):06d}.tar"

    def _write(self, data) -> None:
        try:
            if self._file is None:
                self._file = open(self._path(), "wb")  # noqa: SIM115 (open until flush)
            self._file.write(data)
        except OSError as e:
            self._drop()
            raise WriteError.of(e, self._path()) from None
        self._hash.update(data)

    def _drop(self) -> None:
        """The open shard closed after a failed write (the pack fails; its staging folder goes):
        a descriptor left open would hold the removed file's disk space until collected."""
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):  # its buffer, flushed again, fails again
                f.close()

    def flush(self) -> None:
        """The open shard ended and indexed, its syncing to disk begun in a thread (the disk's
        time spent while packing goes on; finish() waits for it); nothing when no sample came
        since."""
        if not self._members:
            return
        end = bytes(1024)  # the end of the archive: two zero blocks
        self._write(end)
        path, f = self._path(), self._file
        try:
            f.flush()
        except OSError as e:
            self._drop()
            raise WriteError.of(e, path) from None
        if self._syncer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="shard-sync")
        self._syncing.append((path, self._syncer.submit(_sync_and_close, f)))
        self.shards.append(
            _index_shard(path, self._members, self._bytes + len(end), self._hash.hexdigest())
        )
        self.labels += [label for _, _, label in self._members]
        self._file, self._hash, self._members, self._bytes = None, hashlib.sha256(), [], 0

    def finish(self) -> None:
        """The last shard flushed and every shard on disk; a WriteError naming the first that
        could not be synced."""
        self.flush()
        if self._syncer is None:
            return
        self._syncer.shutdown()  # waits for each shard's sync
        self._syncer, syncing, self._syncing = None, self._syncing, []
        for path, done in syncing:
            try:
                done.result()
            except OSError as e:
                raise WriteError.of(e, path) from None


def _sync_and_close(f) -> None:
    try:
        os.fsync(f.fileno())
    finally:
        f.close()


IMAGE_OFFSET = 3 * 512  # where a sample's image bytes start: two headers and the padded label


def _tar_sample(key: str, data: bytes, label: int) -> bytes:
    """A sample's two tar members, `KEY.cls` (the label as text) then `KEY.jpg` or `KEY.png`,
    headers and padding included: the image's bytes start at IMAGE_OFFSET."""
    cls = str(label).encode()
    ext = "jpg" if decode.is_jpeg(data) else "png"
    return b"".join(
        (
            _tar_header(f"{key}.cls", len(cls)),
            cls + bytes(512 - len(cls)),
            _tar_header(f"{key}.{ext}", len(data)),
            data,
            bytes(-len(data) % 512),
        )
    )


def _tar_header(name: str, size: int) -> bytes:
    """A ustar header block of a regular file (mode 0444, mtime 0, owner bigdata as WebDataset's
    TarWriter writes), for a short ASCII name."""
    block = bytearray(512)
    encoded = name.encode("ascii")
    if len(encoded) > 100 or size >= 8**11:
        raise ValueError(f"tar member {name!r} of {size} bytes does not fit a ustar header")
    block[: len(encoded)] = encoded
    block[100:108] = b"0000444\0"
    block[108:124] = b"0000000\x000000000\0"  # uid, gid
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"  # mtime
    block[148:156] = b" " * 8  # the checksum counts its own field as spaces
    block[156:157] = b"0"  # a regular file
    block[257:265] = b"ustar\x0000"
    block[265:272] = block[297:304] = b"bigdata"  # user and group names
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _index_shard(path: Path, members: list, size: int, sha256: str) -> dict:
    """A shard's manifest entry: bytes, sha256 and each image member's (offset, size, label)."""
    return {
        "file": path.name,
        "bytes": size,
        "sha256": sha256,
        "count": len(members),
        "members": members,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _prepare_out(out: Path) -> None:
    if (out / MANIFEST).exists():
        raise UsageError(f"{out} holds a packed set already; remove it or choose another OUT")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty folder; choose another OUT")


@contextlib.contextmanager
def _staging(out: Path):
    """A temporary folder beside `out`, renamed to `out` when the block ends well and removed
    when it fails: a pack stopped midway (an error, Ctrl-C, a kill) leaves no set at `out`
    (a killed one leaves `.OUT.partial-PID`, removed by the next pack into `out`)."""
    _prepare_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty (checked above): os.replace cannot replace a folder
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def pack_builtin(
    name: str, out, *, root=None, shard_bytes: int = SHARD_BYTES, subset: int | None = None
) -> dict:
    """A built-in dataset's two splits as PNG shards in `out`; returns the manifest."""
    spec = resolve_spec(name)
    with _staging(Path(out)) as tmp:
        splits = {}
        for split, train in (("train", True), ("test", False)):
            ds = load_dataset(spec.name, train, root, subset=subset)
            writer = _ShardWriter(tmp, split, shard_bytes)
            for i in range(len(ds)):
                writer.add(f"{i:08d}", _png(ds.images[i].numpy()), int(ds.labels[i]))
            writer.finish()
            splits[split] = writer
        h, w = spec.image_size
        stats = {"min": [h, w], "max": [h, w]}
        return _write_manifest(
            tmp, spec.name, list(spec.classes), spec.channels, spec.mean, spec.std, splits, stats
        )


def pack_folder(
    src,
    out,
    *,
    max_side: int | None = None,
    shard_bytes: int = SHARD_BYTES,
    say=None,
    test_split: float | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """An image folder (one sub-folder per class; train/ and test/ or val/ when it has them) as
    shards in `out`, each image fully decoded once by data/decode.py's reader (which also gives
    the mean and std) in `workers` processes; JPEG and PNG stored byte for byte (larger than
    `max_side`: re-encoded), other formats as PNG. Files that do not decode are left out,
    counted and listed in the manifest. A folder without test/ gets a seeded, stratified test
    split of `test_split` (default DEFAULT_TEST_SPLIT: a fraction, or a count). The set is
    written beside `out` and renamed into place."""
    _prepare_out(Path(out))  # before the folder is listed: a refusal comes at once
    with _collector_paused():
        return _pack_folder(
            src, Path(out), max_side, shard_bytes, say, test_split, seed, workers, progress
        )


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off for the block: a full collection walks every object
    of the process (torch's are many), a tenth of a second each time the listing's or the
    packing's objects set one off; packing makes no cycles, and what it makes is freed as it
    goes. Worker processes inherit the setting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _pack_folder(src, out: Path, max_side, shard_bytes, say, test_split, seed, workers, progress):
    name = IMAGEFOLDER + str(src)
    files = image_folder_files(name, test_split, seed)  # one listing of each class folder
    if not files.classes:
        raise UsageError(
            f"{src} holds no class folders of images ({'/'.join(formats.IMAGE_SUFFIXES)}); give a "
            "folder with one sub-folder of images per class"
        )
    if files.empty and say is not None:
        empty = files.empty
        say(
            f"warning: {len(empty)} class folder{'s' if len(empty) != 1 else ''} without images "
            f"left out: {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}"
        )
    if files.held_out and not files.splits["test"]:
        raise UsageError(
            f"{src}: too few images to hold out a test split (a class needs 2 or more); add "
            "images, or give it train/ and test/ folders of class folders"
        )
    if files.held_out and say is not None:
        say(describe_held_out(files, str(src), test_split, seed) + "; --test-split changes it")
    classes = files.classes
    with _staging(out) as tmp:
        splits = {split: _ShardWriter(tmp, split, shard_bytes) for split in files.splits}
        runs = _runs(files.splits)
        sizes, moments, left_out, last = [], [], [], next(iter(splits))
        with _decoding(workers) as run:
            results = run(_pack_run, _jobs(runs, max_side, None if workers <= 1 else tmp))
            if progress:
                results = _progress(results, [len(part) for _, _, part in runs], "packing")
            for (split, _, part), (data, done, found, bad) in zip(runs, results, strict=True):
                for i, error in bad:
                    left_out.append({"file": str(part[i][0]), "error": error})
                    if say is not None:
                        say(f"skipped {part[i][0]}: {error}")
                if isinstance(data, str):  # a worker's samples, handed over in a file
                    with open(data, "rb") as f:
                        data = f.read()
                    os.unlink(f.name)
                if split != last:  # the split before is whole: written while workers decode
                    splits[last].flush()
                    last = split
                labels = [part[i][1] for i in done[:, 0].tolist()]
                splits[split].add_run(data, done[:, 1].tolist(), done[:, 2].tolist(), labels)
                sizes.append(done[:, 3:])
                if split == "train":
                    moments.append(found)
            for writer in splits.values():
                writer.finish()
            means = np.concatenate([np.empty((0, 6))] + moments)
            mean, std = _moments(means[:, :3].copy(), means[:, 3:].copy())
            array = np.concatenate([np.zeros((0, 2), np.int64)] + sizes)
            stats = {"min": [0, 0], "max": [0, 0]}
            if len(array):
                stats = {"min": array.min(0).tolist(), "max": array.max(0).tolist()}
            name = Path(src).resolve().name
            return _write_manifest(tmp, name, classes, 3, mean, std, splits, stats, left_out)


@contextlib.contextmanager
def _decoding(workers: int):
    """run(fn, jobs) -> fn's results in order: in this process (1 worker), or in `workers`
    forked processes (the decode is CPU-bound and each file independent), told to end as soon
    as the last result is in and waited for when the block ends. A ProcessPoolExecutor, not a
    multiprocessing Pool: the Pool's worker-handling thread wakes at each result and took
    0.05 CPU s of a 20,000-file pack's 0.24 in the packing process."""
    if workers <= 1:
        yield map
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    ending = threading.Thread(target=pool.shutdown)  # tells the workers to end, waits for them

    def run(fn, jobs):
        yield from pool.map(fn, jobs)
        ending.start()  # all in: the workers end while the last shard is written

    try:
        yield run
    finally:
        if ending.ident is None:  # stopped before the last result: the runs not begun dropped
            pool.shutdown(cancel_futures=True)
        else:
            ending.join()


RUN_FILES = 256  # the most files a worker packs in one go: few messages to pass
SPLIT_RUNS = 16  # the fewest runs a split is cut into, so that the workers share it evenly


def _runs(splits: dict) -> list[tuple[str, int, list]]:
    """Each split's files as runs of up to RUN_FILES for _pack_run: (split, the first one's
    index in it, their (path, label) pairs)."""
    runs = []
    for split, todo in splits.items():
        step = max(1, min(RUN_FILES, len(todo) // SPLIT_RUNS))
        runs += [(split, start, todo[start : start + step]) for start in range(0, len(todo), step)]
    return runs


def _jobs(runs: list, max_side: int | None, spill: Path | None):
    """_pack_run's job of each run. Worker processes (`spill`: a folder) hand each run's samples over
    in a file there: pickled through the pool's pipe, one tuple per sample, they cost the
    workers a sixth of their CPU time and this process more than reading a file, on the same
    cores."""
    for split, start, part in runs:
        handed = None if spill is None else str(spill / f".{split}-{start:08d}.run")
        yield [str(p) for p, _ in part], [y for _, y in part], start, max_side, handed


def _pack_run(job: tuple[list[str], list[int], int, int | None, str | None]) -> tuple:
    """A run of source files (their paths, labels, the first one's index in its split,
    max_side, the file to hand their samples over in or None) through _pack_one: (their
    samples end to end, or the file holding them; int64 [n, 5] of the n files packed: index in
    the run, sample bytes, image bytes, height, width; float64 [n, 6]: their per-channel means
    and means of squares; (index in the run, error) of each file left out): arrays, cheaper
    to pass between processes than a tuple per file."""
    paths, labels, start, max_side, spill = job
    samples, done, found, bad = [], [], [], []
    for i, (path, label) in enumerate(zip(paths, labels, strict=True)):
        key = f"{start + i:08d}"  # its place in its split: the keys skip the files left out
        result = _pack_one((path, max_side, key, label))
        if result[0] == "bad":
            bad.append((i, result[1]))
            continue
        _, sample, size, (h, w), mean, square = result
        samples.append(sample)
        done.append((i, len(sample), size, h, w))
        found.append((*mean, *square))
    done_array = np.array(done, np.int64).reshape(-1, 5)
    found_array = np.array(found, np.float64).reshape(-1, 6)
    if spill is None:
        return b"".join(samples), done_array, found_array, bad
    with open(spill, "wb") as f:
        f.write(b"".join(samples))  # one write call
    return spill, done_array, found_array, bad


def _progress(results, counts: list[int], what: str):
    """`results` through a tqdm bar on stderr when tqdm is installed, each result counting for
    its `counts` (the images of its run)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return results
    bar = tqdm(total=sum(counts), desc=what, unit="img", leave=False)

    def counted():
        with bar:
            for result, count in zip(results, counts, strict=True):
                bar.update(count)
                yield result

    return counted()


def _moments(means: list, squares: list) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of the training images, each image weighing the same
    (from each image's own per-channel mean and mean of squares, gathered while packing)."""
    if not len(means):
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    mean = np.mean(means, axis=0)
    std = np.sqrt(np.clip(np.mean(squares, axis=0) - mean * mean, 1e-6, None))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


def _statistics(paths: list[Path]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of (a spread-out sample of) the training images, by
    packing's own measure (_pixel_moments of each image as the reader gives it); files that do
    not decode are passed over (training counts them)."""
    means, squares = [], []
    for p in paths:
        try:
            mean, square = _pixel_moments(decode.read_image(p.read_bytes(), 3))
        except (OSError, decode.BadImage):
            continue
        means.append(mean)
        squares.append(square)
    return _moments(means, squares)


def _write_manifest(out, name, classes, channels, mean, std, splits, sizes, left_out=()) -> dict:
    manifest = {
        "format": FORMAT,
        "name": name,
        "classes": classes,
        "channels": channels,
        "mean": list(mean),
        "std": list(std),
        "image_size": sizes,
        "skipped": len(left_out),
        "left_out": list(left_out),  # {"file", "error"} of each source file that did not decode
        "splits": {
            split: {
                "count": len(w.labels),
                "class_counts": np.bincount(w.labels, minlength=len(classes)).tolist(),
                "shards": w.shards,
            }
            for split, w in splits.items()
        },
    }
    write_text(out / MANIFEST, _manifest_text(manifest))
    return manifest


_MEMBERS = "\0members"  # where a shard's members go in the manifest's text (json: "\u0000members")


def _manifest_text(manifest: dict) -> str:
    """The manifest as indented JSON, each shard's members one [offset, size, label] a line,
    written by json's C encoder (indent=2 runs the pure-Python one over every member: seconds
    for ImageNet's 1.3 million)."""
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    outline = {
        **manifest,
        "splits": {
            name: {**split, "shards": [{**s, "members": _MEMBERS} for s in split["shards"]]}
            for name, split in manifest["splits"].items()
        },
    }
    pieces = json.dumps(outline, indent=2).split(json.dumps(_MEMBERS))
    line = ",\n" + " " * 12  # a member's place: inside its shard's "members" list
    members = []
    for shard in shards:
        compact = json.dumps(shard["members"], separators=(",", ":"))[1:-1]
        lines = compact.replace("],[", "]" + line + "[")
        members.append(f"[{line[1:]}{lines}\n{' ' * 10}]" if lines else "[]")
    return "".join(p for pair in zip(pieces, [*members, "\n"], strict=True) for p in pair)


# --- reading --------------------------------------------------------------------------------


def read_manifest(path) -> dict:
    """A packed set's manifest; a DataError saying what to do when it is missing or not one."""
    folder = _local_folder(path)
    try:
        data = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{folder} holds no {MANIFEST}: pack a dataset there with `resnetlab data pack SRC {folder}`"
        ) from None
    except OSError as e:
        raise DataError(
            f"{folder / MANIFEST} cannot be read ({e}); pack the data again into an empty folder"
        ) from None
    return parse_manifest(data, str(folder / MANIFEST))


def check_shard(folder: Path, shard: dict, verified: dict | None = None) -> None:
    """Raise DataError unless the shard exists with the manifest's size and sha256. `verified`
    (path -> [size, mtime_ns, sha256]) spares the hash of a shard unchanged since it was last
    verified, and is given the newly verified ones."""
    path = folder / shard["file"]
    redo = f"restore it, or pack the data again (`resnetlab data pack SRC {folder}`)"
    if not path.is_file():
        raise DataError(f"shard {path} is missing; {redo}")
    st, key = path.stat(), str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns, shard["sha256"]]
    if verified is not None and verified.get(key) == stamp:
        return
    if st.st_size != shard["bytes"] or _sha256(path) != shard["sha256"]:
        raise DataError(f"shard {path} is damaged (its sha256 differs from {MANIFEST}); {redo}")
    if verified is not None:
        verified[key] = stamp


def _stamps_path() -> Path:
    from resnetlab.data.sources import cache_dir

    return cache_dir() / "verified-shards.json"


def _read_stamps() -> dict:
    """Shards verified before (in the user cache): hashing 150 GB of ImageNet shards at every
    start would cost minutes; a shard changed since (size or mtime) is hashed again."""
    try:
        stamps = json.loads(_stamps_path().read_text(encoding="utf-8"))
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamps(stamps: dict) -> None:
    try:
        write_json(_stamps_path(), {**_read_stamps(), **stamps})  # others' entries kept
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def default_side(manifest: dict) -> int:
    """The training side when --resize is not given: the images' own when they are all one
    small size (packed Fashion-MNIST: 28, CIFAR: 32), else 224 (ImageNet's)."""
    lo, hi = manifest["image_size"]["min"], manifest["image_size"]["max"]
    if lo == hi and lo[0] == lo[1] and 0 < lo[0] <= SMALL_SIDE:
        return lo[0]
    return DEFAULT_SIDE


def open_shards(
    path, train: bool, *, verify: bool = True, share: tuple[int, int] = (0, 1), **remote
) -> StreamSplit:
    """The train or test split of the packed set at `path`, its shards checked (`verify`): with
    `share` (k, n), only shards k, k + n, ...: the n processes of a machine each hash their share
    at once, so none waits long on another (a start on 150 GB of shards outlasted the timeout of
    the processes' collectives when one hashed them all). A URL is read through a local cache
    (data/remote.py; `remote`: its cache and cache_size), each shard checked as it arrives."""
    if is_url(str(path)):
        return _open_remote(str(path), train, **remote)
    folder = _local_folder(path)
    manifest = read_manifest(folder)
    split = "train" if train else "test"
    if split not in manifest["splits"]:
        raise DataError(
            f"{folder} has no {split} split; pack its source again into a new folder: "
            "`resnetlab data pack SRC OUT` holds out a test split of a folder without test/ "
            "(--test-split)"
        )
    shards = manifest["splits"][split]["shards"]
    entries, labels, stamps = [], [], _read_stamps()
    for f, shard in enumerate(shards):
        if verify and f % share[1] == share[0]:
            check_shard(folder, shard, stamps)
        for offset, size, label in shard["members"]:
            entries.append((f, offset, size))
            labels.append(label)
    if verify:
        _write_stamps(stamps)
    return StreamSplit(
        f"{SHARDS}{folder}",
        list(manifest["classes"]),
        int(manifest["channels"]),
        [str(folder / s["file"]) for s in shards],
        np.array(entries, dtype=np.int64).reshape(-1, 3),
        torch.tensor(labels, dtype=torch.int64),
        tuple(manifest["mean"]),
        tuple(manifest["std"]),
        default_side(manifest),
        split_digest(shards),
    )


def _open_remote(url: str, train: bool, **remote) -> StreamSplit:
    """shards:URL: its manifest fetched and checked, each shard fetched into the cache and
    verified when first read (data/remote.py), none now."""
    from resnetlab.data.remote import open_remote

    manifest, shards, source = open_remote(url, train, **remote)
    entries = [(f, o, n) for f, s in enumerate(shards) for o, n, _ in s["members"]]
    return StreamSplit(
        f"{SHARDS}{source.url}",
        list(manifest["classes"]),
        int(manifest["channels"]),
        [source.name(f) for f in range(len(shards))],
        np.array(entries, dtype=np.int64).reshape(-1, 3),
        torch.tensor([y for s in shards for _, _, y in s["members"]], dtype=torch.int64),
        tuple(manifest["mean"]),
        tuple(manifest["std"]),
        default_side(manifest),
        split_digest(shards),
        source,
    )


def split_digest(shards: list[dict]) -> str:
    """What tells two versions of a packed split apart: a hash of its shards' checksums."""
    return hashlib.blake2b(
        "".join(s["sha256"] for s in shards).encode(), digest_size=12
    ).hexdigest()


def open_image_folder(name: str, train: bool) -> StreamSplit:
    """imagefolder:PATH read as it is (--stream): its files listed, none read (a folder without
    test/ holds out data/datasets.py's seeded test split, as `data pack` does). Mean and std are
    measured on a spread-out sample of up to STAT_IMAGES training images; the side is 224."""
    found = image_folder_files(name)  # without test/: the same held-out split as `data pack`
    if train:  # as the in-memory loader says it
        formats.warn_empty(Path(name[len(IMAGEFOLDER) :]), found.empty)
    if train and found.held_out:
        formats.say_warning(describe_held_out(found, name, None, 0))
    split = "train" if train else "test"
    pairs = found.splits[split]
    classes = found.classes
    files = [p for p, _ in pairs]
    labels = [label for _, label in pairs]
    # the statistics normalisation uses: the training split's (a test split's are not used)
    step = max(1, len(files) // STAT_IMAGES)
    mean, std = _statistics(files[::step][:STAT_IMAGES] if train else [])
    n = len(files)
    entries = np.stack([np.arange(n), np.zeros(n, np.int64), np.full(n, -1)], 1).astype(np.int64)
    return StreamSplit(
        name,
        classes,
        3,
        [str(p) for p in files],
        entries.reshape(-1, 3),
        torch.tensor(labels, dtype=torch.int64),
        mean,
        std,
        DEFAULT_SIDE,
        found.digest(split),
    )


def open_stream(name: str, train: bool, share: tuple[int, int] = (0, 1), **remote) -> StreamSplit:
    """`shards:PATH` (or shards:URL, `remote` its cache and cache_size) or `imagefolder:PATH`,
    streamed; `share`: which shards this process checks (open_shards)."""
    if name.startswith(SHARDS):
        return open_shards(name[len(SHARDS) :], train, share=share, **remote)
    if name.startswith(IMAGEFOLDER):
        return open_image_folder(name, train)
    raise UsageError(
        f"--stream reads shards:PATH or imagefolder:PATH, not {name}; pack a built-in dataset "
        f"with `resnetlab data pack {name} OUT` and train with --data shards:OUT"
    )


def list_packed(folder) -> list[dict]:
    """The packed sets in `folder` (itself, or its sub-folders holding a manifest): name, path,
    classes, examples per split, shards and bytes; nothing is verified."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return []
    found = [folder] if (folder / MANIFEST).is_file() else []
    found += sorted(p for p in folder.iterdir() if (p / MANIFEST).is_file())
    rows = []
    for path in found:
        try:
            m = read_manifest(path)
        except DataError as e:
            rows.append({"path": str(path), "error": str(e)})
            continue
        rows.append(
            {
                "name": m["name"],
                "path": str(path),
                "classes": len(m["classes"]),
                "examples": {s: v["count"] for s, v in m["splits"].items()},
                "shards": sum(len(v["shards"]) for v in m["splits"].values()),
                "bytes": sum(sh["bytes"] for v in m["splits"].values() for sh in v["shards"]),
                "default_side": default_side(m),
            }
        )
    return rows


def format_packed(rows: list[dict], where) -> str:
    """`resnetlab data list`'s lines for packed sets."""
    if not rows:
        return f"no packed sets in {where}"
    lines = [f"packed sets in {where}:"]
    for p in rows:
        if "error" in p:
            lines.append(f"  {p['path']}: {p['error']}")
            continue
        counts = ", ".join(f"{n:,} {s}" for s, n in p["examples"].items())
        lines.append(
            f"  shards:{p['path']}  {p['name']}, {p['classes']} classes, {counts}, "
            f"{p['shards']} {plural(p['shards'], 'shard')}, {p['bytes'] / 2**20:.1f} MiB, "
            f"trains at {p['default_side']} px"
        )
    return "\n".join(lines)


def shards_home() -> Path:
    """Where `resnetlab data pack NAME` (no OUT folder) and `data list` look: the user cache's
    shards/ folder (sources.cache_dir)."""
    from resnetlab.data.sources import cache_dir

    return Path(os.environ.get("RESNETLAB_SHARDS") or cache_dir() / "shards")
