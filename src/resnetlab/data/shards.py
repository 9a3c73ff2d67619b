"""Datasets bigger than memory: WebDataset tar shards with a checked manifest, and image folders
read as they are. Neither is ever loaded whole: a split is a list of (file, offset, size, label).

    pack_folder("photos/", "packed/")        # photos/{train,test}/CLASS/*.jpg (or photos/CLASS/*)
    pack_builtin("fashion-mnist", "packed/")  # the built-in datasets, as PNG (for tests, small runs)
    train = open_stream("shards:packed/", train=True)   # a StreamSplit: checked, not read

Why WebDataset tars: a plain POSIX tar of `KEY.jpg` + `KEY.cls` members is the format
`webdataset` (and tar, and every WebDataset reader) reads, written here by its TarWriter, with
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

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from resnetlab.data import decode, formats
from resnetlab.data.datasets import IMAGEFOLDER, _image_folder_splits, load_dataset, resolve_spec
from resnetlab.data.manifest import FORMAT, parse_manifest
from resnetlab.data.remote import is_url
from resnetlab.errors import DataError, UsageError, plural
from resnetlab.fileio import atomic_open, write_json

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
    digest: str = ""  # what tells two versions apart (the manifest's shard checksums)
    source: RemoteShards | None = None  # shards elsewhere, read through a cache (data/remote.py)

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
        """The evaluation views, decoded one at a time when asked for (the report's mistakes)."""
        return LazyImages(self)


class LazyImages:
    """What code written for in-memory datasets reads of `images`: the shape [N, C, side, side]
    and single images (evaluation views, decoded on demand)."""

    def __init__(self, split: StreamSplit) -> None:
        self.split = split
        self.shape = torch.Size((len(split), split.channels, split.side, split.side))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor:
        side = self.split.side
        return decode.eval_view(self.split.read(int(i)), self.split.channels, side, side)


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


def _shrunk(data: bytes, max_side: int | None) -> bytes:
    """`data` as it is, unless its longer side exceeds `max_side` (then re-encoded, as JPEG at
    quality 90 or as PNG) or it is neither JPEG nor PNG (then PNG)."""
    h, w = decode.image_size(data)
    is_png = data[:8] == b"\x89PNG\r\n\x1a\n"
    if (max_side is None or max(h, w) <= max_side) and (decode.is_jpeg(data) or is_png):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if max_side is not None and max(h, w) > max_side:
            if decode.is_jpeg(data):
                im.draft("RGB", (max_side, max_side))  # a reduced DCT decode first: faster
            im = im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode)
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if decode.is_jpeg(data):
            im.convert("RGB").save(buf, "JPEG", quality=90)
        else:
            im.save(buf, "PNG")
        return buf.getvalue()


class _ShardWriter:
    """Samples into `split`-NNNNNN.tar files of about `shard_bytes` each, written atomically
    through WebDataset's TarWriter; each finished shard is indexed and hashed."""

    def __init__(self, out: Path, split: str, shard_bytes: int) -> None:
        self.out, self.split, self.shard_bytes = out, split, shard_bytes
        self.shards: list[dict] = []
        self.labels: list[int] = []
        self._batch: list[tuple[str, bytes, int]] = []
        self._bytes = 0

    def add(self, key: str, data: bytes, label: int) -> None:
        self._batch.append((key, data, label))
        self._bytes += len(data) + 1536  # two tar headers and padding
        if self._bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        import webdataset

        path = self.out / f"{self.split}-{len(self.shards):06d}.tar"
        with atomic_open(path, "wb") as f:
            tar = webdataset.TarWriter(f, encoder=False, mtime=0.0)
            for key, data, label in self._batch:
                ext = "jpg" if decode.is_jpeg(data) else "png"
                tar.write({"__key__": key, ext: data, "cls": str(label).encode()})
            tar.close()
        self.shards.append(_index_shard(path, [label for _, _, label in self._batch]))
        self.labels += [label for _, _, label in self._batch]
        self._batch, self._bytes = [], 0


def _index_shard(path: Path, labels: list[int]) -> dict:
    """A shard's manifest entry: bytes, sha256 and each image member's (offset, size, label)."""
    members = []
    with tarfile.open(path) as tar:
        for m in tar:
            if m.name.endswith((".jpg", ".png")):
                members.append([m.offset_data, m.size, labels[len(members)]])
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
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
    out.mkdir(parents=True, exist_ok=True)


def pack_builtin(
    name: str, out, *, root=None, shard_bytes: int = SHARD_BYTES, subset: int | None = None
) -> dict:
    """A built-in dataset's two splits as PNG shards in `out`; returns the manifest."""
    spec = resolve_spec(name)
    out = Path(out)
    _prepare_out(out)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        ds = load_dataset(spec.name, train, root, subset=subset)
        writer = _ShardWriter(out, split, shard_bytes)
        for i in range(len(ds)):
            writer.add(f"{i:08d}", _png(ds.images[i].numpy()), int(ds.labels[i]))
        writer.flush()
        splits[split] = writer
    h, w = spec.image_size
    stats = {"min": [h, w], "max": [h, w]}
    return _write_manifest(
        out, spec.name, list(spec.classes), spec.channels, spec.mean, spec.std, splits, stats, 0
    )


