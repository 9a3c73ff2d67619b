"""Where a dataset's files are looked for, how they are verified, cached and downloaded.

Search order (the first folder holding every file of the split wins):
  1. `root` (`--data-dir`), alone: no other folder and no download;
  2. `$RESNETLAB_DATA`;
  3. the user cache, `$XDG_CACHE_HOME/resnetlab` or `~/.cache/resnetlab`;
  4. system folders (Debian's `dataset-fashion-mnist` installs /usr/share/datasets/fashion-mnist);
  5. a download into the user cache: a temporary file, md5-checked, renamed into place,
     retried across mirrors.
In folders 1-2 a dataset may sit in a sub-folder named after it or directly in the folder.

Each file is verified once (md5 of its decompressed bytes, or exact size where no official digest
exists) and remembered in a stamp, `<cache>/verified.json`, keyed by path, size and mtime, so a
second load hashes nothing. A compressed file (`.gz`, a CIFAR `.tar.gz`) is decompressed once into
the user cache; afterwards loading is a plain read of the verified copy.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnetlab.data.catalog import DatasetSpec, Download, FileSpec, Layout
from resnetlab.errors import DataError, UsageError
from resnetlab.fileio import atomic_open, write_bytes, write_json

DOWNLOAD_ATTEMPTS = 2  # per mirror: one retry covers a dropped connection
RETRY_DELAY_S = 1.0
TIMEOUT_S = 30.0
_CHUNK = 1 << 20


class DataMissingError(DataError):
    """No folder searched holds the split (and no download was allowed or possible)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnetlab"


def search_folders(
    spec: DatasetSpec, root: str | os.PathLike | None = None
) -> list[tuple[Path, str]]:
    """[(folder, what it is)] in the order they are searched."""
    if root is not None:
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise UsageError(f"--data-dir {root} is a file; give the folder that holds the dataset")
        return [(root / spec.name, "--data-dir"), (root, "--data-dir")]
    folders = []
    env = os.environ.get("RESNETLAB_DATA")
    if env:
        folders += [
            (Path(env).expanduser() / spec.name, "RESNETLAB_DATA"),
            (Path(env).expanduser(), "RESNETLAB_DATA"),
        ]
    folders.append((cache_dir() / spec.name, "user cache"))
    folders += [(Path(d), "system folder") for d in spec.system_dirs]
    return folders


@dataclass
class SplitFiles:
    """The verified, decompressed bytes of one split's files and where they came from."""

    layout: Layout
    buffers: list[np.ndarray]  # uint8, writable, one per FileSpec of the split
    names: list[str]  # the file each buffer came from, for messages
    folder: Path
    source: str  # which step of the search found it ("--data-dir", "user cache", ...)
    check: (
        str  # the weakest check of its files: "md5" (official digest), "archive" (unpacked from an
    )
    # md5-verified archive) or "size" (exact size and parsing: no official digest exists)


# --- stamps: what was verified, so it is not hashed again -----------------------------------


class _Stamps:
    def __init__(self, *, write: bool = True) -> None:
        self.path, self.write = cache_dir() / "verified.json", write

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def check(self, path: Path, spec: FileSpec) -> str | None:
        """How `path` was verified ("md5", "archive", "size"), if it is unchanged since; else None."""
        entry = self._read().get(str(path.resolve()))
        st = path.stat()
        if not entry or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            return None
        if spec.md5 is not None:
            return "md5" if entry.get("md5") == spec.md5 else None
        return entry.get("check")

    def record(self, path: Path, md5: str, check: str) -> None:
        if not self.write:  # a read-only look (`resnetlab data list`): verified again next time
            return
        st = path.stat()
        stamps = self._read()  # re-read: another process may have added entries meanwhile
        stamps[str(path.resolve())] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "md5": md5,
            "check": check,
        }
        try:
            write_json(self.path, stamps)
        except OSError:
            pass  # a read-only cache only costs a re-hash next time


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bad_file(path: Path | str, expected: str, found: str) -> DataError:
    return DataError(
        f"{path}: expected {expected}, found {found}; delete it and run "
        f"`resnetlab data fetch` (or place a good copy)"
    )


def _check_bytes(
    data: bytes | None, path: Path, spec: FileSpec, md5: str | None = None
) -> tuple[str, str]:
    """(md5, how checked) of a file's decompressed bytes (`data`, or the file itself), or DataError."""
    size = len(data) if data is not None else path.stat().st_size
    if spec.size is not None and size != spec.size:
        what = "truncated" if size < spec.size else "too long"
        raise _bad_file(
            path,
            f"{spec.size:,} bytes{' once decompressed' if data is not None else ''}",
            f"{size:,} ({what})",
        )
    md5 = md5 or (hashlib.md5(data).hexdigest() if data is not None else _md5_file(path))
    if spec.md5 is not None and md5 != spec.md5:
        raise _bad_file(
            path,
            f"md5 {spec.md5}{' of the decompressed bytes' if data is not None else ''}",
            f"{md5} (corrupted or another release)",
        )
    return md5, "md5" if spec.md5 is not None else "size"


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise _bad_file(path, "a complete gzip file", f"a damaged one ({e})") from None


