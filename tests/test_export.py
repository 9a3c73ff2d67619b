"""`resnetlab export` (ONNX, checked by onnxruntime before it is kept) and `predict model.onnx`."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from resnetlab import cli  # noqa: E402
from resnetlab.data import Loader, get_dataset_info, load_dataset  # noqa: E402
from resnetlab.errors import ExportError, UsageError  # noqa: E402
from resnetlab.inference import onnx as export  # noqa: E402
from resnetlab.models import Residual, create_model  # noqa: E402
from resnetlab.weights import save_weights  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(args, capsys):
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training leaves it: a narrow ResNet-20 whose batch norms have seen real
    Fashion-MNIST batches (so the folding has real statistics to fold), saved with its metadata."""
    torch.manual_seed(0)
    test = load_dataset("fashion-mnist", train=False)
    info = get_dataset_info("fashion-mnist")
    model = create_model("resnet20", num_classes=10, in_chans=1, width=8)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batches below
    with torch.no_grad():
        for x, _ in Loader(
            test.take(512, seed=1), 128, shuffle=False, normalize=(info.mean, info.std)
        ):
            model.train()(x)
    meta = {
        "model": "resnet20",
        "model_kwargs": {"width": 8},
        "in_chans": 1,
        "num_classes": 10,
        "classes": test.classes,
        "input_size": [1, 28, 28],
        "resize": None,
        "normalize": {"mean": list(info.mean), "std": list(info.std)},
        "data": "fashion-mnist",
        "epoch": 1,
    }
    out = tmp_path_factory.mktemp("export") / "run"
    save_weights(out / "model.safetensors", model.state_dict(), meta)
    return out


@pytest.fixture(scope="module")
def exported(run_dir):
    """The default export (dynamo exporter, dynamic batch) of the run, through the CLI."""
    code = cli.main(["export", str(run_dir), "--json"])
    assert code == 0
    return run_dir / "model.onnx"


@pytest.mark.needs_fashion_mnist
def test_export_is_checked_on_real_test_images(run_dir, exported, capsys):
    code, out, err = run_cli(
        ["export", str(run_dir), "--out", str(run_dir / "again.onnx"), "--json"], capsys
    )
    assert code == 0, err
    r = json.loads(out)
    c = r["check"]
    assert c["passed"] and c["inputs"] == "64 fashion-mnist test images" and c["count"] == 64
    assert (
        c["max_abs_diff"] <= 1e-4 and c["top1_agree"] == 64 and c["runs"] == 3
    )  # a batch of 64, then of 1 twice
    assert 0.1 < c["max_abs_logit"] < 100, "a sane net: logits of ordinary size"
    assert (
        r["batch"] == "dynamic"
        and r["input_size"] == [1, 28, 28]
        and r["exporter"] in ("dynamo", "torchscript")
    )
    assert (
        r["weights"] == str(run_dir / "model.safetensors")
        and r["bytes"] == (run_dir / "again.onnx").stat().st_size
    )
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.needs_fashion_mnist
def test_metadata_carries_what_a_consumer_needs(exported):
    proto = onnx.load(str(exported))
    props = {p.key: p.value for p in proto.metadata_props}
    assert (
        json.loads(props["classes"])[0] == "T-shirt/top" and len(json.loads(props["classes"])) == 10
    )
    assert json.loads(props["input_size"]) == [1, 28, 28] and json.loads(props["resize"]) is None
    # the training normalisation, exactly as saved: Fashion-MNIST's pixel mean and std (0.2860,
    # 0.3530 over the 60,000 training images, test_data_datasets.py measures them)
    assert json.loads(props["normalize"]) == {"mean": [0.286], "std": [0.353]}
    assert json.loads(props["model"]) == "resnet20"
    assert "divided by 255" in props["preprocess"]
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"], (
        "batch norms are folded"
    )
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (inp,), (_outp,) = session.get_inputs(), session.get_outputs()
    assert (
        inp.name == "input" and inp.shape[1:] == [1, 28, 28] and not isinstance(inp.shape[0], int)
    )
    assert session.run(None, {"input": torch.zeros(3, 1, 28, 28).numpy()})[0].shape == (3, 10)


