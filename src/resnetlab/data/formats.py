"""File formats, parsed without executing anything: IDX (MNIST family), CIFAR binary and
CIFAR Python (through an unpickler that admits only arrays and plain types), image folders.

Every parser takes the bytes of one verified file as a uint8 numpy array plus the name to
report, checks sizes against the header before any reshape, and raises `DataError` with one
line (file, expected, found, what to do) when they disagree.
"""

from __future__ import annotations

import _codecs
import io
import math
import os
import pickle
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from resnetlab.errors import DataError

_REFETCH = "delete it and run `resnetlab data fetch` (or place a good copy)"


def _bad(name: str, expected: str, found: str, todo: str = _REFETCH) -> DataError:
    found = " ".join(
        str(found).split()
    )  # one line, whatever a library's message held (pickle's has two)
    return DataError(f"{name}: expected {expected}, found {found}; {todo}")


# --- IDX ------------------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def read_idx(buf: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions, as an array viewing `buf`."""
    header = 4 + 4 * ndim
    magic = bytes(buf[:4])
    if len(magic) == 4 and (magic[:2] != b"\0\0" or magic[2] != _IDX_UBYTE or magic[3] != ndim):
        raise _bad(
            name,
            f"IDX magic 00 00 08 {ndim:02x} (unsigned bytes, {ndim} dimensions)",
            f"{magic.hex(' ')} (not this kind of IDX file)",
        )
    if buf.size < header:
        raise _bad(name, f"an IDX header of {header} bytes", f"{buf.size} bytes (truncated)")
    dims = [int(d) for d in np.frombuffer(buf[4:header].tobytes(), dtype=">u4")]
    expected = header + math.prod(
        dims
    )  # Python ints: numpy's int64 product wraps around on huge dims
    if buf.size != expected:
        what = "truncated" if buf.size < expected else f"{buf.size - expected} bytes too many"
        raise _bad(name, f"{expected:,} bytes for shape {dims}", f"{buf.size:,} bytes ({what})")
    try:
        return buf[header:].reshape(dims)
    except (
        ValueError
    ):  # a zero dimension beside ones whose product numpy cannot hold: an empty file that lies
        raise _bad(name, "dimensions numpy can hold", f"shape {dims}") from None


def read_idx_pair(
    image_buf: np.ndarray, image_name: str, label_buf: np.ndarray, label_name: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 1, H, W], labels int64 [N]) from an IDX images file and its labels file."""
    images = read_idx(image_buf, image_name, 3)
    labels = read_idx(label_buf, label_name, 1)
    if len(images) != len(labels):
        raise _bad(
            label_name,
            f"{len(images):,} labels (one per image in {image_name})",
            f"{len(labels):,}",
            "the two files come from different releases: fetch both again",
        )
    return images[:, None], _checked_labels(labels, num_classes, label_name)


def _checked_labels(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    labels = labels.astype(np.int64)
    if labels.size and int(labels.max()) >= num_classes:
        raise _bad(name, f"labels below {num_classes}", f"label {int(labels.max())}")
    if (
        labels.size and int(labels.min()) < 0
    ):  # possible in a CIFAR Python batch: its labels are a list
        raise _bad(name, f"labels from 0 to {num_classes - 1}", f"label {int(labels.min())}")
    return labels


# --- CIFAR binary ---------------------------------------------------------------------------

_CIFAR_PIXELS = 3 * 32 * 32


def read_cifar_binary(
    buf: np.ndarray, name: str, label_bytes: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR binary batch: records of `label_bytes` label bytes (CIFAR-100: coarse, fine; the
    last one is the class) followed by 3,072 pixels, red then green then blue planes."""
    record = label_bytes + _CIFAR_PIXELS
    if buf.size == 0 or buf.size % record:
        raise _bad(
            name,
            f"a whole number of {record}-byte records",
            f"{buf.size:,} bytes ({buf.size % record} left over: truncated or not this CIFAR)",
        )
    rows = buf.reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, _checked_labels(rows[:, label_bytes - 1], num_classes, name)


# --- CIFAR Python (pickle) ------------------------------------------------------------------


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return core.multiarray._reconstruct


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and plain types; any other global is refused, so a crafted
    file cannot run code (the CIFAR pickles hold a dict of an array and lists)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: (
            _codecs.encode
        ),  # how Python 3 pickles bytes at protocol 2: str -> bytes only
    }

    def find_class(self, module: str, name: str):
        make = self._ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name} (only numpy arrays and plain types)"
            )
        return make()