def _read_verified(
    spec: DatasetSpec, fspec: FileSpec, path: Path, stamps: _Stamps
) -> tuple[np.ndarray, str]:
    """The decompressed bytes of `path` (found for `fspec`) once they verify, and how they did."""
    if path.name == Path(fspec.path).name + ".gz":
        copy = cache_dir() / spec.name / fspec.path  # the decompressed copy, read from then on
        if stamps.check(path, fspec) and copy.exists() and (how := stamps.check(copy, fspec)):
            return np.fromfile(copy, dtype=np.uint8), how
        data = _gunzip(path)
        md5, how = _check_bytes(data, path, fspec)
        stamps.record(path, md5, how)
        if not stamps.write:  # a read-only look writes no decompressed copy either
            return np.frombuffer(bytearray(data), dtype=np.uint8), how
        try:
            write_bytes(copy, data)
            stamps.record(copy, md5, how)
            if path.parent == copy.parent:  # a download's .gz beside its copy is redundant
                path.unlink()
        except OSError:
            pass  # no writable cache: decompress on every load
        return np.frombuffer(bytearray(data), dtype=np.uint8), how
    how = stamps.check(path, fspec)
    if how is None:
        md5, how = _check_bytes(None, path, fspec)
        stamps.record(path, md5, how)
    return np.fromfile(path, dtype=np.uint8), how