def pack_folder(
    src, out, *, max_side: int | None = None, shard_bytes: int = SHARD_BYTES, say=None
) -> dict:
    """An image folder (one sub-folder per class; train/ and test/ or val/ when it has them) as
    shards in `out`, each image's bytes as they are (JPEG, PNG; others and, with `max_side`,
    larger ones re-encoded). Files that do not decode are left out and counted."""
    _, train_dir, test_dir = _image_folder_splits(IMAGEFOLDER + str(src))
    out = Path(out)
    _prepare_out(out)
    classes = list(formats.image_files(train_dir))
    if not classes:
        raise UsageError(f"{src} holds no class folders of .png/.jpg images")
    splits, sizes, skipped, kept = {}, [], 0, []
    train_count = sum(len(v) for v in formats.image_files(train_dir).values())
    step = max(1, train_count // STAT_IMAGES)  # mean and std from images spread over the classes
    for split, folder in (("train", train_dir), ("test", test_dir)):
        if folder is None:
            continue
        writer = _ShardWriter(out, split, shard_bytes)
        seen = 0
        for label, cls in enumerate(classes):
            for path in formats.image_files(folder).get(cls, []):
                seen += 1
                try:
                    data = _shrunk(path.read_bytes(), max_side)
                    sizes.append(decode.image_size(data))
                except (decode.BadImage, OSError, ValueError) as e:
                    skipped += 1
                    if say is not None:
                        say(f"skipped {path}: {e}")
                    continue
                if split == "train" and seen % step == 0 and len(kept) < STAT_IMAGES:
                    kept.append(data)
                writer.add(f"{len(writer.labels) + len(writer._batch):08d}", data, label)
        writer.flush()
        splits[split] = writer
    mean, std = _statistics(kept)
    array = np.array(sizes or [[0, 0]])
    stats = {"min": array.min(0).tolist(), "max": array.max(0).tolist()}
    name = Path(src).resolve().name
    return _write_manifest(out, name, classes, 3, mean, std, splits, stats, skipped)


def _statistics(samples: list[bytes]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of (a spread-out sample of) the training images, each
    seen at 64 px as evaluation sees it."""
    if not samples:
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pixels = torch.stack([decode.eval_view(s, 3, 64, 64) for s in samples]).double() / 255
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3), correction=0).clamp(min=1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _write_manifest(out, name, classes, channels, mean, std, splits, sizes, skipped) -> dict:
    manifest = {
        "format": FORMAT,
        "name": name,
        "classes": classes,
        "channels": channels,
        "mean": list(mean),
        "std": list(std),
        "image_size": sizes,
        "skipped": skipped,
        "splits": {
            split: {
                "count": len(w.labels),
                "class_counts": np.bincount(w.labels, minlength=len(classes)).tolist(),
                "shards": w.shards,
            }
            for split, w in splits.items()
        },
    }
    write_json(out / MANIFEST, manifest)
    return manifest


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
            f"{folder} has no {split} split (its source had no {split}/ folder); hold out "
            "training images with --val-split, or pack a source with train/ and test/"
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
    """imagefolder:PATH read as it is (--stream): its files listed, none read. Mean and std are
    measured on a spread-out sample of up to STAT_IMAGES training images; the side is 224."""
    _, train_dir, test_dir = _image_folder_splits(name)
    folder = train_dir if train else test_dir
    if folder is None:
        raise DataError(
            f"{name}: expected train/ and test/ (or val/) sub-folders for a test split; split it "
            "that way, or hold out images with --val-split"
        )
    classes = list(formats.image_files(train_dir))
    by_class = formats.image_files(folder)
    files = [p for c in classes for p in by_class.get(c, [])]
    labels = [i for i, c in enumerate(classes) for _ in by_class.get(c, [])]
    # the statistics normalisation uses: the training split's (a test split's are not used)
    step = max(1, len(files) // STAT_IMAGES)
    mean, std = _statistics(_readable(files[::step][:STAT_IMAGES]) if train else [])
    n = len(files)
    entries = np.stack([np.arange(n), np.zeros(n, np.int64), np.full(n, -1)], 1).astype(np.int64)
    digest = hashlib.blake2b(
        repr([(str(p), p.stat().st_size) for p in files]).encode(), digest_size=12
    )
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
        digest.hexdigest(),
    )


def _readable(paths: list[Path]) -> list[bytes]:
    """The bytes of those of `paths` whose images decode (corrupt ones are training's to count)."""
    out = []
    for p in paths:
        try:
            data = p.read_bytes()
            decode.eval_view(data, 3, 64, 64)
            out.append(data)
        except (OSError, decode.BadImage):
            continue
    return out


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