@pytest.mark.needs_fashion_mnist
def test_fixed_batch_with_the_torchscript_exporter(run_dir, capsys):
    out = run_dir / "b4.onnx"
    code, text, err = run_cli(
        [
            "export",
            str(run_dir / "model.safetensors"),
            "--batch",
            "4",
            "--exporter",
            "torchscript",
            "--opset",
            "17",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert "input [4, 1, 28, 28], opset 17, torchscript exporter" in text
    assert "checked with onnxruntime" in text and "top-1 agrees on 64/64" in text
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 1, 28, 28]


class _Perturbed:
    """An onnxruntime session whose logits are off by 0.01: what a broken export would give."""

    def __init__(self, session):
        self.session = session

    def run(self, names, feeds):
        return [y + 0.01 for y in self.session.run(names, feeds)]


@pytest.mark.needs_fashion_mnist
def test_a_mismatch_writes_nothing_and_says_by_how_much(run_dir, monkeypatch, capsys):
    real = export._ort_session
    monkeypatch.setattr(export, "_ort_session", lambda data: _Perturbed(real(data)))
    code, out, err = run_cli(
        ["export", str(run_dir), "--out", str(run_dir / "bad.onnx"), "--exporter", "torchscript"],
        capsys,
    )
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(
        "resnetlab: error: onnxruntime's logits differ from PyTorch's by up to 0.01 "
    )
    assert "(tolerance 0.0001)" in err and "bad.onnx not written" in err and "rounding" not in err
    assert not (run_dir / "bad.onnx").exists() and not list(run_dir.glob("*.tmp"))


@pytest.mark.needs_fashion_mnist
def test_a_tolerance_below_float32_rounding_is_explained(run_dir, tmp_path):
    with pytest.raises(ExportError) as e:
        export.export_run(
            run_dir,
            out=tmp_path / "m.onnx",
            tolerance=1e-12,
            exporter="torchscript",
            check_images=8,
        )
    assert "PyTorch's own float32 logits differ from float64 ones by up to" in str(e.value)
    assert "rounding, not a broken export; pass --tolerance" in str(e.value) and "\n" not in str(
        e.value
    )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.needs_fashion_mnist
def test_random_inputs_when_the_data_is_absent(run_dir, tmp_path):
    r = export.export_run(
        run_dir, out=tmp_path / "m.onnx", data_dir=str(tmp_path / "empty"), exporter="torchscript"
    )
    assert (
        r["check"]["passed"]
        and r["check"]["inputs"] == "random normal inputs (fashion-mnist's test data was not found)"
    )
    assert "random normal inputs" in export.format_export(r)


def _save_images(folder):
    from PIL import Image

    test = load_dataset("fashion-mnist", train=False)
    paths = []
    for i in (0, 1, 2):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(paths[-1])
    paths.append(folder / "colour.png")  # RGB and another size: converted to grey, resized
    Image.fromarray(torch.randint(0, 255, (40, 30, 3), dtype=torch.uint8).numpy()).save(paths[-1])
    return [str(p) for p in paths]


@pytest.mark.needs_fashion_mnist
def test_predict_on_onnx_equals_predict_on_the_run(run_dir, exported, tmp_path, capsys):
    pytest.importorskip("PIL")
    images = _save_images(tmp_path)
    code, from_run, err = run_cli(
        ["predict", str(run_dir), *images, "--top-k", "3", "--json"], capsys
    )
    assert code == 0, err
    code, from_onnx, err = run_cli(
        ["predict", str(exported), *images, "--top-k", "3", "--json"], capsys
    )
    assert code == 0, err
    a, b = json.loads(from_run), json.loads(from_onnx)
    assert [[t["class"] for t in r["top"]] for r in a] == [
        [t["class"] for t in r["top"]] for r in b
    ]
    assert (
        max(
            abs(x["prob"] - y["prob"]) for ra, rb in zip(a, b) for x, y in zip(ra["top"], rb["top"])
        )
        < 1e-5
    )
    code, text, _ = run_cli(["predict", str(exported), images[0], "--top-k", "2"], capsys)
    assert code == 0 and text.startswith(images[0] + ": ") and text.count(",") == 1


@pytest.mark.needs_fashion_mnist
def test_predict_on_a_fixed_batch_model_pads_the_last_slice(run_dir, exported, tmp_path):
    pytest.importorskip("PIL")
    images = _save_images(tmp_path)  # 4 images into a model of batch 3: 3, then 1 padded to 3
    export.export_run(run_dir, out=tmp_path / "b3.onnx", batch=3, exporter="torchscript")
    fixed = export.predict_onnx(tmp_path / "b3.onnx", images, top_k=1)
    dynamic = export.predict_onnx(exported, images, top_k=1)
    assert [r["image"] for r in fixed] == images
    assert [r["top"][0]["class"] for r in fixed] == [r["top"][0]["class"] for r in dynamic]
    assert (
        max(abs(a["top"][0]["prob"] - b["top"][0]["prob"]) for a, b in zip(fixed, dynamic)) < 1e-5
    )


def test_an_onnx_file_not_from_resnetlab_is_one_line(tmp_path, capsys):
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 1])
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [x]
        )
    )
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    code, _, err = run_cli(["predict", str(tmp_path / "foreign.onnx"), "x.png"], capsys)
    assert code == 1 and err.count("\n") == 1 and "not exported by resnetlab" in err
    (tmp_path / "junk.onnx").write_bytes(b"\x08junk")
    code, _, err = run_cli(["predict", str(tmp_path / "junk.onnx"), "x.png"], capsys)
    assert code == 1 and err.count("\n") == 1 and "not a readable ONNX model" in err


