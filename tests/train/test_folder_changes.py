"""A run on an image folder whose files change afterwards: files added to a class folder redraw
the held-out test split, so `eval` of the run, and its `--resume`, refuse the folder instead of
reporting a figure on images the run may have trained on."""

from __future__ import annotations

import shutil

import pytest
from tiny_photos import TINY_RUN, write_folder

from resnetlab.errors import DataError, Interrupted
from resnetlab.inference.eval_run import evaluate_run
from resnetlab.train import make_config, train

TINY = dict(TINY_RUN, resize=8)


def test_eval_refuses_a_run_whose_held_out_changed_test_split(tmp_path):
    folder = write_folder(tmp_path / "photos", train=20, test=0, largest=24)  # no test/: held out
    data = f"imagefolder:{folder}"
    train(make_config("quick", data=data, **TINY), out=tmp_path / "run", verbose=False)
    before = evaluate_run(tmp_path / "run", device="cpu")
    _double(folder / "train" / "c0")
    with pytest.raises(DataError, match=r"has changed since .*may now hold images the run"):
        evaluate_run(tmp_path / "run", device="cpu")
    after = evaluate_run(tmp_path / "run", data=data, device="cpu")  # the folder as it is now
    assert (before["count"], after["count"]) == (2, 3)


def _double(class_folder):
    """Twice the photos of a class: its held-out share goes from 1 to 2."""
    for i, photo in enumerate(sorted(class_folder.iterdir())):
        shutil.copy(photo, class_folder / f"added{i}{photo.suffix}")


def test_resume_refuses_a_folder_whose_changed_test_split(tmp_path, monkeypatch, ctrl_c_at):
    folder = write_folder(tmp_path / "photos", train=20, test=0, largest=24)
    cfg = make_config("quick", data=f"imagefolder:{folder}", **dict(TINY, epochs=2))
    ctrl_c_at(3)  # epoch 1 of 3 steps: stopped after it
    with pytest.raises(Interrupted):
        train(cfg, out=tmp_path / "run", verbose=False)
    monkeypatch.undo()
    _double(folder / "train" / "c0")
    with pytest.raises(DataError, match=r"has changed since the checkpoint .*put it back as it"):
        train(resume=tmp_path / "run", verbose=False)
    for added in (folder / "train" / "c0").glob("added*"):
        added.unlink()  # put back as it was: the run resumes
    assert train(resume=tmp_path / "run", verbose=False)["epochs"] == 2
