"""Hostile and malformed input, tried by the thousand (hypothesis, derandomized: the same cases on
every run). Every parser either returns well-formed data or raises one of resnetlab's own one-line
errors; never another exception, never a hang, never memory beyond a stated bound.

Parsers tried: IDX, CIFAR binary, CIFAR Python (pickles), image folders, the weights reader, the
checkpoint loader, packed sets' manifests (local or remote) and `predict`'s image reader.
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
from dataclasses import dataclass
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


@dataclass
class Tally:
    """One parser's inputs: how many were tried and refused, and how many the strategies built
    well-formed (each must parse, to a reference parse's values) or broken (each must be refused)."""

    tried: int = 0
    refused: int = 0
    valid: int = 0
    invalid: int = 0


TRIED: dict[str, Tally] = {}  # per parser (docs/robustness.md)


def count(parser: str, kind: str = "any") -> None:
    """One input for `parser`: "valid" (must parse), "invalid" (must be refused) or "any"."""
    tally = TRIED.setdefault(parser, Tally())
    tally.tried += 1
    tally.valid += kind == "valid"
    tally.invalid += kind == "invalid"
    count.last, count.kind = parser, kind


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if TRIED:
        print(
            "\ninputs tried: "
            + "; ".join(
                f"{k} {t.tried:,} ({t.refused:,} refused; {t.valid:,} well-formed, all parsed; "
                f"{t.invalid:,} broken, all refused; peak memory +{PEAK.get(k, 0) / MiB:.1f} MiB at most)"
                for k, t in sorted(TRIED.items())
            ),
            file=sys.stderr,
        )


def one_line(error: ResnetlabError, kind=ResnetlabError) -> None:
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    text = str(error)
    assert text and "\n" not in text and len(text) < 1000, text


def refused(error: ResnetlabError) -> None:
    """A fuzzed input refused: the error must be one of ours, on one line; it is tallied. A
    well-formed input must not be refused."""
    one_line(error)
    TRIED[count.last].refused += 1
    assert count.kind != "valid", f"a well-formed input was refused: {error}"


def accepted() -> None:
    """A fuzzed input parsed: a broken one must not have."""
    assert count.kind != "invalid", "a broken input was accepted"


def run_counted(parser: str, fuzz_fn, *, valid: int, invalid: int, **kwargs) -> Tally:
    """Run the hypothesis test `fuzz_fn` afresh for `parser`, then check that its strategies built
    at least `valid` well-formed and `invalid` broken inputs, and that the tallies agree: refused
    at least the broken ones, accepted at least the well-formed ones."""
    TRIED.pop(parser, None)
    fuzz_fn(**kwargs)
    t = TRIED[parser]
    assert t.valid >= valid and t.invalid >= invalid, t
    assert t.refused >= t.invalid and t.tried - t.refused >= t.valid, t
    return t


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


@st.composite
def idx_case(draw):
    """(kind, images file, labels file, reference): a pair written from random arrays of another
    count and size, left well-formed ("valid", with the arrays as the reference) or given one flaw
    that must be refused ("invalid"): a file cut short or run long, the label count or a label
    wrong, another magic number."""
    n, h, w = draw(st.integers(0, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    flaw = draw(st.sampled_from([None, None, "short", "long", "count", "label", "magic"]))
    if flaw == "label" and n:
        y[draw(st.integers(0, n - 1))] = draw(st.integers(10, 255))
    files = [idx_bytes(x), idx_bytes(y if flaw != "count" else np.append(y, 0))]
    which = draw(st.integers(0, 1))
    if flaw == "short":
        files[which] = files[which][: -draw(st.integers(1, len(files[which])))]
    elif flaw in ("long", "label") and not (flaw == "label" and n):
        files[which] += draw(st.binary(min_size=1, max_size=16))
    elif flaw == "magic":
        at = draw(st.sampled_from([0, 1, 2, 3]))
        wrong = bytearray(files[which])
        wrong[at] = draw(st.integers(0, 255).filter(lambda b, old=wrong[at]: b != old))
        files[which] = bytes(wrong)
    if flaw is None:
        return "valid", files[0], files[1], (x[:, None], y.astype(np.int64))
    return "invalid", files[0], files[1], None


@fuzz(2000)
@given(
    case=st.one_of(
        idx_case(),
        st.tuples(
            st.just("any"),
            st.one_of(
                mutated(VALID_IMAGES),
                st.binary(max_size=96),
                st.just(VALID_IMAGES),
                st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3).map(idx_header),
            ),
            st.one_of(mutated(VALID_LABELS), st.binary(max_size=32), st.just(VALID_LABELS)),
            st.none(),
        ),
    )
)
@example(
    case=("any", idx_header([2**22, 2**21, 2**21]), VALID_LABELS, None)
)  # 2**64 bytes declared: wrapped to 0 in int64
def fuzz_idx_files(case):
    from resnetlab.data.formats import read_idx_pair

    kind, images, labels, reference = case
    count("IDX (image and label file pairs)", kind)
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
    accepted()
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] == 1 and len(x) == len(y)
    assert y.dtype == np.int64 and (y.size == 0 or (0 <= y.min() and y.max() < 10))
    if reference is not None:
        assert np.array_equal(x, reference[0]) and np.array_equal(y, reference[1])


def test_idx_files():
    run_counted("IDX (image and label file pairs)", fuzz_idx_files, valid=200, invalid=500)


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
def fuzz_cifar_binary_batches(records, extra, label_bytes, num_classes, labels_in_range, seed):
    from resnetlab.data.formats import read_cifar_binary

    record = 3072 + label_bytes
    size = max(0, records * record + extra)
    buf = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    if labels_in_range:  # whole records whose class byte is a class: these must parse
        buf[label_bytes - 1 :: record] %= num_classes
    # well-formed: whole records, classes in range; broken: no record, or one cut short
    whole = size > 0 and size % record == 0
    count(
        "CIFAR binary batches",
        "valid" if whole and labels_in_range else "any" if whole else "invalid",
    )
    with bounded():
        try:
            x, y = read_cifar_binary(buf, "data_batch_1.bin", label_bytes, num_classes)
        except DataError as e:
            refused(e)
            return
    accepted()
    assert (
        x.shape == (records, 3, 32, 32)
        and len(y) == len(x)
        and 0 <= y.min()
        and y.max() < num_classes
    )
    assert np.array_equal(x.reshape(records, -1), buf.reshape(records, record)[:, label_bytes:])
    assert np.array_equal(y, buf[label_bytes - 1 :: record].astype(np.int64))


def test_cifar_binary_batches():
    run_counted("CIFAR binary batches", fuzz_cifar_binary_batches, valid=50, invalid=400)


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


@st.composite
def cifar_python_case(draw):
    """(kind, pickle, reference): a batch of 1-3 random images pickled at protocol 0-4 (5 is
    refused by design: numpy 2 pickles arrays there with another reconstructor), with bytes or str
    keys and labels as a list or an array; well-formed, or with one flaw that must be refused."""
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    flaw = draw(st.sampled_from([None, None, "label", "negative", "columns", "no labels", "list"]))
    if flaw in ("label", "negative"):
        labels[draw(st.integers(0, n - 1))] = draw(st.integers(10, 2**40)) * (
            -1 if flaw == "negative" else 1
        )
    key = draw(st.sampled_from([lambda k: k, lambda k: k.decode()]))
    entry = {
        key(b"data"): data[:, :3071] if flaw == "columns" else data,
        key(b"labels"): np.array(labels) if draw(st.booleans()) else labels,
    }
    if flaw == "no labels":
        del entry[key(b"labels")]
    blob = pickle.dumps(
        list(entry.values()) if flaw == "list" else entry, protocol=draw(st.integers(0, 4))
    )
    if flaw is None:
        return "valid", blob, (data.reshape(n, 3, 32, 32), np.array(labels, np.int64))
    return "invalid", blob, None


@fuzz(2000)
@given(
    case=cifar_python_case()
    | st.tuples(
        st.just("any"),
        st.one_of(
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
        ),
        st.none(),
    )
)
@example(
    case=("invalid", cifar_pickle(2, [0, -1]), None)
)  # a negative label passed the range check
@example(
    case=("invalid", cifar_pickle(protocol=5), None)
)  # numpy 2's protocol-5 array pickle: another reconstructor, refused
@example(
    case=(
        "invalid",
        pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [None, []]}, protocol=2),
        None,
    )
)  # ragged: numpy raised
def fuzz_cifar_python_batches(case):
    from resnetlab.data.formats import read_cifar_python

    kind, blob, reference = case
    count("CIFAR Python batches", kind)
    with bounded():
        try:
            x, y = read_cifar_python(np.frombuffer(blob, np.uint8), "data_batch_1", "labels", 10)
        except DataError as e:
            refused(e)
            return
    accepted()
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and len(y) == len(x)
    assert y.dtype == np.int64 and (y.size == 0 or (0 <= y.min() and y.max() < 10))
    if reference is not None:
        assert np.array_equal(x, reference[0]) and np.array_equal(y, reference[1])