@pytest.mark.needs_fashion_mnist
def test_missing_extra_names_it(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(
        sys.modules, "onnxruntime", None
    )  # `import onnxruntime` now raises ImportError
    code, out, err = run_cli(["export", str(run_dir)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "onnxruntime is not installed" in err and "pip install 'resnetlab[onnx]'" in err
    code, _, err = run_cli(["predict", str(run_dir / "model.onnx"), "x.png"], capsys)
    assert code == 2 and "pip install 'resnetlab[onnx]'" in err


@pytest.mark.needs_fashion_mnist
def test_bad_arguments_are_usage_errors(run_dir, tmp_path, capsys):
    for args, words in (
        (["--batch", "0"], "--batch takes a positive number"),
        (["--batch", "many"], "--batch takes a positive number"),
        (["--out", str(tmp_path / "m.txt")], "should end in .onnx"),
        (["--tolerance", "0"], "--tolerance must be positive"),
        (["--check-images", "0"], "--check-images must be positive"),
    ):
        code, _, err = run_cli(["export", str(run_dir), *args], capsys)
        assert code == 2 and words in err and err.count("\n") == 1, (args, err)
    code, _, err = run_cli(["export", str(tmp_path / "nothing")], capsys)
    assert code == 1 and "does not exist" in err


def test_the_textbook_nets_export(tmp_path):
    torch.manual_seed(0)
    d2l = create_model("resnet18_d2l", widths=(8, 8, 16, 16))  # in training mode, as built
    r = export.export_onnx(
        d2l, tmp_path / "d2l.onnx", input_size=(1, 64, 64), exporter="torchscript"
    )
    assert r["check"]["passed"] and r["check"]["inputs"] == "random normal inputs"
    assert d2l.training, "the caller's model is left as it was"
    # a lazily built net (the chapter's Residual(None, ...)): refused until it has run once
    lazy = nn.Sequential(
        nn.LazyConv2d(8, 3, padding=1),
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        Residual(None, 8, use_1x1conv=True, strides=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LazyLinear(10),
    )
    with pytest.raises(UsageError, match="lazy layers"):
        export.export_onnx(lazy, tmp_path / "lazy.onnx", input_size=(1, 32, 32))
    lazy(torch.randn(2, 1, 32, 32))
    r = export.export_onnx(
        lazy.eval(), tmp_path / "lazy.onnx", input_size=(1, 32, 32), classes=list("abcdefghij")
    )
    assert r["check"]["passed"] and (tmp_path / "lazy.onnx").exists()
    assert (
        json.loads(
            {p.key: p.value for p in onnx.load(str(tmp_path / "lazy.onnx")).metadata_props}[
                "classes"
            ]
        )[0]
        == "a"
    )


def test_a_model_that_cannot_run_at_that_size_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="does not run on a \\[2, 3, 28, 28\\] input") as e:
        export.export_onnx(
            create_model("resnet20", in_chans=1), tmp_path / "x.onnx", input_size=(3, 28, 28)
        )
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.onnx").exists()


def test_an_exporter_failure_is_one_line(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("no such op\nmore lines")

    monkeypatch.setitem(export.EXPORTERS, "dynamo", broken)
    monkeypatch.setitem(export.EXPORTERS, "torchscript", broken)
    with pytest.raises(ExportError) as e:
        export.export_onnx(
            create_model("resnet20", width=4), tmp_path / "x.onnx", input_size=(3, 32, 32)
        )
    assert str(e.value) == (
        "cannot export to ONNX: the dynamo exporter failed (RuntimeError: no such op); "
        "the torchscript exporter failed (RuntimeError: no such op)"
    )


def test_an_opset_below_the_dynamo_exporters_falls_back(tmp_path, capsys):
    net = create_model("resnet20", width=4)
    r = export.export_onnx(net, tmp_path / "o13.onnx", input_size=(3, 32, 32), opset=13)
    assert r["opset"] == 13 and r["exporter"] == "torchscript" and r["check"]["passed"]
    assert r["exporter_notes"] == ["the dynamo exporter made opset 18, not 13"]
    assert capsys.readouterr() == ("", ""), "the exporters' own output is kept quiet"
    with pytest.raises(
        ExportError, match="^cannot export to ONNX: the dynamo exporter made opset 18, not 13$"
    ):
        export.export_onnx(
            net, tmp_path / "d13.onnx", input_size=(3, 32, 32), opset=13, exporter="dynamo"
        )


@pytest.mark.needs_fashion_mnist
def test_eval_runs_an_onnx_model_as_it_runs_the_weights(run_dir, exported, tmp_path, capsys):
    """Issue 31, item 11: `eval` takes the exported .onnx as `predict` does, on the same test
    examples, and gives the weights' figures (ONNX runs float32: fp32 on both sides)."""
    from resnetlab.inference.eval_run import evaluate_run

    ours = evaluate_run(run_dir, device="cpu", precision="fp32", mistakes=0)
    theirs = evaluate_run(exported, device="cpu", mistakes=0)
    assert theirs["count"] == ours["count"] == 10000 and theirs["precision"] == "fp32"
    assert "onnxruntime" in theirs["precision_source"]
    assert abs(theirs["acc"] - ours["acc"]) <= 2 / 10000  # a rounding-level tie may flip
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-4)
    # a fixed-batch export: the last, smaller batch padded and the padding dropped
    export.export_run(run_dir, out=tmp_path / "b7.onnx", batch=7, exporter="torchscript")
    fixed = evaluate_run(tmp_path / "b7.onnx", device="cpu", mistakes=0, batch_size=100)
    assert fixed["count"] == 10000 and abs(fixed["acc"] - ours["acc"]) <= 2 / 10000


def test_the_check_counts_the_test_images_it_could_read(tmp_path):
    # a streamed image folder with an unreadable test image: the check's line counts those read
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image

    from resnetlab.data.path import Splits
    from resnetlab.data.shards import open_image_folder
    from resnetlab.train import make_config
    from resnetlab.train.setup import weights_metadata

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 3)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    good = (tmp_path / "test" / "a" / "0.png").read_bytes()
    (tmp_path / "test" / "a" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    data = f"imagefolder:{tmp_path}"
    train, test = open_image_folder(data, True), open_image_folder(data, False)
    cfg = make_config("quick", data=data, stream=True, resize=16, progressive_resize=0)
    meta = weights_metadata(cfg, Splits(train, None, test), None)
    x, inputs = export._test_batch(meta, 64, None)
    assert x.shape[0] == 5 and inputs == f"5 {data} test images"
