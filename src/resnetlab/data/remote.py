"""Packed sets anywhere fsspec reaches: `shards:https://host/set`, `shards:s3://bucket/set`, ...
read through a bounded local cache.

    train = open_stream("shards:https://host/set", True, cache="~/.cache/resnetlab/remote-shards",
                        cache_size="20G")   # data/shards.py: the manifest fetched, no shard yet

The manifest is fetched first and checked as untrusted input (data/manifest.py). A shard is
fetched the first time a sample of it is read, into the cache folder under its sha256 (two sets
sharing a shard share its copy), written to a temporary name, checked against the manifest's
size and sha256 and only then renamed into place; a shard that differs is refused in one line
naming it (a copy in the cache is trusted by its name and size afterwards: it was checked
once, on arrival). The cache holds at most `cache_size` bytes: before a shard is written, the least
recently used ones (by mtime, touched on use) are removed to make room. One lock file
serialises those decisions and the downloads, so every process on the machine (DataLoader
workers, ranks, other runs) can share a cache and its disk use stays under the bound (the price:
one download at a time per cache).

The loader hands its batches to `reading`, which looks ahead and fetches the next
shards in a thread while the current ones are read. Transient errors (connection refused or
reset, a timeout, HTTP 5xx) are retried with exponential backoff; then one DataError line names
the shard.

http(s) goes through the standard library (urllib): no extra package, and nothing of an asyncio
loop (which fsspec's HTTPFileSystem runs on aiohttp) carried into forked DataLoader workers. Every
other protocol goes through fsspec, which needs its package for that protocol (s3fs, gcsfs, ...).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import http.client
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from resnetlab.data.manifest import MAX_MANIFEST_BYTES, SHA256, parse_manifest
from resnetlab.errors import DataError, ResnetlabError, UsageError
from resnetlab.fileio import atomic_open

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
MANIFEST = "manifest.json"
DEFAULT_CACHE_SIZE = "20G"
ATTEMPTS = 6  # 0.5 + 1 + 2 + 4 + 8 s of backoff: a server restarting for ~15 s is ridden out
BACKOFF_S = 0.5
TIMEOUT_S = 30.0
AHEAD = 2  # shards fetched ahead of the ones being read
LOOKAHEAD_BATCHES = 256  # at most this many batches of keys read ahead to find them
TOUCH_S = 1.0  # a shard in use has its mtime (its place in the LRU order) renewed this often
CHUNK = 1 << 20
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def is_url(path) -> bool:
    """Whether a shards: location is a URL (scheme://...) rather than a local folder (a Path
    never is: Path would fold a URL's "//" into "/")."""
    return isinstance(path, str) and bool(URL.match(path))


def parse_size(text: str) -> int:
    """Bytes in a size such as 500M, 20G or 1.5T (binary units); UsageError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--cache-size takes a size such as 500M or 20G, not {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def default_cache() -> Path:
    from resnetlab.data.sources import cache_dir

    return cache_dir() / "remote-shards"


class _Transient(Exception):
    """A failure worth another try (the connection, a timeout, a server error)."""


class _Refused(Exception):
    """A failure another try will not mend (not found, forbidden, other bytes)."""


def _open(url: str):
    """A readable binary stream of `url`; _Transient or _Refused on failure."""
    try:
        if url.startswith(("http://", "https://")):
            return urllib.request.urlopen(url, timeout=TIMEOUT_S)
        return _fsspec_open(url)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise _Refused(f"HTTP {e.code} {e.reason}; check the URL and the server") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise _Refused(f"{e.strerror or e}; check the URL") from None
    except urllib.error.URLError as e:
        raise _Transient(str(e.reason)) from None
    except (OSError, http.client.HTTPException) as e:
        raise _Transient(str(e) or type(e).__name__) from None


def _fsspec_open(url: str):
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError:
        raise UsageError(
            f"shards:{url} is read through fsspec: pip install 'resnetlab[stream]'"
        ) from None
    protocol = url.split("://", 1)[0]
    try:
        return fsspec.open(url, "rb").open()
    except ImportError:
        package = known_implementations.get(protocol, {}).get("class", "").split(".")[0]
        raise UsageError(
            f"shards:{url} needs fsspec's {protocol}:// support: pip install {package or protocol}"
        ) from None
    except ValueError as e:  # fsspec: "Protocol not known"
        raise UsageError(f"shards:{url}: fsspec cannot read {protocol}:// ({e})") from None


def _read(stream, n: int) -> bytes:
    try:
        return stream.read(n)
    except (OSError, http.client.HTTPException) as e:
        raise _Transient(str(e) or type(e).__name__) from None


def _check_length(stream, size: int) -> None:
    """_Refused when an HTTP response declares a length other than `size`: a whole other file
    (an HTML error or login page sent with 200), which no retry mends. A body that ends before
    the length it declared is a connection cut short, found (and retried) after reading."""
    declared = getattr(stream, "headers", {}).get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) != size:
        raise _Refused(
            f"the server sends {int(declared):,} bytes, not the {size:,} {MANIFEST} gives (another "
            "file, such as an error page?); check the URL and the server"
        )


def _retrying(what: str, attempts: int, backoff_s: float, fn):
    """fn(), tried `attempts` times with exponential backoff on transient failures; one
    DataError line naming `what` at the end."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except _Refused as e:
            raise DataError(f"cannot fetch {what}: {e}") from None
        except _Transient as e:
            if attempt == attempts:
                raise DataError(
                    f"cannot fetch {what} ({e}, {attempt} tries); check the server and try again "
                    "(a run it stopped continues with --resume)"
                ) from None
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def fetch_manifest(url: str) -> dict:
    """The manifest of the set at `url`, fetched (with retries) and checked."""
    where = f"{url}/{MANIFEST}"

    def get() -> bytes:
        data = bytearray()  # read by chunks: no buffer of the size bound allocated up front
        with contextlib.closing(_open(where)) as stream:
            while len(data) <= MAX_MANIFEST_BYTES and (more := _read(stream, CHUNK)):
                data += more
        return bytes(data)

    return parse_manifest(_retrying(where, ATTEMPTS, BACKOFF_S, get), where)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RemoteShards:
    """The shards of one split at `url`, read through the cache folder `cache` of at most
    `limit` bytes. Picklable (DataLoader workers get a copy); the look-ahead thread lives in the
    process that calls `reading`."""

    def __init__(self, url: str, shards: list[dict], cache: Path, limit: int) -> None:
        self.url, self.cache, self.limit = url.rstrip("/"), Path(cache), limit
        self.shards = [(s["file"], int(s["bytes"]), s["sha256"]) for s in shards]
        self.attempts, self.backoff_s = ATTEMPTS, BACKOFF_S
        biggest = max((b for _, b, _ in self.shards), default=0)
        if biggest > limit:
            raise UsageError(
                f"--cache-size {limit:,} bytes cannot hold a shard of {self.url} ({biggest:,} "
                "bytes); give a larger one"
            )
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--cache {self.cache} cannot be made ({e.strerror or e})") from None
        self._init_local()

    def _init_local(self) -> None:
        self._queue: queue.Queue | None = None
        self._protect: frozenset[int] = frozenset()
        # shards this process could not fetch, with the error: every sample of a shard asks for
        # it, and each would otherwise fetch it again (retries and backoff included)
        self._failed: dict[int, str] = {}

    def __getstate__(self):
        local = ("_queue", "_protect", "_failed")
        return {k: v for k, v in self.__dict__.items() if k not in local}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._init_local()

    def name(self, f: int) -> str:
        return f"{self.url}/{self.shards[f][0]}"

    def local_path(self, f: int) -> Path:
        sha = self.shards[f][2]
        assert SHA256.fullmatch(sha)  # checked with the manifest: the name stays in the cache
        return self.cache / f"{sha}.tar"

    # --- reading --------------------------------------------------------------------------

    def read(self, f: int, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of shard f, fetched into the cache first when absent."""
        if f in self._failed:
            raise DataError(self._failed[f])
        for _ in range(3):  # another process may evict it between the check and the open
            try:
                path = self.ensure(f)
            except ResnetlabError as e:  # a full disk: what the loader reports as one line
                self._failed[f] = str(e)
                raise DataError(str(e)) from None
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    return fh.read(size)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise DataError(
                    f"cannot read {path} (cached {self.name(f)}): {e.strerror or e}"
                ) from None
        raise DataError(
            f"shard {self.name(f)} keeps leaving the cache {self.cache}: raise --cache-size"
        )

    def cached(self, f: int) -> Path | None:
        """The cached copy of shard f (its LRU time renewed), or None."""
        path = self.local_path(f)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if st.st_size != self.shards[f][1]:
            return None
        if time.time() - st.st_mtime > TOUCH_S:
            with contextlib.suppress(OSError):
                os.utime(path)
        return path

    def ensure(self, f: int, protect: frozenset[int] = frozenset()) -> Path | None:
        """Shard f's cached copy, fetched when absent. With `protect` (the look-ahead's shards
        in use), none of those is evicted for it: None when there is no room without."""
        path = self.cached(f)
        if path is not None:
            return path
        try:
            with _locked(self.cache / ".lock"):
                path = self.cached(f)  # fetched by another process meanwhile
                if path is not None:
                    return path
                keep = {self.local_path(i).name for i in protect}
                if not self._make_room(self.shards[f][1], keep):
                    return None
                self._download(f)
        except OSError as e:  # the cache's disk full, read-only or gone (the download's are not)
            cause = os.strerror(e.errno) if e.errno else str(e)
            raise DataError(
                f"cannot write shard {self.name(f)} into the cache {self.cache} ({cause}); give "
                "another --cache, or free space there, or a smaller --cache-size"
            ) from None
        return self.local_path(f)

    def _make_room(self, need: int, keep: set[str]) -> bool:
        """Remove the least recently used cached shards (none named in `keep`) until `need`
        more bytes fit; False if they cannot. Called under the lock: no download is under way,
        so a temporary file left is one a killed process left, and goes."""
        files = []
        for entry in os.scandir(self.cache):
            if entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif entry.name.endswith(".tar") and SHA256.fullmatch(entry.name[:-4]):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    files.append((st.st_mtime, st.st_size, entry.name, entry.path))
        used = sum(size for _, size, _, _ in files)
        for _, size, name, path in sorted(files):
            if used + need <= self.limit:
                break
            if name in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            used -= size
        return used + need <= self.limit

    def _download(self, f: int) -> None:
        file, size, sha = self.shards[f]
        url = self.name(f)

        def get() -> None:
            digest, got = hashlib.sha256(), 0
            with contextlib.closing(_open(url)) as stream, atomic_open(self.local_path(f)) as out:
                _check_length(stream, size)
                while chunk := _read(stream, CHUNK):
                    got += len(chunk)
                    if got > size:
                        raise _Refused(
                            f"more than the {size:,} bytes {MANIFEST} gives; upload the set again"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                if got < size:  # the connection ended early
                    raise _Transient(f"{got:,} of {size:,} bytes")
                if digest.hexdigest() != sha:
                    raise _Refused(
                        f"its sha256 differs from {MANIFEST} (refused, nothing cached): the copy "
                        "served is damaged or of another version; upload the set again"
                    )

        _retrying(f"shard {url}", self.attempts, self.backoff_s, get)

    # --- looking ahead ---------------------------------------------------------------------

    def reading(self, batches, entries: np.ndarray):
        """`batches` (lists of (epoch, sample index, side) keys) passed on unchanged, while the
        shards of the batches ahead are fetched in a thread: up to AHEAD more than the shards
        of the next batch, none of the shards in use evicted for them."""
        files = entries[:, 0]
        todo = self._start()
        ahead: collections.deque = collections.deque()
        refs: collections.Counter = collections.Counter()
        recent: collections.deque = collections.deque(maxlen=32)  # handed out, maybe unread
        queued: set[int] = set()
        source, more = iter(batches), True
        while True:
            while (
                more
                and len(ahead) < LOOKAHEAD_BATCHES
                and (not ahead or len(refs) < len(ahead[0][1]) + AHEAD)
            ):
                keys = next(source, None)
                if keys is None:
                    more = False
                    break
                shards = list(dict.fromkeys(files[[i for _, i, _ in keys]].tolist()))
                ahead.append((keys, shards))
                refs.update(shards)
                for s in shards:
                    if s not in queued:
                        queued.add(s)
                        todo.put(s)
            if not ahead:
                return
            keys, shards = ahead.popleft()
            refs.subtract(shards)
            refs += collections.Counter()  # drops the zeros
            recent.append(shards)
            self._protect = frozenset(refs) | frozenset(s for r in recent for s in r)
            yield keys

    def _start(self) -> queue.Queue:
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._fetch_ahead, args=(self._queue,), daemon=True).start()
        else:  # a new pass: what the last one queued and did not reach is dropped
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
        return self._queue

    def _fetch_ahead(self, todo: queue.Queue) -> None:
        while True:
            f = todo.get()
            for _ in range(200):  # no room yet: wait (up to 10 s) for the shards in use to move on
                try:
                    if self.ensure(f, self._protect) is not None:
                        break
                except Exception:  # the reader fetches it again and reports what fails
                    break
                time.sleep(0.05)


def open_remote(
    url: str, train: bool, *, cache=None, cache_size: str | int | None = None
) -> tuple[dict, list[dict], RemoteShards]:
    """(manifest, the split's shards, their reader through the cache) of the train or test split
    of the packed set at `url` (`cache`, default the user cache's remote-shards/; `cache_size`,
    default 20G); data/shards.py makes it a StreamSplit."""
    limit = (
        cache_size if isinstance(cache_size, int) else parse_size(cache_size or DEFAULT_CACHE_SIZE)
    )
    url = url.rstrip("/")
    manifest = fetch_manifest(url)
    split = "train" if train else "test"
    if split not in manifest["splits"]:
        raise DataError(f"{url} has no {split} split; hold out training images with --val-split")
    shards = manifest["splits"][split]["shards"]
    cache = Path(cache).expanduser() if cache else default_cache()
    return manifest, shards, RemoteShards(url, shards, cache, limit)


__all__ = ["RemoteShards", "fetch_manifest", "is_url", "open_remote", "parse_size"]
