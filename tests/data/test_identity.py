"""Is this still the data a run was trained on (data/identity.py): one digest of an image folder's
files whichever loader opened it, and the one comparison a resume and `eval` make."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from resnetlab.data.datasets import load_dataset
from resnetlab.data.identity import data_changed, data_identity
from resnetlab.data.shards import open_image_folder


def photos(root, *, test: bool):
    """Two classes of three 4x4 PNGs, in root/train with root/test beside it, or held out."""
    rng = np.random.default_rng(0)
    for split in ("train", "test") if test else ("train",):
        for c in ("c0", "c1"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return f"imagefolder:{root}"


def recipe(root, pairs) -> str:
    """The digest every run on an image folder has recorded as its test_split, written out."""
    h = hashlib.blake2b(digest_size=12)
    for path, label in pairs:
        h.update(f"{path.relative_to(root).as_posix()}\0{label}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()


def test_both_loaders_give_a_folder_s_files_one_digest_the_recipe_runs_recorded(tmp_path):
    data = photos(tmp_path / "p", test=True)
    root = tmp_path / "p"
    for train, split in ((True, "train"), (False, "test")):
        pairs = [
            (p, label)
            for label, c in enumerate(("c0", "c1"))
            for p in sorted((root / split / c).iterdir())
        ]
        expected = recipe(root, pairs)
        assert load_dataset(data, train).digest == expected  # in memory
        assert open_image_folder(data, train).digest == expected  # streamed
        assert load_dataset(data, train, subset=2).digest == expected  # a subset of that listing


def test_a_test_folder_and_a_held_out_split_that_changed_are_named_as_such(tmp_path):
    data = photos(tmp_path / "p", test=True)
    recorded = data_identity(data, load_dataset(data, False), open_image_folder(data, True))
    assert set(recorded) == {"test_split", "train_split"}

    def now():
        return data_identity(data, open_image_folder(data, False), open_image_folder(data, True))

    assert data_changed(recorded, now(), data, "since R") is None
    test = tmp_path / "p" / "test" / "c1"
    shutil.copy(test / "0.png", test / "more.png")
    assert data_changed(recorded, now(), data, "since R") == (
        f"{data} has changed since R (image files added, removed or replaced): its test/ folder "
        "is not the one the run was tested on"
    )
    (test / "more.png").unlink()
    (tmp_path / "p" / "train" / "c0" / "0.png").unlink()  # training files only
    assert data_changed(recorded, now(), data, "since R") == (
        f"{data} has changed since R (image files added, removed or replaced): its training "
        "images are not the ones the run was trained on"
    )
    assert data_changed(recorded, data_identity(data, load_dataset(data, False)), data, "") is None
    held = photos(tmp_path / "h", test=False)
    before = data_identity(held, load_dataset(held, False))
    (tmp_path / "h" / "train" / "c0" / "2.png").unlink()
    why = data_changed(before, data_identity(held, load_dataset(held, False)), held, "since R")
    assert why.endswith(
        "the test split held out of it is drawn again and may now hold images the run trained on"
    )


class Split:
    def __init__(self, digest: str) -> None:
        self.digest = digest


@pytest.mark.parametrize(
    "saved, now, refused",
    [
        ("abc", "abc", False),  # the same version
        ("abc", "abd", True),  # changed since
        ("", "abd", False),  # a checkpoint without a version: not checked
        (None, "abd", False),
        (7, "abd", False),  # not a version string: not compared
        ("abc", "", False),  # data without a version now: not checked
    ],
)
def test_a_packed_set_s_training_shards_are_compared_when_both_sides_hold_a_version(
    saved, now, refused
):
    recorded = {} if saved is None else {"data": saved}
    why = data_changed(
        recorded, data_identity("shards:set", Split("t"), Split(now)), "shards:set", "since C"
    )
    assert why == (
        "shards:set has changed since C (re-packed, or replaced on its server): its training "
        "shards are not the ones the run was trained on"
        if refused
        else None
    )


def test_what_only_one_side_records_is_not_compared():
    """A packed set's test split is not recorded; an image folder's training files recorded under
    "data" (a streamed checkpoint written before "train_split", another recipe) are not read."""
    assert data_identity("shards:set", Split("t"), Split("d")) == {"data": "d"}
    assert data_identity("fashion-mnist", Split(""), Split("")) == {}
    folder = data_identity("imagefolder:x", Split("t"), Split("d"))
    assert folder == {"test_split": "t", "train_split": "d"}
    old = {"data": "absolute-paths", "test_split": "t"}
    assert data_changed(old, folder, "imagefolder:x", "since C") is None
