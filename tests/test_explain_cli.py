"""`resnetlab explain RUN IMAGE...` and the report's Grad-CAM row, on a tiny run trained here
(a width-8 ResNet-20, 512 Fashion-MNIST images, one epoch: a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import torch

from resnetlab import cli
from resnetlab.data import load_dataset
from resnetlab.report.html import write_report
from resnetlab.train import make_config, train

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.needs_fashion_mnist


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    cfg = make_config(
        "quick",
        model="resnet20",
        model_kwargs={"width": 8},
        subset=512,
        batch_size=64,
        epochs=1,
        seed=3,
        val_split=128,
    )
    train(cfg, out=out, verbose=False)
    return out


@pytest.fixture(scope="module")
def images(tiny_run):
    """Two test images as files: one grey 28x28, one RGB at another size (converted as predict does)."""
    from PIL import Image

    test = load_dataset("fashion-mnist", train=False)
    grey = tiny_run.parent / "shoe.png"
    Image.fromarray(test.images[0, 0].numpy()).save(grey)
    rgb = tiny_run.parent / "shirt.jpg"
    Image.fromarray(test.images[1, 0].numpy()).convert("RGB").resize((60, 45)).save(rgb)
    return [str(grey), str(rgb)]


def without_captum(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "captum" else find_spec(name, *a),
    )
    monkeypatch.setitem(sys.modules, "captum.attr", None)


def test_explain_writes_one_png_grid(tiny_run, images, capsys):
    assert cli.main(["explain", str(tiny_run), *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1] == f"Grad-CAM at layer3: {tiny_run / 'explain.png'}"
    for line, image in zip(lines, images):
        assert line.startswith(f"{image}: ") and "(map of " in line
    assert (tiny_run / "explain.png").read_bytes()[:8] == PNG

    out = tiny_run.parent / "sandal.png"
    args = ["explain", str(tiny_run / "model.safetensors"), images[0], "--class", "sandal"]
    assert cli.main([*args, "--layer", "layer2.1", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layer"] == "layer2.1" and result["out"] == str(out)
    assert [r["explained"] for r in result["images"]] == ["Sandal"]
    assert 0 <= result["images"][0]["prob"] <= 1 and out.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "layer9"], "no layer 'layer9' in CifarResNet; its residual stages are layer1"),
        (["--class", "boots"], "--class 'boots' is not one of the model's classes: T-shirt/top"),
    ],
)
def test_explain_errors_are_one_line(tiny_run, images, capsys, args, message):
    assert cli.main(["explain", str(tiny_run), images[0], *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_explain_goes_on_past_a_bad_image_as_predict_does(tiny_run, images, tmp_path, capsys):
    """Issue 40: explain stopped at the first missing image; now every readable image is
    explained, each bad one is one line on stderr, and the exit status is 1 (predict's way)."""
    (tmp_path / "notes.txt").write_text("not an image")
    missing, notes = str(tmp_path / "missing.png"), str(tmp_path / "notes.txt")
    out = tmp_path / "grid.png"
    args = ["explain", str(tiny_run), missing, images[0], notes, images[1], "--out", str(out)]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(": ")[0] for line in lines[:2]] == images and len(lines) == 3
    errors = captured.err.splitlines()
    assert len(errors) == 2 and all(e.startswith("resnetlab: error: ") for e in errors)
    assert missing in errors[0] and "does not exist" in errors[0] and notes in errors[1]
    assert out.read_bytes()[:8] == PNG
    assert cli.main([*args, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result["images"]] == [missing, images[0], notes, images[1]]
    assert ["error" in r for r in result["images"]] == [True, False, True, False]


def test_explain_without_captum_names_the_extra(tiny_run, images, capsys, monkeypatch):
    without_captum(monkeypatch)
    assert cli.main(["explain", str(tiny_run), images[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'resnetlab[explain]'" in err


def test_report_has_a_grad_cam_row_of_the_mistakes(tiny_run, tmp_path, monkeypatch, capsys):
    assert (tiny_run / "mistakes_gradcam.png").read_bytes()[:8] == PNG  # drawn when the run ended
    finish = [json.loads(line) for line in (tiny_run / "events.jsonl").open()][-1]
    assert finish["event"] == "finish" and finish["gradcam_seconds"] > 0
    page = (tiny_run / "report.html").read_text()
    assert "Grad-CAM of the predicted (wrong) class" in page and page.count("data:image/png") == 4

    run = tmp_path / "older"  # a run made before the row existed: `resnetlab report` draws it
    shutil.copytree(tiny_run, run)
    (run / "mistakes_gradcam.png").unlink()
    assert cli.main(["report", str(run)]) == 0
    assert "drew the mistakes' Grad-CAM row" in capsys.readouterr().err
    assert (run / "mistakes_gradcam.png").exists()

    (run / "mistakes_gradcam.png").unlink()  # without Captum the report says how to get the row
    without_captum(monkeypatch)
    page = write_report(run).read_text()
    assert (
        "No Grad-CAM row: Captum is not installed (pip install &#x27;resnetlab[explain]&#x27;"
        in page
    )
    assert page.count("data:image/png") == 3


def test_grad_cam_runs_on_the_trained_weights_in_python(tiny_run):
    """The same maps from Python: load_model + preprocess + resnetlab.explain.grad_cam."""
    from resnetlab.explain import grad_cam
    from resnetlab.inference.images import preprocess
    from resnetlab.inference.loading import load_model

    model, meta = load_model(tiny_run)
    x = preprocess(list(load_dataset("fashion-mnist", train=False).images[:4]), meta)
    cam = grad_cam(model, x)
    assert cam.shape == (4, 28, 28) and torch.all((cam >= 0) & (cam <= 1))


def test_explain_hostile_input_is_one_line(tiny_run, images, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    for args, code, message in [
        ([str(tmp_path / "nothing"), images[0]], 1, "does not exist"),
        ([str(tiny_run), str(tmp_path / "missing.png")], 2, "does not exist"),
        ([str(tiny_run), str(tmp_path / "notes.txt")], 2, "cannot read image"),
        ([str(tiny_run), images[0], "--device", "tpu"], 2, "unknown device 'tpu'"),
        ([str(tiny_run), images[0], "--out", str(tmp_path)], 1, "cannot write"),
    ]:
        assert cli.main(["explain", *args]) == code, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
