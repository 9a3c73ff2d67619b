"""Datasets in memory: `load_dataset(name)` gives uint8 images [N, C, H, W], int64 labels and
class names; `get_dataset_info(name)` what a model and a loader need to know beforehand."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resnetlab.data import formats, sources
from resnetlab.data.catalog import DATASETS, DatasetSpec
from resnetlab.errors import DataError, UsageError

IMAGEFOLDER = "imagefolder:"


@dataclass
class Dataset:
    name: str
    images: torch.Tensor  # uint8 [N, C, H, W], CPU
    labels: torch.Tensor  # int64 [N]
    classes: list[str] = field(default_factory=list)
    # an image folder's split: the version of its files (FolderFiles.digest); "" for other data
    digest: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise UsageError(
                f"Dataset images must be uint8 [N, C, H, W], not {self.images.dtype} {list(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise UsageError(
                f"Dataset labels must be int64 [{len(self.images)}], not {self.labels.dtype} {list(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:  # not the tensors: a dataset's repr is one short line
        _, c, h, w = self.images.shape
        return (
            f"Dataset({self.name!r}, {len(self):,} images of {c}x{h}x{w}, "
            f"{len(self.classes)} classes)"
        )

    def subset(self, indices) -> Dataset:
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if index.numel() and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise UsageError(f"subset indices must lie in [0, {len(self)}) for {self.name}")
        return Dataset(
            self.name, self.images[index], self.labels[index], list(self.classes), self.digest
        )

    def take(self, n: int, seed: int = 0) -> Dataset:
        """A seeded random subset of `n` examples (kept in their original order)."""
        if not 0 <= n <= len(self):
            raise UsageError(f"cannot take {n} examples from {self.name}, which has {len(self)}")
        return self.subset(_permutation(len(self), seed)[:n].sort().values)


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def split_dataset(ds: Dataset, val_size: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train part, validation part): a seeded split, disjoint, each in the original order."""
    if not 0 < val_size < len(ds):
        raise UsageError(
            f"a validation split of {val_size} needs 0 < size < {len(ds)} (the examples of {ds.name})"
        )
    perm = _permutation(len(ds), seed)
    return ds.subset(perm[val_size:].sort().values), ds.subset(perm[:val_size].sort().values)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    image_size: tuple[int, int]  # (H, W)
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1] units: for normalization
    std: tuple[float, ...]


def list_datasets() -> list[str]:
    """The built-in dataset names (any folder of images is also one: `imagefolder:PATH`)."""
    return list(DATASETS)


def _key(name: str) -> str:
    return re.sub(r"[-_ ]", "", name.lower())


