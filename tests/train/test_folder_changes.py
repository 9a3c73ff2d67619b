"""A run on an image folder whose files change afterwards: a file added to a class folder redraws
the held-out test split, so `eval` of the run refuses the folder instead of reporting a figure
on images the run may have trained on."""

from __future__ import annotations

import shutil

import pytest
from tiny_photos import write_folder

from resnetlab.errors import UsageError
from resnetlab.inference.eval_run import evaluate_run
from resnetlab.train import make_config, train

TINY = dict(
    model="resnet20",
    model_kwargs={"width": 4},
    batch_size=8,
    epochs=1,
    seed=3,
    val_split=0,
    tta="none",
    resize=8,
    progressive_resize=0,
    init="default",
    amp=False,
    channels_last=False,
    device="cpu",
    workers=0,
)


def test_eval_refuses_a_run_whose_held_out_test_split_changed(tmp_path):
    folder = write_folder(tmp_path / "photos", train=20, test=0, largest=24)  # no test/: held out
    data = f"imagefolder:{folder}"
    train(make_config("quick", data=data, **TINY), out=tmp_path / "run", verbose=False)
    before = evaluate_run(tmp_path / "run", device="cpu")
    c0 = folder / "train" / "c0"
    for i, photo in enumerate(sorted(c0.iterdir())):  # twice the photos of a class: 2 held out
        shutil.copy(photo, c0 / f"added{i}{photo.suffix}")
    with pytest.raises(UsageError, match=r"has changed since .*may now hold images the run"):
        evaluate_run(tmp_path / "run", device="cpu")
    after = evaluate_run(tmp_path / "run", data=data, device="cpu")  # the folder as it is now
    assert (before["count"], after["count"]) == (2, 3)
