"""Fixtures for the data tests: an isolated cache, a tiny generated IDX dataset registered in the
catalog, and an HTTP server on 127.0.0.1 that serves it (nothing leaves this machine)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from resnetlab.data import catalog, sources

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)  # an error instead under RESNETLAB_TEST_STRICT=1, as CI runs (tests/skip_policy.py)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every data test gets its own user cache and no RESNETLAB_DATA: the real home is untouched."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    monkeypatch.setattr(sources, "RETRY_DELAY_S", 0.0)
    monkeypatch.setattr(sources, "TIMEOUT_S", 5.0)
    return cache / "resnetlab"


def idx_bytes(array: np.ndarray) -> bytes:
    magic = bytes([0, 0, 0x08, array.ndim])
    return magic + np.asarray(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Tiny:
    """A generated 3-class dataset of 8x8 images in the IDX format, registered as "tiny"."""

    spec: catalog.DatasetSpec
    files: dict[str, bytes]  # decompressed, by name
    arrays: dict[str, np.ndarray]

    def write(self, folder: Path, compressed: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / (name + ".gz" if compressed else name)).write_bytes(
                gzipped(data) if compressed else data
            )
        return folder

    def use_mirrors(self, monkeypatch, *mirrors: str) -> None:
        self.spec = replace(self.spec, mirrors=tuple(mirrors))
        monkeypatch.setitem(catalog.DATASETS, "tiny", self.spec)


@pytest.fixture
def tiny(monkeypatch) -> Tiny:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 3, 40, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 3, 12, dtype=np.uint8),
    }
    files = {name: idx_bytes(a) for name, a in arrays.items()}
    digests = [md5(files[n]) for n in files]
    layout = catalog._idx_layout(
        tuple(digests[:2]), tuple(digests[2:]), train_n=40, test_n=12, hw=8
    )
    spec = catalog.DatasetSpec(
        name="tiny",
        channels=1,
        image_size=(8, 8),
        classes=("a", "b", "c"),
        mean=(0.5,),
        std=(0.29,),
        layouts=(layout,),
        downloads=catalog._gz_downloads(layout, tuple(md5(gzipped(files[n])) for n in files)),
        mirrors=(
            "http://127.0.0.1:1/",
        ),  # nothing listens on port 1: offline unless a test serves it
        system_dirs=(),
        package="dataset-tiny",
    )
    monkeypatch.setitem(catalog.DATASETS, "tiny", spec)
    return Tiny(spec, files, arrays)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL): a loopback HTTP server serving `folder` for the test's duration."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = lambda *a, **k: _QuietHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def decoded_sizes(monkeypatch):
    """The (height, width) of each decode libjpeg-turbo is asked for, in order: data/decode.py's
    calls of simplejpeg.decode_jpeg (their output's size), and of _jpeg_region.crop, which
    decodes a box alone (the size of the whole image at the scale it was asked for)."""
    simplejpeg = pytest.importorskip("simplejpeg")
    from types import SimpleNamespace

    from resnetlab.data import decode

    sizes = []
    real = simplejpeg.decode_jpeg

    def spy(*args, **kwargs):
        array = real(*args, **kwargs)
        sizes.append(array.shape[:2])
        return array

    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", spy)
    region = decode._jpeg_region
    if region is not None:

        def crop(data, channels, eighths, *box):
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            sizes.append((-(-h * eighths // 8), -(-w * eighths // 8)))
            return region.crop(data, channels, eighths, *box)

        monkeypatch.setattr(decode, "_jpeg_region", SimpleNamespace(crop=crop))
    return sizes
