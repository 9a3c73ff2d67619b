"""A streamed run's evaluation view (data/eval_view.py) read back by what comes after training
(issue 36, item 2; issue 40, item 5): recorded in the weights, `eval RUN` and `eval --data
shards:PATH` reproduce the run's test figure, `predict` shows an image as eval does, `export`
checks on the packed test images, the run's own mistakes picture shows the view; a --resize the
user gives carries to evaluation."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import tiny_photos
import torch

from resnetlab import cli
from resnetlab.data.eval_view import EvalView
from resnetlab.data.shards import open_shards, pack_folder
from resnetlab.inference.images import preprocess, read_images
from resnetlab.inference.loading import load_model, loader_for, open_test_set
from resnetlab.report import run_report
from resnetlab.train import make_config, train
from resnetlab.train.setup import check_eval_sizes
from resnetlab.weights import load_weights

RUN = tiny_photos.TINY_RUN

DRAWN: dict = {}  # what the streamed run's report was handed to draw its mistakes from


def write_folder(root: Path, train: int = 16, test: int = 6) -> Path:
    """Two classes of images of mixed sizes and shapes, PNG and JPEG."""
    return tiny_photos.write_folder(root, train, test, largest=44)


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run folder, packed set, the images' folder) of a streamed run whose evaluation view is
    not the square training size: Resize(20) + CenterCrop(16) after 16 px random-resized crops."""
    root = tmp_path_factory.mktemp("evalview")
    photos = write_folder(root / "photos")
    pack_folder(photos, root / "packed")
    cfg = make_config(
        "quick",
        data=f"shards:{root / 'packed'}",
        random_resized_crop=True,
        crop_padding=0,
        eval_resize=20,
        **RUN,
    )
    write_analysis = run_report.write_analysis

    def recording(folder, mistakes, images, **kwargs):
        DRAWN["images"] = images
        return write_analysis(folder, mistakes, images, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_report, "write_analysis", recording)
        train(cfg, out=root / "run", verbose=False)
    return root / "run", root / "packed", photos


def _test_files(photos: Path) -> list[Path]:
    """The test images in the packed (and evaluated) order."""
    return sorted((photos / "test").glob("*/*"), key=lambda p: (p.parent.name, p.name))


def test_the_view_is_recorded_in_the_weights(streamed_run):
    run, _, _ = streamed_run
    _, meta = load_weights(run / "model.safetensors")
    assert EvalView.from_metadata(meta) == EvalView(20, 16)
    assert meta["eval_view"] == {"resize_shorter": 20, "center_crop": 16}


@pytest.mark.parametrize("data", [None, "shards"])
def test_eval_reproduces_the_streamed_runs_test_figure(streamed_run, data, capsys):
    run, packed, _ = streamed_run
    summary = json.loads((run / "summary.json").read_text())
    args = ["eval", str(run), "--json", "--mistakes", "0"]
    if data:
        args += ["--data", f"shards:{packed}"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == summary["test_count"] == 6
    assert (result["acc"], result["loss"]) == (summary["test_acc"], summary["test_loss"])


def test_predict_shows_an_image_as_eval_does(streamed_run):
    """predict's input for an image file is eval's input for the same image (the run's view,
    not the training size squashed, decoded as eval decodes): equal, JPEG too."""
    run, packed, photos = streamed_run
    model, meta = load_model(run)
    split = open_test_set(meta)
    evaluated = torch.cat([x for x, _ in loader_for(meta, split, batch_size=6)])
    files = _test_files(photos)
    assert len(files) == len(split)
    for path, x in zip(files, evaluated):
        shown = preprocess(read_images([path], meta)[0], meta)[0]
        assert shown.shape == x.shape == (3, 16, 16)
        assert torch.equal(shown, x), path.name


def test_the_runs_own_mistakes_picture_shows_the_runs_view(streamed_run):
    """The test images a streamed run's report draws (mistakes.png) are each file through the
    run's evaluation view, as eval shows them: Resize(20) + CenterCrop(16), JPEG decoded with the
    accurate IDCT (not the training side's square box, not the fast IDCT)."""
    _, _, photos = streamed_run
    drawn, view = DRAWN["images"], EvalView(20, 16)
    files = _test_files(photos)
    assert drawn.shape == (len(files), 3, 16, 16)
    for i, path in enumerate(files):
        assert torch.equal(drawn[i], view.read(path.read_bytes(), 3)), path.name


def test_export_checks_on_the_packed_test_images(streamed_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from resnetlab.inference.onnx import export_run, read_onnx_meta

    run, packed, _ = streamed_run
    result = export_run(run, out=tmp_path / "m.onnx", check_images=4)
    assert result["input_size"] == [3, 16, 16]
    assert result["check"]["inputs"] == f"4 shards:{packed} test images"
    assert read_onnx_meta(tmp_path / "m.onnx")["eval_view"] == EvalView(20, 16).to_metadata()


def test_a_resize_of_the_users_own_carries_to_evaluation(tmp_path):
    cfg = make_config("imagenet", resize=64)
    assert (cfg.eval_resize, cfg.eval_crop) == (None, None)  # not the preset's 232/224
    assert (make_config("imagenet").eval_resize, make_config("imagenet").eval_crop) == (232, 224)
    kept = make_config("imagenet", resize=64, eval_crop=60)
    assert (kept.eval_resize, kept.eval_crop) == (None, 60)

    root = tmp_path / "photos"
    pack_folder(write_folder(root, train=4, test=2), tmp_path / "packed")
    from resnetlab.train.setup import Splits, weights_metadata

    split = open_shards(tmp_path / "packed", False)
    meta = weights_metadata(
        make_config("imagenet", data=f"shards:{tmp_path / 'packed'}", resize=16),
        Splits(split, None, split),
        None,
    )
    assert EvalView.from_metadata(meta) == EvalView(18, 16)  # round(16 / 0.875)


def test_evaluating_larger_than_the_users_resize_is_one_warning():
    lines = []
    check_eval_sizes(
        make_config("imagenet", resize=64, eval_crop=224, eval_resize=232), lines.append
    )
    assert len(lines) == 1 and "224 px" in lines[0] and "64 px" in lines[0]
    quiet = []
    check_eval_sizes(make_config("imagenet"), quiet.append)  # the preset's own FixRes: no warning
    check_eval_sizes(make_config("imagenet", resize=64), quiet.append)  # carried: 73/64
    assert quiet == []


def test_the_report_and_eval_draw_a_streamed_runs_mistakes(streamed_run, tmp_path, capsys):
    """The analysis the report recomputes for a run without it (ensure_analysis) reads the
    packed test set through the view, and gives the run's own confusion matrix."""
    from resnetlab.inference.eval_run import ensure_analysis

    run, _, _ = streamed_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("mistakes.csv", "confusion.csv", "mistakes.png"):
        (copy / name).unlink(missing_ok=True)
    assert ensure_analysis(copy, device="cpu")
    assert (copy / "confusion.csv").read_text() == (run / "confusion.csv").read_text()
    assert (copy / "mistakes.png").stat().st_size > 0
    if importlib.util.find_spec("captum"):  # the Grad-CAM row, drawn from the packed test set
        from resnetlab.inference.explain import MISTAKES_CAM, ensure_mistakes_cam

        assert (run / MISTAKES_CAM).exists()  # the run drew its own
        (copy / MISTAKES_CAM).unlink()
        assert ensure_mistakes_cam(copy) and (copy / MISTAKES_CAM).exists()
    assert cli.main(["eval", str(copy), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "confusion.csv").read_text() == (run / "confusion.csv").read_text()
    assert "most confident in" in capsys.readouterr().out
