"""Is this still the data the run was trained on? What a run records of its data
(`data_identity`: in its checkpoint, and its test split's with its weights) and the one comparison
that a resume and `eval` both make (`data_changed`) against the data as opened now:

    recorded = data_identity(cfg.data, splits.test, splits.train)   # saved with the run
    why = data_changed(recorded, data_identity(cfg.data, test, train), cfg.data, "since ...")

Each version is taken from the listing or the manifest the data was opened from (a split's
`digest`), so no check lists a folder again:
- an image folder's files (imagefolder:PATH, in memory or streamed): datasets.FolderFiles.digest,
  each file's path relative to the folder, its label and its size (what it covers, and why, is
  said there);
- a packed set (shards:PATH or URL): shards.split_digest, its shards' sha256 from its manifest.

Recorded under these keys, each always in one format, so a file written before this module
compares as it is: "test_split" (an image folder's test files: the recipe it always had),
"train_split" (a streamed image folder's training files) and "data" (a packed set's training
shards). A streamed image folder's checkpoint written before "train_split" holds its training
files under "data" in another recipe (absolute paths and sizes): "data" is not read for an image
folder, so that checkpoint resumes with its test split checked. A key only one side holds, or a
value that is no digest string, is not compared: never an error, just not checked."""

from __future__ import annotations

from collections.abc import Mapping

from resnetlab.data.datasets import IMAGEFOLDER, holds_out_test

TEST_FILES = "test_split"
TRAIN_FILES = "train_split"
PACKED_TRAIN = "data"


def data_identity(data: str, test=None, train=None) -> dict[str, str]:
    """The versions of `data` to record or compare, from its opened splits (a Dataset or a
    StreamSplit; each has a `digest`, "" where none): `test`'s, of an image folder (whose test
    split changes with its files), and `train`'s, when given."""
    folder = data.startswith(IMAGEFOLDER)
    found = {}
    if test is not None and folder and test.digest:
        found[TEST_FILES] = test.digest
    if train is not None and train.digest:
        found[TRAIN_FILES if folder else PACKED_TRAIN] = train.digest
    return found


def data_changed(recorded: Mapping, found: Mapping[str, str], data: str, since: str) -> str | None:
    """What of `data` is no longer what a run recorded (`recorded`: a checkpoint, or a weights
    file's metadata; `found`: data_identity of the data as opened now), in words, beginning
    "`data` has changed `since`"; None when every version both hold is the same."""
    changed = [
        key
        for key in (TEST_FILES, TRAIN_FILES, PACKED_TRAIN)
        if isinstance(recorded.get(key), str)
        and recorded[key]
        and found.get(key)
        and recorded[key] != found[key]
    ]
    if not changed:
        return None
    if changed[0] == PACKED_TRAIN:
        return (
            f"{data} has changed {since} (re-packed, or replaced on its server): its training "
            "shards are not the ones the run was trained on"
        )
    if changed[0] == TRAIN_FILES:
        what = "its training images are not the ones the run was trained on"
    elif holds_out_test(data):
        what = "the test split held out of it is drawn again and may now hold images the run trained on"
    else:
        what = "its test/ folder is not the one the run was tested on"
    return f"{data} has changed {since} (image files added, removed or replaced): {what}"
