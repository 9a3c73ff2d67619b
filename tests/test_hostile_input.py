"""Hostile and malformed input, tried by the thousand (hypothesis, derandomized: the same cases on
every run). Every parser either returns well-formed data or raises one of resnetlab's own one-line
errors; never another exception, never a hang, never memory beyond a stated bound.

Parsers tried: IDX, CIFAR binary, CIFAR Python (pickles), image folders, the weights reader, the
checkpoint loader and `predict`'s image reader.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resnetlab.errors import CheckpointError, DataError, ResnetlabError, UsageError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


# Seeded and repeatable: hypothesis draws the same cases on every run (derandomize), with no deadline
# (a busy CI machine), no example database, and no health check against slow generation.
def fuzz(n: int):
    return settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


TRIED: dict[
    str, list[int]
] = {}  # per parser: [inputs tried, refused with a one-line error] (docs/robustness.md)


def count(parser: str) -> None:
    TRIED.setdefault(parser, [0, 0])[0] += 1
    count.last = parser


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if TRIED:
        print(
            "\ninputs tried: "
            + "; ".join(
                f"{k} {n:,} ({bad:,} refused, peak memory +{PEAK.get(k, 0) / MiB:.1f} MiB at most)"
                for k, (n, bad) in sorted(TRIED.items())
            ),
            file=sys.stderr,
        )


def one_line(error: ResnetlabError, kind=ResnetlabError) -> None:
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    text = str(error)
    assert text and "\n" not in text and len(text) < 1000, text


def refused(error: ResnetlabError) -> None:
    """A fuzzed input refused: the error must be one of ours, on one line; it is tallied."""
    one_line(error)
    TRIED[count.last][1] += 1


# --- peak memory ---------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_rss_growth(fn) -> tuple[object, int]:
    """(fn's result or the ResnetlabError it raised, bytes its peak resident memory rose above the start)."""
    try:
        Path("/proc/self/clear_refs").write_text(
            "5"
        )  # resets VmHWM, the peak, to the current size (Linux)
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    start = _status("VmRSS")
    try:
        result = fn()
    except ResnetlabError as e:
        result = e
    return result, _status("VmHWM") - start


MiB = 2**20
PEAK: dict[str, int] = {}  # per parser: the largest rise in peak resident memory over one input


@contextlib.contextmanager
def bounded(seconds: float = 10.0, mib: int = 64):
    """The block must end within `seconds` (no hang) and raise the peak resident memory by less
    than `mib` MiB (no allocation the input's declared sizes ask for); the inputs are under 1 MB."""
    try:
        Path("/proc/self/clear_refs").write_text(
            "5"
        )  # resets VmHWM, the peak, to the current size (Linux)
        start = _status("VmRSS")
    except OSError:  # visibly: the memory bound is half of what this test checks
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")

    def alarm(signum, frame):
        raise TimeoutError(f"over {seconds} s on one input: a hang")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    grew = _status("VmHWM") - start
    parser = getattr(count, "last", "?")
    PEAK[parser] = max(PEAK.get(parser, 0), grew)
    assert grew < mib * MiB, f"peak memory rose by {grew / MiB:.0f} MiB on one input"


# --- mutations of valid files ---------------------------------------------------------------


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """`valid` after 1-4 edits: truncated, bits flipped, bytes inserted or deleted, a 4- or 8-byte
    field overwritten with an extreme number (sizes, lengths, counts)."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "u32", "u64", "append"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op in ("u32", "u64"):
            width = 4 if op == "u32" else 8
            value = draw(
                st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1])
                | st.integers(0, 2 ** (8 * width) - 1)
            )
            order = draw(st.sampled_from(["big", "little"]))
            data[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, order)
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


# --- IDX ------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 0x08, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + array.astype(np.uint8).tobytes()
    )


VALID_IMAGES = idx_bytes(np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3))
VALID_LABELS = idx_bytes(np.array([0, 1, 2, 9, 3], dtype=np.uint8))


def idx_header(dims: list[int]) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


@fuzz(2000)
@given(
    images=st.one_of(
        mutated(VALID_IMAGES),
        st.binary(max_size=96),
        st.just(VALID_IMAGES),
        st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3).map(idx_header),
    ),
    labels=st.one_of(mutated(VALID_LABELS), st.binary(max_size=32), st.just(VALID_LABELS)),
)
@example(
    images=idx_header([2**22, 2**21, 2**21]), labels=VALID_LABELS
)  # 2**64 bytes declared: wrapped to 0 in int64
def test_idx_files(images, labels):
    from resnetlab.data.formats import read_idx_pair

    count("IDX (image and label file pairs)")
    with bounded():
        try:
            x, y = read_idx_pair(
                np.frombuffer(images, np.uint8),
                "images",
                np.frombuffer(labels, np.uint8),
                "labels",
                10,
            )
        except DataError as e:
            refused(e)
            return
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] == 1 and len(x) == len(y)
    assert y.dtype == np.int64 and (y.size == 0 or (0 <= y.min() and y.max() < 10))


# --- CIFAR binary ---------------------------------------------------------------------------


@fuzz(1000)
@given(
    records=st.integers(0, 3),
    extra=st.sampled_from([0, 0, 1, -1, 3071, 5]),
    label_bytes=st.sampled_from([1, 2]),
    num_classes=st.sampled_from([10, 100]),
    labels_in_range=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_cifar_binary_batches(records, extra, label_bytes, num_classes, labels_in_range, seed):
    from resnetlab.data.formats import read_cifar_binary

    count("CIFAR binary batches")
    record = 3072 + label_bytes
    buf = np.random.default_rng(seed).integers(
        0, 256, max(0, records * record + extra), dtype=np.uint8
    )
    if labels_in_range:  # whole records whose class byte is a class: these must parse
        buf[label_bytes - 1 :: record] %= num_classes
    with bounded():
        try:
            x, y = read_cifar_binary(buf, "data_batch_1.bin", label_bytes, num_classes)
        except DataError as e:
            refused(e)
            assert not (labels_in_range and extra == 0 and records > 0), (
                "a well-formed batch was refused"
            )
            return
    assert (
        x.shape == (records, 3, 32, 32)
        and len(y) == len(x)
        and 0 <= y.min()
        and y.max() < num_classes
    )
    assert np.array_equal(x.reshape(records, -1), buf.reshape(records, record)[:, label_bytes:])


# --- CIFAR Python (pickle) ------------------------------------------------------------------


def cifar_pickle(n: int = 2, labels=None, protocol: int = 2) -> bytes:
    data = np.arange(n * 3072, dtype=np.uint8).reshape(n, 3072)
    return pickle.dumps(
        {b"data": data, b"labels": list(range(n)) if labels is None else labels}, protocol=protocol
    )


class RunsCode:
    """A pickle that, unpickled by pickle.loads, would create the file it names."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@fuzz(2000)
@given(
    blob=st.one_of(
        mutated(cifar_pickle()),
        st.binary(max_size=200),
        st.tuples(plain, st.integers(0, 5)).map(lambda t: pickle.dumps(t[0], protocol=t[1])),
        st.dictionaries(
            st.sampled_from([b"data", "data", b"labels", "labels", b"fine_labels"]),
            plain
            | st.builds(
                lambda n, d: np.zeros((n, d), np.uint8),
                st.integers(0, 3),
                st.sampled_from([3072, 3071, 1]),
            ),
            max_size=3,
        ).map(lambda d: pickle.dumps(d, protocol=2)),
        st.lists(st.integers(-(2**70), 2**70), max_size=3).map(
            lambda labels: cifar_pickle(len(labels), labels)
        ),
    )
)
@example(blob=cifar_pickle(2, [0, -1]))  # a negative label passed the range check
@example(
    blob=cifar_pickle(protocol=5)
)  # numpy 2's protocol-5 array pickle: another reconstructor, refused
@example(
    blob=pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [None, []]}, protocol=2)
)  # ragged: numpy raised
def test_cifar_python_batches(blob):
    from resnetlab.data.formats import read_cifar_python

    count("CIFAR Python batches")
    with bounded():
        try:
            x, y = read_cifar_python(np.frombuffer(blob, np.uint8), "data_batch_1", "labels", 10)
        except DataError as e:
            refused(e)
            return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and len(y) == len(x)
    assert y.dtype == np.int64 and (y.size == 0 or (0 <= y.min() and y.max() < 10))


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    from resnetlab.data.formats import read_cifar_python

    marker = tmp_path / "ran"
    for protocol in range(6):
        blob = pickle.dumps({b"data": RunsCode(str(marker)), b"labels": [0]}, protocol=protocol)
        with pytest.raises(
            DataError, match="refused to load posix.system|refused to load os.system"
        ) as e:
            read_cifar_python(np.frombuffer(blob, np.uint8), "data_batch_1", "labels", 10)
        one_line(e.value)
    assert not marker.exists()


