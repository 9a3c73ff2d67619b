"""Issue 31, items 11 and 12: the wrong file gets the right message; 16-bit, transparent and
unreadable images in `predict`. Images are made with Pillow in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resnetlab import cli
from resnetlab.errors import CheckpointError

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from resnetlab.models import create_model
    from resnetlab.weights import save_weights

    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    model = create_model("resnet20", num_classes=3, in_chans=1, width=4)
    meta = {
        "model": "resnet20", "model_kwargs": {"width": 4}, "in_chans": 1, "num_classes": 3,
        "classes": ["a", "b", "c"], "input_size": [1, 16, 16], "resize": 16, "normalize": None,
        "data": "fashion-mnist",
    }  # fmt: skip
    save_weights(path, model.state_dict(), meta)
    return path


# --- item 11 -----------------------------------------------------------------------------------


def test_a_training_checkpoint_is_named_and_the_run_folder_suggested(tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    torch.save({"config": {}, "model": {"w": torch.zeros(2)}}, ckpt)
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    assert cli.main(["predict", str(ckpt), str(image)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a training checkpoint" in err
    assert f"pass the run folder ({ckpt.parent})" in err and "header too large" not in err


def test_an_onnx_model_given_to_the_weights_reader_is_named(tmp_path, capsys):
    onnx = tmp_path / "best.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.13.0" + bytes(64))
    assert cli.main(["eval", str(onnx)]) != 0  # a damaged one: one line
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error:") and str(onnx) in err and err.count("\n") == 1
    from resnetlab.weights import load_weights

    with pytest.raises(CheckpointError, match="is an ONNX model"):
        load_weights(onnx)


# --- item 12 -----------------------------------------------------------------------------------


def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    from resnetlab.inference.images import load_image

    a = np.full((4, 4), 40000, dtype=np.uint16)
    a[0, 0] = 65535
    a[0, 1] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # what Pillow makes of a 16-bit PNG
    t = load_image(path, 1)
    assert t.dtype == torch.uint8 and t[0, 1, 1].item() == 156  # 40000 / 257, not 255
    assert t[0, 0, 0].item() == 255 and t[0, 0, 1].item() == 0


def test_a_shape_in_the_alpha_channel_is_composited_on_black(tmp_path):
    from resnetlab.inference.images import load_image

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere, as many drawing programs leave it
    rgba[2:6, 2:6, 3] = 255  # the shape: opaque only here
    path = tmp_path / "shape.png"
    Image.fromarray(rgba, "RGBA").save(path)
    for channels in (1, 3):
        t = load_image(path, channels)
        assert (t[:, 2:6, 2:6] == 255).all() and t[:, 0, 0].tolist() == [0] * channels


def test_one_unreadable_image_is_reported_and_the_rest_predicted(weights, tmp_path, capsys):
    good = [tmp_path / "a.png", tmp_path / "c.png"]
    for path in good:
        Image.new("L", (20, 20), 128).save(path)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    paths = [str(good[0]), str(bad), str(good[1])]
    assert cli.main(["predict", str(weights), *paths, "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [str(good[0]), str(good[1])]
    assert (
        err.count("\n") == 1
        and err.startswith("resnetlab: error: cannot read image")
        and str(bad) in err
    )
    assert cli.main(["predict", str(weights), *paths, "--device", "cpu", "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [("error" in r, "top" in r) for r in results] == [
        (False, True),
        (True, False),
        (False, True),
    ]


def test_predict_shows_a_photo_as_the_in_memory_folder_run_saw_it(tmp_path):
    # photos of mixed sizes: the in-memory loader stores every one at the folder's most common
    # size (20 x 30 here), then trains at --resize; predict must take the same two steps
    from resnetlab.data import load_dataset
    from resnetlab.data.datasets import image_folder_files
    from resnetlab.data.path import Splits
    from resnetlab.inference.images import preprocess, read_images
    from resnetlab.inference.loading import loader_for
    from resnetlab.train import make_config
    from resnetlab.train.setup import weights_metadata

    rng = np.random.default_rng(0)
    sizes = {"train": [(20, 30)] * 3 + [(37, 23)], "test": [(37, 23), (41, 41)]}
    for split, shapes in sizes.items():
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i, (h, w) in enumerate(shapes):
                pixels = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    data = f"imagefolder:{tmp_path}"
    train, test = load_dataset(data, True), load_dataset(data, False)
    assert tuple(test.images.shape[2:]) == (20, 30)
    cfg = make_config("quick", data=data, resize=8, progressive_resize=0)
    meta = weights_metadata(cfg, Splits(train, None, test), None)
    seen, _ = next(iter(loader_for(meta, test, batch_size=len(test))))  # as eval and training
    files = [p for p, _ in image_folder_files(data).splits["test"]]
    pictures, _, _ = read_images(files, meta)
    assert torch.equal(preprocess(pictures, meta), seen)
    from resnetlab.inference.onnx import _props, exported_meta  # an ONNX file carries it too

    shipped = dict(exported_meta(meta), input_size=meta["input_size"])
    assert json.loads(_props(shipped)["stored_size"]) == [20, 30]
    assert "resized to 20x30 first" in _props(shipped)["preprocess"]