def _extract(spec: DatasetSpec, download: Download, archive: Path, stamps: _Stamps) -> None:
    """Verify an archive's md5 and unpack the members the dataset needs into the user cache."""
    whole = FileSpec(download.filename, download.md5, None)
    if not stamps.check(archive, whole):
        md5, _ = _check_bytes(None, archive, whole)
        stamps.record(archive, md5, "md5")
    members = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if (
                    name in download.provides and member.isfile()
                ):  # by exact name: no path from the archive is trusted
                    members[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise _bad_file(archive, "a complete tar archive", f"a damaged one ({e})") from None
    missing = sorted(set(download.provides) - set(members))
    if missing:
        raise _bad_file(archive, f"members {missing}", "an archive without them")
    target = cache_dir() / spec.name
    try:
        for name, data in members.items():
            write_bytes(target / name, data)
            stamps.record(target / name, hashlib.md5(data).hexdigest(), "archive")
    except OSError as e:
        raise DataError(
            f"cannot unpack {archive} into {target} ({e}); make the cache writable "
            f"or point XDG_CACHE_HOME at a writable folder"
        ) from None
    if archive.parent == target:
        archive.unlink()


# --- finding --------------------------------------------------------------------------------


def _find_in(
    folder: Path, spec: DatasetSpec, train: bool
) -> tuple[Layout, list[Path]] | Download | list[str]:
    """What `folder` holds of a split: (layout, the files), an archive to unpack, or the names
    of the files it lacks (empty when it holds none of them)."""
    lacking = []
    for layout in spec.layouts:
        found, missing = [], []
        for f in spec.files(train, layout):
            path = next(
                (p for p in (folder / f.path, folder / (f.path + ".gz")) if p.is_file()), None
            )
            if path is None:
                missing.append(f.path)
            else:
                found.append(path)
        if not missing:
            return layout, found
        if found:
            lacking = missing
    needed = {f.path for f in spec.files(train)}
    for download in spec.downloads:
        if (
            download.is_archive
            and needed <= set(download.provides)
            and (folder / download.filename).is_file()
        ):
            return download
    return lacking


def _locate(spec: DatasetSpec, train: bool, root) -> tuple[Path, str, object] | list[str]:
    """(folder, source, what it holds) of the first folder with the split, or notes on each folder tried."""
    notes = []
    for folder, source in search_folders(spec, root):
        found = _find_in(folder, spec, train)
        if isinstance(found, list):
            notes.append(f"{folder} ({source}{'; lacks ' + ', '.join(found) if found else ''})")
        else:
            return folder, source, found
    return notes


def open_split(
    spec: DatasetSpec,
    train: bool,
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    mirrors: tuple[str, ...] | None = None,
    write: bool = True,
) -> SplitFiles:
    """Find, verify and read one split's files, downloading them into the cache when missing
    (never when `root` is given). Raises DataError naming what was tried and what to do.
    `write=False` (with download=False) only reads: no decompressed copy, no verification stamp
    is written (a CIFAR archive not yet unpacked is still unpacked into the cache)."""
    located = _locate(spec, train, root)
    download_errors: list[str] = []
    if isinstance(located, list) and download and root is None:
        download_errors = _download_split(
            spec, train, cache_dir() / spec.name, mirrors or spec.mirrors
        )
        located = _locate(spec, train, root)
    if isinstance(located, list):
        raise DataMissingError(
            _missing_message(spec, train, root, located, download_errors, download)
        )
    folder, source, found = located
    stamps = _Stamps(write=write)
    if isinstance(found, Download):  # an archive: unpack into the cache, then read from there
        _extract(spec, found, folder / found.filename, stamps)
        folder, (layout, paths) = (
            cache_dir() / spec.name,
            _find_in(cache_dir() / spec.name, spec, train),
        )
    else:
        layout, paths = found
    buffers, checks = [], []
    for fspec, path in zip(spec.files(train, layout), paths):
        buf, how = _read_verified(spec, fspec, path, stamps)
        buffers.append(buf)
        checks.append(how)
    weakest = next(c for c in ("size", "archive", "md5") if c in checks)
    return SplitFiles(layout, buffers, [str(p) for p in paths], folder, source, weakest)


def _missing_message(
    spec: DatasetSpec,
    train: bool,
    root,
    tried: list[str],
    download_errors: list[str],
    download: bool,
) -> str:
    split = "training" if train else "test"
    files = [f.path for f in spec.files(train)]
    archives = [d.filename for d in spec.downloads if d.is_archive]
    place = (
        f"{' or '.join(archives)} (or its files {', '.join(files)})"
        if archives
        else f"{', '.join(files)} (each may be .gz)"
    )
    parts = [f"{spec.name}: {split} files not found; looked in {'; '.join(tried)}"]
    if download_errors:
        parts.append(f"download failed ({'; '.join(download_errors)})")
    elif root is not None:
        parts.append(
            f"--data-dir is used alone (no other folder, no download); "
            f"run `resnetlab data fetch {spec.name} --data-dir {root}` when online"
        )
    elif not download:
        parts.append(f"run `resnetlab data fetch {spec.name}` to download it")
    if spec.package:
        parts.append(f"install it with `apt-get install {spec.package}`")
    where = root if root is not None else cache_dir() / spec.name
    parts.append(f"or place {place} in {where}")
    return "; ".join(parts)


# --- downloading ----------------------------------------------------------------------------


def _needed_downloads(spec: DatasetSpec, train: bool) -> list[Download]:
    needed = {f.path for f in spec.files(train)}
    return [d for d in spec.downloads if needed & set(d.provides)]


def _download_split(spec: DatasetSpec, train: bool, target: Path, mirrors) -> list[str]:
    """Download what the split needs into `target`; returns the errors met ([] on success).
    Stops at the first file no mirror gives: the rest would fail the same way."""
    for item in _needed_downloads(spec, train):
        if not (target / item.filename).is_file():
            errors = _download(item, mirrors, target / item.filename)
            if errors:
                return errors
    return []


def _download(item: Download, mirrors, dest: Path) -> list[str]:
    """Fetch one file into `dest` from the first mirror that gives the right bytes; returns []
    on success, else one error per mirror."""
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + item.filename
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                _stream_verified(url, item.md5, dest)
                return []
            except _ChecksumMismatch as e:
                error, retry = (
                    str(e),
                    False,
                )  # this mirror serves other bytes: retrying will not help
            except urllib.error.HTTPError as e:
                error, retry = f"HTTP {e.code}", e.code >= 500
            except (urllib.error.URLError, OSError) as e:
                error, retry = str(getattr(e, "reason", e)), True
            if not retry or attempt == DOWNLOAD_ATTEMPTS:
                errors.append(f"{url}: {error}{f' ({attempt} tries)' if attempt > 1 else ''}")
                break
            time.sleep(RETRY_DELAY_S * attempt)
    return errors


class _ChecksumMismatch(Exception):
    pass


def _stream_verified(url: str, md5: str, dest: Path) -> None:
    """Stream `url` to a temporary file beside `dest`; rename it into place only if its md5 matches."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = _progress_bar(total, dest.name)
        digest, size = hashlib.md5(), 0
        try:
            with atomic_open(dest, "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if total is not None and size != total:
                    raise _ChecksumMismatch(f"got {size:,} of {total:,} bytes")
                if digest.hexdigest() != md5:
                    raise _ChecksumMismatch(f"md5 {digest.hexdigest()}, expected {md5}")
        finally:
            if bar is not None:
                bar.close()


def _progress_bar(total: int | None, name: str):
    """A tqdm bar on a terminal only (logs and pipes stay clean)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
    )


def fetch(
    spec: DatasetSpec, root: str | os.PathLike | None = None, mirrors: tuple[str, ...] | None = None
) -> list[SplitFiles]:
    """Make both splits available (into `root`/NAME when given, else the user cache) and verify them."""
    if root is not None:
        for train in (True, False):
            if isinstance(_locate(spec, train, root), list):
                errors = _download_split(
                    spec, train, Path(root).expanduser() / spec.name, mirrors or spec.mirrors
                )
                if errors:
                    tried = [
                        f"{folder} ({source})" for folder, source in search_folders(spec, root)
                    ]
                    raise DataMissingError(_missing_message(spec, train, root, tried, errors, True))
    return [open_split(spec, train, root, mirrors=mirrors) for train in (True, False)]