def test_cifar_python_batches():
    run_counted("CIFAR Python batches", fuzz_cifar_python_batches, valid=120, invalid=400)


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


@st.composite
def folder_case(draw):
    """(kind, train tree, test tree, stray, reference): class folders of PNG images of one size,
    all grey or all colour, under train/ and test/ ("valid": the reference is Pillow's decoding,
    by split, in the order of classes and names); or the same with one file emptied (refused)."""
    mode = draw(st.sampled_from(["L", "RGB"]))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    classes = sorted(draw(st.sets(st.sampled_from(["cat", "dog", "bird"]), min_size=1)))
    trees = []
    for _split in ("train", "test"):
        tree = {}
        for cls in classes:
            names = sorted(draw(st.sets(st.sampled_from(["a.png", "b.PNG", "c.jpg"]), min_size=1)))
            tree[cls] = {
                name: encode(mode, size, "PNG", draw(st.integers(0, 1000))) for name in names
            }
        trees.append(tree)
    if draw(st.integers(0, 2)) == 0:  # one file of either split emptied
        tree = trees[draw(st.integers(0, 1))]
        files = tree[draw(st.sampled_from(classes))]
        files[draw(st.sampled_from(sorted(files)))] = b""
        return "invalid", trees[0], trees[1], False, None
    reference = {}
    for want_train, tree in zip((True, False), trees):
        pixels = [pillow_reads(tree[c][n], mode) for c in classes for n in sorted(tree[c])]
        labels = [i for i, c in enumerate(classes) for _ in tree[c]]
        reference[want_train] = (np.stack(pixels), np.array(labels))
    return "valid", trees[0], trees[1], False, reference