def read_cifar_python(
    buf: np.ndarray, name: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR Python batch: a pickled dict with `data` (uint8 [N, 3072]) and the labels under `label_key`."""
    try:
        entry = _ArraysOnlyUnpickler(io.BytesIO(buf.tobytes()), encoding="bytes").load()
    except Exception as e:  # a truncated or foreign pickle fails in many ways; all mean "bad file"
        raise _bad(
            name, "a CIFAR Python batch (pickled dict of arrays)", f"an unreadable file ({e})"
        ) from None
    if not isinstance(entry, dict):
        raise _bad(name, "a pickled dict", type(entry).__name__)
    entry = {
        k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in entry.items()
    }  # any bytes decode
    data, labels = entry.get("data"), entry.get(label_key)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _CIFAR_PIXELS
    ):
        found = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise _bad(name, f"'data' as uint8 [N, {_CIFAR_PIXELS}]", found)
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError):  # a ragged or foreign object: numpy cannot make an array of it
        raise _bad(name, f"'{label_key}' as {len(data)} integers", type(labels).__name__) from None
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise _bad(name, f"'{label_key}' as {len(data)} integers", f"{labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32), _checked_labels(labels, num_classes, name)


# --- image folders --------------------------------------------------------------------------

# Every still-image format Pillow reads that photo folders hold (JPEG by libjpeg-turbo); case ignored.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
)  # fmt: skip


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow: pip install 'resnetlab[images]'") from None
    return Image


def scan_classes(folder: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """({class name: sorted image paths}, the names of class folders holding no image) for a
    folder holding one sub-folder per class: one listing of each sub-folder, no other stat."""
    classes, empty = {}, []
    with os.scandir(folder) as it:
        subs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for name in subs:
        base = folder / name
        with os.scandir(base) as it:  # names sorted as strings, one Path each: a tenth the time
            names = sorted(
                e.name for e in it if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()
            )
        files = [base / n for n in names]
        if files:
            classes[name] = files
        else:
            empty.append(name)
    return classes, empty


def image_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image paths} for a folder holding one sub-folder per class."""
    return scan_classes(folder)[0]


_SAID: set[str] = set()


def say_warning(line: str) -> None:
    """A one-line warning on stderr, as the CLI prints its errors; once per process (a folder
    is listed again for its test split and for the dataset's description)."""
    if line not in _SAID:
        _SAID.add(line)
        print(f"resnetlab: warning: {line}", file=sys.stderr)


def warn_empty(folder: Path, empty: list[str]) -> None:
    """The class folders left out because they hold no image, named in one warning line."""
    if empty:
        names = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        say_warning(
            f"{folder}: {len(empty)} class folder{'s' if len(empty) != 1 else ''} without images "
            f"left out ({names}); images are {'/'.join(IMAGE_SUFFIXES)}"
        )


# what to do about a file the in-memory loader cannot read (it reads every one)
_LEAVE_OUT = "remove or replace it (`resnetlab data pack` and --stream leave such files out)"


def scan_image_tree(paths: list[Path]) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) that every one of these images will be stored with: 1 when all are
    greyscale, else 3 (RGB); the most common size (others are resized to it when loaded). Read
    from the headers."""
    from resnetlab.data import decode

    Image = _pillow()
    sizes, grey = Counter(), True
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
                with Image.open(path) as img:  # reads the header only
                    size, pixels, is_grey = img.size, img.size[0] * img.size[1], decode.is_grey(img)
        except Exception as e:
            raise _bad(str(path), "an image", f"an unreadable file ({e})", _LEAVE_OUT) from None
        if pixels > decode.MAX_IMAGE_PIXELS:  # decoding would take gigabytes: a decompression bomb
            raise _bad(
                str(path),
                f"an image of at most {decode.MAX_IMAGE_PIXELS:,} pixels",
                f"{size[0]} x {size[1]}",
                "shrink or remove it",
            )
        sizes[size] += 1
        grey = grey and is_grey
    if not sizes:
        raise DataError(
            f"expected one sub-folder per class holding {'/'.join(IMAGE_SUFFIXES)} images, "
            "found none; check the path"
        )
    (w, h), _ = sizes.most_common(1)[0]
    return (1 if grey else 3), (h, w)


def stored_size(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, C] pixels at `size` (H, W), as the in-memory loader stores an image folder's
    images (read_image_files): Pillow's bilinear resize unless they have that size already.
    `predict` takes the same step for a run trained so (inference/images.py)."""
    h, w = size
    if pixels.shape[:2] == (h, w):
        return pixels
    Image = _pillow()
    channels = pixels.shape[2]
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.uint8).reshape(h, w, channels)


def read_image_files(
    files: list[tuple[Path, int]], channels: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, C, H, W], labels int64 [N]) of (path, label) pairs, read by
    data/decode.py's reader (the pixels of packing, streaming and predict), each resized to
    `size` (Pillow's bilinear) unless it has it."""
    from resnetlab.data import decode

    _pillow()  # missing: one line naming the extra
    h, w = size
    images, labels = [], []
    for path, label in files:
        try:
            pixels = decode.read_image(path.read_bytes(), channels)
        except (OSError, decode.BadImage) as e:  # in memory, every file is read: none left out
            raise _bad(
                str(path),
                "an image",
                f"an unreadable file ({e})",
                _LEAVE_OUT,
            ) from None
        images.append(stored_size(pixels, size).transpose(2, 0, 1))
        labels.append(label)
    if not images:
        return np.zeros((0, channels, h, w), np.uint8), np.zeros(0, np.int64)
    return np.stack(images), np.asarray(labels, dtype=np.int64)