def resolve_spec(name: str) -> DatasetSpec:
    """The built-in dataset called `name` (case, '-' and '_' do not matter), or UsageError."""
    if name.startswith("shards:"):  # data/shards.py: streamed by training alone
        raise UsageError(
            f"{name} is a packed set, which `resnetlab train` streams; this command reads a dataset "
            "into memory: pass --data with the images' folder (imagefolder:PATH) or a built-in one"
        )
    by_key = {_key(n): spec for n, spec in DATASETS.items()}
    if _key(name) in by_key:
        return by_key[_key(name)]
    close = difflib.get_close_matches(name.lower(), list(DATASETS), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UsageError(
        f"unknown dataset {name!r}; {hint}choose from {', '.join(DATASETS)} or imagefolder:PATH"
    )


def get_dataset_info(name: str) -> DatasetInfo:
    if name.startswith(IMAGEFOLDER):
        ds = load_dataset(name, train=True)
        pixels = ds.images.double().div_(255)
        mean = pixels.mean(dim=(0, 2, 3)) if len(ds) else torch.zeros(ds.images.shape[1])
        std = pixels.std(dim=(0, 2, 3), correction=0) if len(ds) else torch.ones(ds.images.shape[1])
        return DatasetInfo(
            name,
            ds.images.shape[1],
            tuple(ds.images.shape[2:]),
            len(ds.classes),
            list(ds.classes),
            tuple(round(float(m), 4) for m in mean),
            tuple(round(max(float(s), 1e-3), 4) for s in std),
        )
    spec = resolve_spec(name)
    return DatasetInfo(
        spec.name,
        spec.channels,
        spec.image_size,
        len(spec.classes),
        list(spec.classes),
        spec.mean,
        spec.std,
    )


def load_dataset(
    name: str = "fashion-mnist",
    train: bool = True,
    root: str | os.PathLike | None = None,
    *,
    subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """One split of a dataset, found, verified and parsed (see `resnetlab.data.sources` for where
    files are looked for; `root` is used alone when given). `subset`: a seeded random subset of at
    most that many examples (what a run's --subset takes of each split)."""
    if name.startswith(IMAGEFOLDER):
        dataset = _load_image_folder(name, train)
    else:
        spec = resolve_spec(name)
        dataset = _parse(spec, sources.open_split(spec, train, root))
    if subset is not None:
        dataset = dataset.take(min(subset, len(dataset)), seed=seed)
    return dataset


def _parse(spec: DatasetSpec, split: sources.SplitFiles) -> Dataset:
    n = len(spec.classes)
    fmt = split.layout.format
    parts = []
    for i, (buf, name) in enumerate(zip(split.buffers, split.names)):
        if fmt == "idx":
            if i == 0:  # IDX files come as (images, labels)
                parts.append(formats.read_idx_pair(buf, name, split.buffers[1], split.names[1], n))
        elif fmt in (
            "cifar10-bin",
            "cifar100-bin",
        ):  # CIFAR-100 records carry a coarse and a fine label byte
            parts.append(formats.read_cifar_binary(buf, name, 2 if fmt == "cifar100-bin" else 1, n))
        elif fmt in ("cifar10-py", "cifar100-py"):
            parts.append(
                formats.read_cifar_python(
                    buf, name, "fine_labels" if fmt == "cifar100-py" else "labels", n
                )
            )
        else:
            raise DataError(f"{spec.name}: unknown file format {fmt!r} in the dataset table")
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    expected = (spec.channels, *spec.image_size)
    if tuple(images.shape[1:]) != expected:
        raise DataError(
            f"{split.names[0]}: expected images of shape {list(expected)}, found {list(images.shape[1:])}; "
            f"this is not {spec.name}: delete it and run `resnetlab data fetch {spec.name}`"
        )
    return Dataset(
        spec.name,
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        list(spec.classes),
    )


# --- image folders --------------------------------------------------------------------------


def _image_folder_splits(name: str) -> tuple[Path, Path, Path | None]:
    """(folder, train folder, test folder or None): PATH/train and PATH/test (or PATH/val) when
    PATH has them, else PATH itself is the training split."""
    path = Path(name[len(IMAGEFOLDER) :]).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{name}: no such folder; give imagefolder:PATH with one sub-folder of images per class"
        )
    if (path / "train").is_dir():
        test = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
        return path, path / "train", test
    return path, path, None


def holds_out_test(name: str) -> bool:
    """Whether imagefolder:PATH's test split is held out of its class folders (it has no test/
    or val/ beside train/), and so is drawn again when files are added or removed."""
    return _image_folder_splits(name)[2] is None


DEFAULT_TEST_SPLIT = 0.1  # held out of a folder without test/: a tenth of each class


def held_out(counts: list[int], test_split: float, seed: int = 0) -> list[set[int]]:
    """Per class, the positions (in its sorted files) of its images held out for testing:
    `test_split` of them (a fraction below 1, else a count spread over the classes in
    proportion), at least one of a class of two or more, never all; a seeded draw, the same for
    the same folder and seed."""
    total = sum(counts)
    fraction = test_split if test_split < 1 else test_split / max(total, 1)
    rng = np.random.default_rng(seed)
    held = []
    for n in counts:
        k = min(max(int(round(n * fraction)), 1 if n >= 2 else 0), n - 1) if n else 0
        held.append(set(rng.permutation(n)[:k].tolist()))
    return held


@dataclass
class FolderFiles:
    """An image folder's files by split: each a list of (path, label); `held_out` tells whether
    the test split was drawn from the class folders (the folder has no test/)."""

    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]]
    empty: list[str]  # class folders without images, left out
    held_out: bool
    test_dir: Path | None
    root: Path  # PATH of imagefolder:PATH

    def digest(self, split: str) -> str:
        """The version of a split's files, from this listing (no second one): for each file, in
        order, its path relative to the folder, its label and its size in bytes. Relative, so
        the folder gives the same digest wherever it is mounted (each --nproc process compares
        its own); labels, so an image moved to another class or a class added tells; sizes, so
        an image replaced by another of another size tells, without reading every image at the
        start of a run (one rewritten at the same size does not). data/identity.py compares it;
        the recipe is the one every run on an image folder has recorded as its `test_split`."""
        h = hashlib.blake2b(digest_size=12)
        for path, label in self.splits[split]:
            name = path.relative_to(self.root).as_posix()
            h.update(f"{name}\0{label}\0{path.stat().st_size}\n".encode())
        return h.hexdigest()


