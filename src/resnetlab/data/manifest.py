"""A packed set's manifest (`manifest.json`, written by `resnetlab data pack`), read as untrusted
input: a local one may have been edited, a remote one comes from whoever serves it. Everything
later code relies on is checked here, once, and anything else is one DataError line:

- each shard's file is a plain name inside the set's folder (no `/`, `..`, absolute path, drive,
  URL or hidden name): reading it can never leave the folder or the cache;
- sizes and counts are whole numbers within bounds (a shard of at most MAX_SHARD_BYTES, at most
  one image per 512 bytes of it, each member's bytes inside its shard, labels among the classes,
  counts that add up), so nothing allocates what a hostile number asks for;
- the statistics are finite and fit the channels.
"""

from __future__ import annotations

import json
import math
import re

from resnetlab.errors import DataError

FORMAT = "resnetlab-shards/1"
MAX_MANIFEST_BYTES = 1 << 30  # ImageNet's is ~40 MB: 1.28M members of three numbers
MAX_SHARD_BYTES = 1 << 40  # 1 TiB; `data pack` writes 256 MiB
MAX_SHARDS = 1_000_000
MAX_CLASSES = 1_000_000
TAR_BLOCK = 512  # every tar member takes at least one header block: the most images a shard holds
SPLITS = ("train", "test")
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_manifest(data: bytes, where: str) -> dict:
    """The manifest in `data` (the bytes of `where`, named in errors), checked; DataError if not."""
    if len(data) > MAX_MANIFEST_BYTES:
        _refuse(where, f"is {len(data):,} bytes, over the {MAX_MANIFEST_BYTES:,} a manifest may be")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _refuse(where, f"is not JSON ({_short(e)})")
    check_manifest(manifest, where)
    return manifest


def check_manifest(manifest, where: str) -> None:
    """Raise DataError (one line naming `where` and the flaw) unless `manifest` is well-formed."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        _refuse(where, f"is not a {FORMAT} manifest")
    classes = _field(manifest, "classes", list, where)
    if not 1 <= len(classes) <= MAX_CLASSES or not all(isinstance(c, str) for c in classes):
        _refuse(where, f"has no list of 1 to {MAX_CLASSES:,} class names")
    _field(manifest, "name", str, where)
    channels = manifest.get("channels")
    if channels not in (1, 3) or isinstance(channels, bool):
        _refuse(where, f"has channels {_short(channels)}, not 1 or 3")
    for key, low in (("mean", 0.0), ("std", 1e-6)):
        values = _field(manifest, key, list, where)
        if len(values) != channels or not all(_number(v) and low <= v <= 1 for v in values):
            _refuse(where, f"has no {key} of {channels} numbers in [{low:g}, 1]")
    sizes = _field(manifest, "image_size", dict, where)
    for key in ("min", "max"):
        side = sizes.get(key)
        if not (
            isinstance(side, list) and len(side) == 2 and all(_whole(v, 0, 1 << 20) for v in side)
        ):
            _refuse(where, f"has no image_size {key} of two sizes")
    if "skipped" in manifest and not _whole(manifest["skipped"], 0, 1 << 62):
        _refuse(where, "has a skipped count that is not a whole number >= 0")
    splits = _field(manifest, "splits", dict, where)
    if not splits or not set(splits) <= set(SPLITS):
        _refuse(where, f"has splits {_short(sorted(map(str, splits)))}, not train and/or test")
    for name, split in splits.items():
        _check_split(split, f"{where}: split {name}", len(classes))


def _check_split(split, where: str, classes: int) -> None:
    if not isinstance(split, dict):
        _refuse(where, "is not an object")
    shards = _field(split, "shards", list, where)
    if len(shards) > MAX_SHARDS:
        _refuse(where, f"lists {len(shards):,} shards, over {MAX_SHARDS:,}")
    per_class = [0] * classes
    seen: set[str] = set()
    for i, shard in enumerate(shards):
        _check_shard(shard, f"{where}, shard {i}", classes, per_class)
        if shard["file"] in seen:
            _refuse(f"{where}, shard {i}", f"repeats the file {shard['file']!r}")
        seen.add(shard["file"])
    counts = _field(split, "class_counts", list, where)
    if counts != per_class:
        _refuse(where, "has class_counts that differ from its shards' labels")
    if split.get("count") != sum(per_class) or isinstance(split.get("count"), bool):
        _refuse(
            where, f"has count {_short(split.get('count'))}, but its shards hold {sum(per_class):,}"
        )


def _check_shard(shard, where: str, classes: int, per_class: list[int]) -> None:
    if not isinstance(shard, dict):
        _refuse(where, "is not an object")
    file = shard.get("file")
    if not isinstance(file, str) or not SHARD_NAME.fullmatch(file):
        _refuse(
            where,
            f"names the file {_short(file)}: a shard must be a plain file name in the set's "
            "folder (letters, digits, . _ -; no path, URL or ..)",
        )
    size = shard.get("bytes")
    if not _whole(size, 1, MAX_SHARD_BYTES):
        _refuse(
            where,
            f"({file}) has bytes {_short(size)}, not a whole number in 1..{MAX_SHARD_BYTES:,}",
        )
    if not isinstance(shard.get("sha256"), str) or not SHA256.fullmatch(shard["sha256"]):
        _refuse(where, f"({file}) has no sha256 of 64 lowercase hex digits")
    members = _field(shard, "members", list, where)
    if len(members) > size // TAR_BLOCK or shard.get("count") != len(members):
        _refuse(
            where,
            f"({file}) has count {_short(shard.get('count'))} for {len(members):,} members of "
            f"{size:,} bytes",
        )
    for member in members:
        if not (
            isinstance(member, list)
            and len(member) == 3
            and _whole(member[0], 0, size)
            and _whole(member[1], 1, size)
            and member[0] + member[1] <= size
            and _whole(member[2], 0, classes - 1)
        ):
            _refuse(
                where,
                f"({file}) has the member {_short(member)}; each is [offset, size, label] inside "
                "the shard, with a label among the classes",
            )
        per_class[member[2]] += 1


def _field(obj: dict, key: str, kind: type, where: str):
    value = obj.get(key)
    if not isinstance(value, kind):
        _refuse(where, f"has no {key} ({kind.__name__})")
    return value


def _whole(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _short(value) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(where: str, what: str):
    raise DataError(
        f"{where} {what}; pack the data again (`resnetlab data pack`), or ask who serves it"
    )


__all__ = ["FORMAT", "check_manifest", "parse_manifest"]