@fuzz(500)
@given(
    case=folder_case()
    | st.tuples(st.just("any"), folder_tree, st.none() | folder_tree, st.booleans(), st.none())
)
def fuzz_image_folders(case):
    from resnetlab.data import load_dataset

    kind, train, test, stray, reference = case
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
            count("image folders (train and test split loads)", kind)
            with bounded():
                try:
                    ds = load_dataset(f"imagefolder:{root}", train=want_train)
                except DataError as e:
                    refused(e)
                    continue
            accepted()
            assert (
                ds.images.dtype == torch.uint8
                and ds.images.ndim == 4
                and ds.images.shape[1] in (1, 3)
            )
            assert len(ds.labels) == len(ds.images) and (
                len(ds.labels) == 0 or ds.labels.max() < len(ds.classes)
            )
            if reference is not None:
                images, labels = reference[want_train]
                assert np.array_equal(ds.images.numpy(), images)
                assert np.array_equal(ds.labels.numpy(), labels)


def test_image_folders():
    run_counted(
        "image folders (train and test split loads)", fuzz_image_folders, valid=120, invalid=100
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


WEIGHT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@st.composite
def weights_case(draw):
    """(kind, file, reference): a weights file save_weights wrote of 1-3 random tensors (dtypes,
    shapes, empty ones) and metadata, whole ("valid", with what was saved as the reference), or
    cut short or run long by some bytes (must be refused)."""
    from resnetlab.weights import save_weights

    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    tensors = {}
    for i in range(draw(st.integers(1, 3))):
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        dtype = draw(st.sampled_from(WEIGHT_DTYPES))
        tensors[f"layer{i}.weight"] = (torch.rand(shape, generator=g) * 100).to(dtype)
    meta = {"model": draw(st.text(max_size=8)), "num_classes": draw(st.integers(1, 1000))}
    with tempfile.TemporaryDirectory() as d:
        save_weights(Path(d, "w.safetensors"), tensors, meta)
        blob = Path(d, "w.safetensors").read_bytes()
    flaw = draw(st.sampled_from([None, None, "short", "long"]))
    if flaw is None:
        return "valid", blob, (tensors, meta)
    if flaw == "short":
        return "invalid", blob[: -draw(st.integers(1, len(blob)))], None
    return "invalid", blob + draw(st.binary(min_size=1, max_size=16)), None


@fuzz(2000)
@given(
    case=weights_case()
    | st.tuples(
        st.just("any"),
        st.one_of(
            mutated(valid_weights()),
            st.binary(max_size=128),
            st.dictionaries(
                st.text(max_size=6) | st.just("__metadata__"),
                tensor_entry | json_values,
                max_size=3,
            ).map(_header_file),
            json_values.map(_header_file),
            st.builds(
                lambda meta: _header_file({"__metadata__": {"resnetlab": meta}}),
                json_values | st.text(),
            ),
        ),
        st.none(),
    )
)
@example(
    case=("invalid", struct.pack("<Q", 2**63) + b"{}", None)
)  # a header longer than the file read as an empty file
@example(
    case=("invalid", _header_file({"__metadata__": {"resnetlab": "5"}}), None)
)  # metadata that is not an object
@example(
    case=(
        "invalid",
        _header_file({"t": {"dtype": "U8", "shape": [4], "data_offsets": [-4, 0]}}),
        None,
    )
)  # offsets before the data
def fuzz_weights_reader(case, path):
    from resnetlab.weights import load_weights

    kind, blob, reference = case
    count("weights files", kind)
    path.write_bytes(blob)
    with bounded():
        try:
            tensors, meta = load_weights(path)
        except CheckpointError as e:
            refused(e)
            return
    accepted()
    assert isinstance(meta, dict) and all(isinstance(t, torch.Tensor) for t in tensors.values())
    if reference is not None:
        want, want_meta = reference
        assert meta == want_meta and set(tensors) == set(want)
        assert all(
            tensors[k].dtype == v.dtype and torch.equal(tensors[k], v) for k, v in want.items()
        )


def test_weights_reader(tmp_path):
    run_counted(
        "weights files",
        fuzz_weights_reader,
        valid=200,
        invalid=400,
        path=tmp_path / "fuzz.safetensors",
    )


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


@st.composite
def checkpoint_case(draw):
    """(kind, file, reference): a checkpoint as the trainer saves one (random weights, epoch,
    history, optimizer state), whole ("valid", with what was saved as the reference), cut short,
    or without its version or a part (must be refused)."""
    from resnetlab.train import make_config

    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    epoch = draw(st.integers(1, 99))
    ckpt = {
        "config": make_config("quick", epochs=max(epoch, draw(st.integers(1, 99)))).to_dict(),
        "model": {f"w{i}": torch.randn(draw(st.integers(1, 5)), generator=g) for i in range(2)},
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.randn(3, generator=g)}},
            "param_groups": [{"lr": draw(st.floats(0.001, 1.0)), "params": [0]}],
        },
        "state": {
            "epoch": epoch,
            "history": [{"epoch": e, "train_loss": 2.0 / e} for e in range(1, epoch + 1)],
        },
        "rng": {"torch": torch.get_rng_state()},
        "version": 1,
    }
    flaw = draw(st.sampled_from([None, None, "short", "version", "part"]))
    if flaw == "version":
        del ckpt["version"]
    elif flaw == "part":
        ckpt[draw(st.sampled_from(["model", "optimizer", "state", "rng"]))] = [1, 2]
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    blob = buf.getvalue()
    if flaw is None:
        return "valid", blob, ckpt
    if flaw == "short":
        blob = blob[: -draw(st.integers(1, len(blob)))]
    return "invalid", blob, None