def image_folder_files(name: str, test_split: float | None = None, seed: int = 0) -> FolderFiles:
    """The files of imagefolder:PATH by split, from one listing of each class folder: PATH/train
    and PATH/test (or val) when it has them, else a seeded, stratified `test_split` (default
    DEFAULT_TEST_SPLIT) of each class of PATH held out for testing. Packing, --stream and the
    in-memory loader all split a folder here, so they hold out the same images."""
    root, train_dir, test_dir = _image_folder_splits(name)
    found, empty = formats.scan_classes(train_dir)
    classes = list(found)
    if test_dir is not None:
        if test_split is not None:
            raise UsageError(
                f"{name} has a {test_dir.name}/ folder, its test split; --test-split is for a "
                "folder of class folders only"
            )
        by_class, _ = formats.scan_classes(test_dir)
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DataError(
                f"{test_dir}: class folders {unknown} are not among the training classes "
                f"{classes}; rename or remove them"
            )
        train = [(p, i) for i, c in enumerate(classes) for p in found[c]]
        test = [(p, i) for i, c in enumerate(classes) for p in by_class.get(c, [])]
        return FolderFiles(classes, {"train": train, "test": test}, empty, False, test_dir, root)
    test_split = DEFAULT_TEST_SPLIT if test_split is None else test_split
    if not test_split > 0:
        raise UsageError("--test-split must be a count (1 or more) or a fraction in (0, 1)")
    total = sum(len(v) for v in found.values())
    if test_split >= 1 and test_split >= total:
        raise UsageError(
            f"--test-split {test_split:g} is not fewer than the {total} images of {name}; hold "
            "out fewer, or a fraction (0.2)"
        )
    held = held_out([len(found[c]) for c in classes], test_split, seed)
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for i, c in enumerate(classes):
        for j, p in enumerate(found[c]):
            splits["test" if j in held[i] else "train"].append((p, i))
    return FolderFiles(classes, splits, empty, True, None, root)


def describe_held_out(files: FolderFiles, name: str, test_split: float | None, seed: int) -> str:
    """The line that says which test split a folder without test/ was given."""
    test_split = DEFAULT_TEST_SPLIT if test_split is None else test_split
    n_test, n = len(files.splits["test"]), sum(len(v) for v in files.splits.values())
    what = f"{test_split:g} of each class" if test_split < 1 else f"about {test_split:g}"
    return (
        f"{name} has no test/ folder: {n_test:,} of its {n:,} images held out as the test split "
        f"({what}, stratified, seed {seed})"
    )


def _load_image_folder(name: str, train: bool) -> Dataset:
    files = image_folder_files(name)
    if train:
        formats.warn_empty(Path(name[len(IMAGEFOLDER) :]), files.empty)
        if files.held_out:
            formats.say_warning(describe_held_out(files, name, None, 0))
    everything = [p for split in files.splits.values() for p, _ in split]
    channels, size = formats.scan_image_tree(everything)
    split = "train" if train else "test"
    images, labels = formats.read_image_files(files.splits[split], channels, size)
    return Dataset(
        name, torch.from_numpy(images), torch.from_numpy(labels), files.classes, files.digest(split)
    )


# --- status and fetching, for `resnetlab data list` / `data fetch` -------------------------


def dataset_status(name: str, root: str | os.PathLike | None = None) -> dict:
    """Where each split of a dataset was found and whether it verified; downloads nothing."""
    spec = resolve_spec(name)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            files = sources.open_split(spec, train, root, download=False, write=False)
            splits[split] = _verified(files, _parse(spec, files))
        except DataError as e:
            missing = isinstance(e, sources.DataMissingError)
            splits[split] = {"status": "missing" if missing else "bad", "error": str(e)}
    return {"name": spec.name, "splits": splits}


def fetch_dataset(
    name: str, root: str | os.PathLike | None = None, mirrors: tuple[str, ...] | None = None
) -> dict:
    """Download (when missing) and verify both splits of a built-in dataset."""
    if name.startswith(IMAGEFOLDER):
        raise UsageError(f"{name} is a local folder: there is nothing to fetch")
    spec = resolve_spec(name)
    result = {"name": spec.name, "splits": {}}
    for split, files in zip(("train", "test"), sources.fetch(spec, root, mirrors)):
        result["splits"][split] = _verified(files, _parse(spec, files))
    return result


def _verified(files, ds: Dataset) -> dict:
    """A split's line in dataset_status and fetch_dataset: its files, verified, and examples."""
    return {
        "status": "ok",
        "check": files.check,
        "folder": str(files.folder),
        "source": files.source,
        "files": files.names,
        "examples": len(ds),
    }


def format_status(statuses: list[dict]) -> str:
    """`resnetlab data list` as a table: one row per split, then the error of each bad or missing one."""
    rows = [("dataset", "split", "status", "check", "examples", "found in")]
    notes = []
    for st in statuses:
        for split, s in st["splits"].items():
            where = f"{s['folder']} ({s['source']})" if s["status"] == "ok" else "-"
            rows.append(
                (
                    st["name"],
                    split,
                    s["status"],
                    s.get("check", "-"),
                    f"{s['examples']:,}" if "examples" in s else "-",
                    where,
                )
            )
            if s["status"] == "bad":
                notes.append(s["error"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if any(s["status"] == "missing" for st in statuses for s in st["splits"].values()):
        notes.append(
            "missing: `resnetlab data fetch NAME` downloads one (Fashion-MNIST: apt-get install dataset-fashion-mnist)"
        )
    return "\n".join(lines + notes)