# --- image folders --------------------------------------------------------------------------

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "I;16", "I", "F", "YCbCr", "LAB", "HSV"]


def encode(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes | None:
    """An image of `mode` in `fmt`, or None when Pillow cannot save that pair."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    try:
        img = (
            base.convert(mode)
            if mode not in ("I;16", "I", "F")
            else Image.fromarray(
                rng.integers(0, 65535, (size[1], size[0])).astype(
                    {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
                ),
                mode,
            )
        )
        buf = io.BytesIO()
        if fmt == "APNG":  # an animated PNG: three frames
            img.save(buf, "PNG", save_all=True, append_images=[img.copy(), img.copy()])
        elif fmt == "GIF-animated":
            img.convert("P").save(buf, "GIF", save_all=True, append_images=[img.convert("P")] * 2)
        else:
            img.save(buf, fmt)
        return buf.getvalue()
    except (OSError, ValueError, KeyError, TypeError):
        return None


FORMATS = ["PNG", "JPEG", "APNG", "GIF-animated", "TIFF", "BMP", "WEBP", "ICO"]


@st.composite
def image_file(draw) -> bytes:
    kind = draw(st.sampled_from(["image", "image", "image", "damaged", "random", "empty"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=64))
    if kind == "empty":
        return b""
    data = None
    while data is None:
        data = encode(
            draw(st.sampled_from(MODES)),
            (draw(st.integers(1, 6)), draw(st.integers(1, 6))),
            draw(st.sampled_from(FORMATS)),
            draw(st.integers(0, 1000)),
        )
    return draw(mutated(data)) if kind == "damaged" else data


folder_tree = st.dictionaries(  # {class folder: {file name: bytes}}
    st.sampled_from(["cat", "dog", "bird"]),
    st.dictionaries(
        st.sampled_from(["a.png", "b.jpg", "c.jpeg", "d.PNG", "notes.txt"]),
        image_file(),
        max_size=3,
    ),
    max_size=3,
)


@fuzz(500)
@given(train=folder_tree, test=st.none() | folder_tree, stray=st.booleans())
def test_image_folders(train, test, stray):
    from resnetlab.data import load_dataset

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for split, tree in (("train", train), ("test", test)):
            for cls, files in (tree or {}).items():
                (root / split / cls).mkdir(parents=True)
                for name, data in files.items():
                    (root / split / cls / name).write_bytes(data)
        (root / "train").mkdir(exist_ok=True)
        if stray:
            (root / "train" / "README.png").write_bytes(
                b"not a class folder"
            )  # a file beside the class folders
        for want_train in (True, False):
            count("image folders (train and test split loads)")
            with bounded():
                try:
                    ds = load_dataset(f"imagefolder:{root}", train=want_train)
                except DataError as e:
                    refused(e)
                    continue
            assert (
                ds.images.dtype == torch.uint8
                and ds.images.ndim == 4
                and ds.images.shape[1] in (1, 3)
            )
            assert len(ds.labels) == len(ds.images) and (
                len(ds.labels) == 0 or ds.labels.max() < len(ds.classes)
            )


# --- weights (safetensors) ------------------------------------------------------------------


def valid_weights() -> bytes:
    from resnetlab.weights import save_weights

    with tempfile.TemporaryDirectory() as d:
        save_weights(
            Path(d, "w.safetensors"),
            {
                "conv.weight": torch.arange(12.0).view(3, 4),
                "n": torch.tensor([1, 2]),
                "empty": torch.zeros(0),
            },
            {"model": "resnet20", "num_classes": 10},
        )
        return Path(d, "w.safetensors").read_bytes()


def _header_file(header) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + bytes(64)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
tensor_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", "x"])
        | json_values,
        "shape": st.lists(st.integers(-3, 2**40), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-10, 2**63), min_size=2, max_size=2) | json_values,
    }
)


@fuzz(2000)
@given(
    blob=st.one_of(
        mutated(valid_weights()),
        st.binary(max_size=128),
        st.dictionaries(
            st.text(max_size=6) | st.just("__metadata__"), tensor_entry | json_values, max_size=3
        ).map(_header_file),
        json_values.map(_header_file),
        st.builds(
            lambda meta: _header_file({"__metadata__": {"resnetlab": meta}}),
            json_values | st.text(),
        ),
    )
)
@example(
    blob=struct.pack("<Q", 2**63) + b"{}"
)  # a header longer than the file read as an empty file
@example(blob=_header_file({"__metadata__": {"resnetlab": "5"}}))  # metadata that is not an object
@example(
    blob=_header_file({"t": {"dtype": "U8", "shape": [4], "data_offsets": [-4, 0]}})
)  # offsets before the data
def test_weights_reader(blob, tmp_path_factory):
    from resnetlab.weights import load_weights

    count("weights files")
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(blob)
    with bounded():
        try:
            tensors, meta = load_weights(path)
        except CheckpointError as e:
            refused(e)
            return
    assert isinstance(meta, dict) and all(isinstance(t, torch.Tensor) for t in tensors.values())


# --- checkpoints ----------------------------------------------------------------------------


def valid_checkpoint() -> bytes:
    from resnetlab.train import make_config

    buf = io.BytesIO()
    torch.save(
        {
            "config": make_config("quick").to_dict(),
            "model": {"w": torch.arange(4.0)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "state": {"epoch": 1, "history": [{"epoch": 1, "train_loss": 2.0}]},
            "rng": {"torch": torch.get_rng_state()},
            "version": 1,
        },
        buf,
    )
    return buf.getvalue()


@fuzz(1000)
@given(
    blob=st.one_of(
        mutated(valid_checkpoint()),
        st.binary(max_size=256),
        st.tuples(plain, st.integers(0, 5)).map(lambda t: pickle.dumps(t[0], protocol=t[1])),
    )
)
def test_checkpoint_loader(blob, tmp_path_factory):
    from resnetlab.train.checkpoint import load_checkpoint

    count("checkpoints")
    path = tmp_path_factory.getbasetemp() / "fuzz.pt"
    path.write_bytes(blob)
    with bounded():
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            refused(e)
            return
    assert isinstance(ckpt, dict) and ckpt["version"] == 1


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    from resnetlab.train.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    torch.save({"version": 1, "config": RunsCode(str(marker))}, tmp_path / "zip.pt")
    (tmp_path / "legacy.pt").write_bytes(
        pickle.dumps({"version": 1, "config": RunsCode(str(marker))})
    )
    for name in ("zip.pt", "legacy.pt"):
        with pytest.raises(CheckpointError, match="not a readable resnetlab checkpoint") as e:
            load_checkpoint(tmp_path / name)
        one_line(e.value)
    assert not marker.exists()


# --- predict's images -----------------------------------------------------------------------


@fuzz(1500)
@given(
    blob=st.one_of(
        st.binary(max_size=128),
        st.builds(
            encode,
            st.sampled_from(MODES),
            st.tuples(st.integers(1, 9), st.integers(1, 9)),
            st.sampled_from(FORMATS),
            st.integers(0, 100),
        )
        .filter(lambda b: b is not None)
        .flatmap(lambda b: st.just(b) | mutated(b)),
    ),
    channels=st.sampled_from([1, 3]),
)
# 48 bytes of WebP declaring 1792 x 9472 pixels: decoding them takes 65 MiB (within the allowance below)
@example(
    blob=b"RIFF$\x00\x00\x00WEBPVP8 \x18\x00\x00\x000\x01\x00\x9d\x01*\x00\x07\x00%\x01\x00\x01\x00\x01@&%"
    b"\xa4\x00\x03p\x00\xfe\xfd6h\x00",
    channels=1,
)
def test_predict_image_reader(blob, channels, tmp_path_factory):
    from resnetlab.inference.images import load_image

    count("predict's images")
    path = tmp_path_factory.getbasetemp() / "fuzz.img"
    path.write_bytes(blob)
    # A compressed image may declare up to MAX_IMAGE_PIXELS (refused beyond, in one line: the bomb
    # tests below), and decoding what it declares takes memory in proportion: Pillow's buffer (up
    # to 4 bytes a pixel) and the converted copy (up to 3). 48 bytes of WebP can declare 17
    # megapixels. The bound is that allowance, so what is caught is memory beyond it.
    declared = 0
    with contextlib.suppress(Exception):
        with Image.open(path) as img:
            declared = img.size[0] * img.size[1]
    with bounded(mib=64 + 7 * declared // MiB):
        try:
            t = load_image(path, channels)
        except UsageError as e:
            refused(e)
            return
    assert (
        t.dtype == torch.uint8
        and t.ndim == 3
        and t.shape[0] == channels
        and t.shape[1] >= 1
        and t.shape[2] >= 1
    )


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of `width` x `height` black pixels: a decompression bomb when large
    (30000 x 30000 is 900 megapixels, ~0.9 GB decoded, in a ~110 kB file). Built row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    z, row, parts = zlib.compressobj(9), bytes(1 + (width + 7) // 8), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A weights file `predict` accepts: an untrained narrow ResNet-20 with resnetlab's metadata."""
    from resnetlab.models import create_model
    from resnetlab.weights import save_weights

    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    model = create_model("resnet20", num_classes=3, in_chans=1, width=4)
    save_weights(
        path,
        model.state_dict(),
        {
            "model": "resnet20",
            "model_kwargs": {"width": 4},
            "in_chans": 1,
            "num_classes": 3,
            "classes": ["a", "b", "c"],
            "input_size": [1, 16, 16],
            "resize": 16,
            "normalize": None,
            "data": "fashion-mnist",
        },
    )
    return path


@pytest.mark.parametrize(
    "width,height,ok,bound_mib",
    [
        (30000, 30000, False, 64),  # 900 megapixels: Pillow's own DecompressionBombError
        (
            10000,
            10000,
            False,
            64,
        ),  # 100 megapixels: only a warning from Pillow; refused from the header
        (1, 1, True, 64),
        (50000, 1, True, 64),
        (50000, 8, True, 64),
    ],
)
def test_predict_on_huge_and_tiny_images_is_one_line_and_bounded_memory(
    width, height, ok, bound_mib, tiny_weights, tmp_path, capsys
):
    from resnetlab import cli

    image = tmp_path / "image.png"
    image.write_bytes(png_of_zeros(width, height))
    code, grew = peak_rss_growth(
        lambda: cli.main(["predict", str(tiny_weights), str(image), "--device", "cpu", "--json"])
    )
    out, err = capsys.readouterr()
    print(
        f"\npredict on {width} x {height}: status {code}, peak memory +{grew / MiB:.1f} MiB",
        file=sys.stderr,
    )
    assert grew < bound_mib * MiB, f"peak memory rose by {grew / MiB:.0f} MiB"
    if ok:
        assert code == 0 and len(json.loads(out)[0]["top"]) == 3
    else:
        assert code == 2 and out == ""
        assert (
            err.count("\n") == 1
            and f"image {image} is" in err
            and ("pixel" in err or "too large" in err)
        )


def test_predict_refuses_a_bomb_in_one_line_from_the_command_line(tiny_weights, tmp_path):
    """The reported case, as a user runs it: `resnetlab predict RUN big.png` on 900 megapixels."""
    import subprocess

    image = tmp_path / "big.png"
    image.write_bytes(png_of_zeros(30000, 30000))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "resnetlab", "predict", str(tiny_weights), str(image)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("resnetlab: error: image ") and done.stderr.count("\n") == 1, (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_an_image_folder_with_a_bomb_is_one_line(tmp_path):
    from resnetlab.data import load_dataset

    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "ok.png").write_bytes(png_of_zeros(4, 4))
    (tmp_path / "cls" / "bomb.png").write_bytes(png_of_zeros(10000, 10000))
    result, grew = peak_rss_growth(lambda: load_dataset(f"imagefolder:{tmp_path}"))
    assert isinstance(result, DataError) and "bomb.png" in str(result)
    one_line(result)
    assert grew < 64 * MiB