def same(a, b) -> bool:
    """Nested dicts, lists and tensors hold the same values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


@fuzz(1000)
@given(
    case=checkpoint_case()
    | st.tuples(
        st.just("any"),
        st.one_of(
            mutated(valid_checkpoint()),
            st.binary(max_size=256),
            st.tuples(plain, st.integers(0, 5)).map(lambda t: pickle.dumps(t[0], protocol=t[1])),
        ),
        st.none(),
    )
)
def fuzz_checkpoint_loader(case, path):
    from resnetlab.train.checkpoint import load_checkpoint

    kind, blob, reference = case
    count("checkpoints", kind)
    path.write_bytes(blob)
    with bounded():
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            refused(e)
            return
    accepted()
    assert isinstance(ckpt, dict) and ckpt["version"] == 1
    if reference is not None:
        assert same(ckpt, reference)


def test_checkpoint_loader(tmp_path):
    run_counted(
        "checkpoints", fuzz_checkpoint_loader, valid=100, invalid=200, path=tmp_path / "fuzz.pt"
    )


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


# --- packed sets' manifests -----------------------------------------------------------------


def manifest_of(rng: np.random.Generator, classes: int, channels: int, shards: list[int]) -> dict:
    """A well-formed manifest as `data pack` writes it: `shards` gives each train shard's member
    count (a test split of one shard beside it), members laid out as tar members are."""

    def shard(i: int, n: int, split: str) -> dict:
        members = [
            [1024 * (2 * k + 1), int(rng.integers(1, 512)), int(rng.integers(0, classes))]
            for k in range(n)
        ]
        return {
            "file": f"{split}-{i:06d}.tar",
            "bytes": 1024 * (2 * n + 2),
            "sha256": "".join(rng.choice(list("0123456789abcdef"), 64)),
            "count": n,
            "members": members,
        }

    def split(name: str, counts: list[int]) -> dict:
        entries = [shard(i, n, name) for i, n in enumerate(counts)]
        labels = [m[2] for s in entries for m in s["members"]]
        return {
            "count": len(labels),
            "class_counts": np.bincount(labels, minlength=classes).astype(int).tolist(),
            "shards": entries,
        }

    return {
        "format": "resnetlab-shards/1",
        "name": "fuzz",
        "classes": [f"c{i}" for i in range(classes)],
        "channels": channels,
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
        "image_size": {"min": [8, 8], "max": [40, 60]},
        "skipped": 0,
        "splits": {"train": split("train", shards), "test": split("test", [2])},
    }


ESCAPES = [
    "../x.tar",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b.tar",
    "http://elsewhere/x.tar",
    "s3://bucket/x.tar",
    "..",
    ".",
    "",
    ".hidden.tar",
    "C:\\x.tar",
    "x.tar\x00",
    "~/x.tar",
]


@st.composite
def manifest_case(draw):
    """(kind, manifest file, reference): a manifest of 1-4 classes and 0-3 train shards, left
    well-formed ("valid", its object the reference) or given one flaw that must be refused: a
    shard name that leaves the folder, a size, count or label out of bounds, a malformed entry,
    counts that do not add up."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    classes = draw(st.integers(1, 4))
    m = manifest_of(
        rng, classes, draw(st.sampled_from([1, 3])), draw(st.lists(st.integers(1, 4), max_size=3))
    )
    flaw = draw(
        st.sampled_from(
            [
                None,
                None,
                "name",
                "bytes",
                "count",
                "member",
                "label",
                "entry",
                "sha",
                "class_counts",
                "split_count",
                "missing",
                "channels",
                "mean",
                "format",
                "duplicate",
                "split_name",
            ]
        )
    )
    shards = m["splits"]["test"]["shards"]
    s = shards[0]
    if flaw == "name":
        s["file"] = draw(st.sampled_from(ESCAPES))
    elif flaw == "bytes":
        s["bytes"] = draw(st.sampled_from([0, -1, 2**41, 2**64, 1.5, True, "4096", None]))
    elif flaw == "count":
        s["count"] += draw(st.sampled_from([-1, 1, 2**40]))
    elif flaw == "member":
        s["members"][0][draw(st.integers(0, 1))] = draw(
            st.sampled_from([-1, s["bytes"], 2**63, 0.5, None])
        )
        if s["members"][0][1] == 0.5:
            s["members"][0][1] = 0
    elif flaw == "label":
        s["members"][0][2] = draw(st.sampled_from([-1, classes, 2**40, False]))
    elif flaw == "entry":
        s["members"][0] = draw(
            st.sampled_from([[1024], [1024, 5, 0, 0], "1024,5,0", {"offset": 1024}, None])
        )
    elif flaw == "sha":
        s["sha256"] = draw(st.sampled_from(["", "ab" * 31, "AB" * 32, "g" * 64, 12]))
    elif flaw == "class_counts":
        m["splits"]["test"]["class_counts"][0] += 1
    elif flaw == "split_count":
        m["splits"]["test"]["count"] = draw(st.sampled_from([-1, 3, 2**62, "2"]))
    elif flaw == "missing":
        del m[
            draw(
                st.sampled_from(
                    ["classes", "splits", "channels", "mean", "std", "image_size", "name"]
                )
            )
        ]
    elif flaw == "channels":
        m["channels"] = draw(st.sampled_from([0, 2, 4, True, "3"]))
    elif flaw == "mean":
        m[draw(st.sampled_from(["mean", "std"]))][0] = draw(
            st.sampled_from([float("nan"), float("inf"), -0.5, 2.0, "0.5"])
        )
    elif flaw == "format":
        m["format"] = draw(st.sampled_from(["resnetlab-shards/2", None, 1]))
    elif flaw == "duplicate":
        shards.append(json.loads(json.dumps(s)))
        m["splits"]["test"]["count"] *= 2
        m["splits"]["test"]["class_counts"] = [2 * c for c in m["splits"]["test"]["class_counts"]]
    elif flaw == "split_name":
        m["splits"]["validation"] = m["splits"].pop("test")
    blob = json.dumps(m).encode()
    return ("valid", blob, m) if flaw is None else ("invalid", blob, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


@fuzz(1000)
@given(
    case=manifest_case()
    | st.tuples(
        st.just("any"),
        st.one_of(
            st.integers(0, 2**32 - 1)
            .map(
                lambda seed: json.dumps(
                    manifest_of(np.random.default_rng(seed), 3, 3, [2, 1])
                ).encode()
            )
            .flatmap(mutated),
            st.binary(max_size=256),
            json_values.map(lambda v: json.dumps(v).encode()),
        ),
        st.none(),
    )
)
@example(
    case=("invalid", b"[" * 100_000 + b"]" * 100_000, None)
)  # nesting beyond the recursion limit
def fuzz_manifest_parser(case):
    from resnetlab.data.manifest import parse_manifest

    kind, blob, reference = case
    count("packed sets' manifests", kind)
    with bounded():
        try:
            manifest = parse_manifest(blob, "manifest.json")
        except DataError as e:
            refused(e)
            return
    accepted()
    for split in manifest["splits"].values():  # what the readers rely on
        for shard in split["shards"]:
            assert "/" not in shard["file"] and not shard["file"].startswith(".")
            assert all(
                o + n <= shard["bytes"] and 0 <= y < len(manifest["classes"])
                for o, n, y in shard["members"]
            )
    if reference is not None:
        assert manifest == reference


def test_manifest_parser():
    run_counted("packed sets' manifests", fuzz_manifest_parser, valid=150, invalid=250)


# --- predict's images -----------------------------------------------------------------------


def pillow_reads(blob: bytes, mode: str) -> np.ndarray | None:
    """The reference parse: Pillow's own decoding of `blob`, converted to `mode` ("L" or "RGB"),
    as uint8 [C, H, W], by predict's documented rules (README): integer grey images scaled to 8
    bits (16-bit ranges by 255/65535, not clipped), transparent pixels composited on black, JPEG
    by libjpeg-turbo's fast decode (simplejpeg: the pixels training sees; CMYK/YCCK by Pillow);
    None where Pillow cannot read it."""
    try:
        import simplejpeg  # the stream extra; without it the reader decodes JPEG by Pillow

        jpeg = blob[:3] == b"\xff\xd8\xff" and simplejpeg.decode_jpeg_header(blob)[2] not in (
            "CMYK",
            "YCCK",
        )
    except (ImportError, ValueError):
        jpeg = False
    try:
        if jpeg:
            space = "GRAY" if mode == "L" else "RGB"
            pixels = simplejpeg.decode_jpeg(blob, space, fastdct=True, fastupsample=True)
            return pixels.reshape(pixels.shape[0], pixels.shape[1], -1).transpose(2, 0, 1)
        with Image.open(io.BytesIO(blob)) as img:
            img.load()
            if img.mode.startswith("I"):
                a = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
                img = Image.fromarray(np.clip(np.rint(a * 255.0 / top), 0, 255).astype(np.uint8))
            if "A" in img.getbands() or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            pixels = np.array(img.convert(mode), dtype=np.uint8)
    except Exception:
        return None
    return pixels.reshape(pixels.shape[0], pixels.shape[1], -1).transpose(2, 0, 1)


@st.composite
def image_case(draw, channels: int):
    """(kind, file, reference): an image Pillow wrote in one of its modes and formats ("valid"
    where Pillow reads it back, with its decoding as the reference), an empty file, or a PNG cut
    inside its header (must be refused)."""
    flaw = draw(st.sampled_from([None, None, None, "empty", "header"]))
    blob = None
    while blob is None:
        blob = encode(
            draw(st.sampled_from(MODES)),
            (draw(st.integers(1, 9)), draw(st.integers(1, 9))),
            draw(st.sampled_from(FORMATS if flaw is None else ["PNG"])),
            draw(st.integers(0, 100)),
        )
    if flaw == "empty":
        return "invalid", b"", None
    if flaw == "header":  # the 8-byte signature and part of the 25-byte IHDR chunk
        return "invalid", blob[: draw(st.integers(1, 32))], None
    reference = pillow_reads(blob, "L" if channels == 1 else "RGB")
    return ("any", blob, None) if reference is None else ("valid", blob, reference)


@fuzz(1500)
@given(
    data=st.data(),
    channels=st.sampled_from([1, 3]),
)
# 48 bytes of WebP declaring 1792 x 9472 pixels: decoding them takes 65 MiB (within the allowance below)
@example(
    data=None,
    channels=1,
)
def fuzz_predict_image_reader(data, channels, path):
    from resnetlab.inference.images import load_image

    if data is None:  # the example above
        kind, blob, reference = "any", WEBP_48_BYTES, None
    else:
        kind, blob, reference = data.draw(
            image_case(channels)
            | st.tuples(
                st.just("any"),
                st.binary(max_size=128)
                | st.builds(
                    encode,
                    st.sampled_from(MODES),
                    st.tuples(st.integers(1, 9), st.integers(1, 9)),
                    st.sampled_from(FORMATS),
                    st.integers(0, 100),
                )
                .filter(lambda b: b is not None)
                .flatmap(mutated),
                st.none(),
            )
        )
    count("predict's images", kind)
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
    accepted()
    assert (
        t.dtype == torch.uint8
        and t.ndim == 3
        and t.shape[0] == channels
        and t.shape[1] >= 1
        and t.shape[2] >= 1
    )
    if reference is not None:
        assert np.array_equal(t.numpy(), reference)


WEBP_48_BYTES = (
    b"RIFF$\x00\x00\x00WEBPVP8 \x18\x00\x00\x000\x01\x00\x9d\x01*\x00\x07\x00%\x01\x00\x01\x00\x01@&%"
    b"\xa4\x00\x03p\x00\xfe\xfd6h\x00"
)


def test_predict_image_reader(tmp_path):
    run_counted(
        "predict's images",
        fuzz_predict_image_reader,
        valid=300,
        invalid=200,
        path=tmp_path / "fuzz.img",
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
