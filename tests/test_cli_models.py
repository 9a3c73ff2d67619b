"""`resnetlab summary` and `resnetlab models`: output, JSON, one-line errors and exit codes."""

import json
import subprocess
import sys

import pytest

from resnetlab.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_prints_the_table(capsys):
    code, out, err = run(capsys, "summary", "resnet18_d2l", "--depth", "1")
    assert code == 0 and err == ""
    for shape in ("1x64x56x56", "1x128x28x28", "1x256x14x14", "1x512x7x7", "1x512x1x1", "1x10"):
        assert shape in out
    assert "Total params:          11,178,378" in out and "FLOPs:" in out


def test_summary_json_and_options(capsys):
    code, out, _ = run(
        capsys,
        "summary",
        "resnet20",
        "--input-size",
        "1",
        "64",
        "64",
        "--batch-size",
        "3",
        "--depth",
        "0",
        "--json",
    )
    s = json.loads(out)
    assert code == 0 and s["rows"] == [] and s["input_size"] == [1, 64, 64]
    assert s["output_shape"] == [3, 10] and s["flops"] == 2 * s["macs"]
    assert s["total_params"] == 269_722 - 16 * 2 * 9  # a 1-channel stem


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "resnet19"], "unknown model 'resnet19'; did you mean: resnet18"),
        (
            ["summary", "resnet18", "--input-size", "3", "0", "32"],
            "input size must be three positive",
        ),
        (
            ["summary", "resnet18", "--input-size", "3", "-8", "32"],
            "input size must be three positive",
        ),
        (["summary", "resnet18", "--input-size", "3", "8", "8"], "too small for resnet18"),
        (["summary", "resnet18", "--batch-size", "0"], "batch size must be a positive integer"),
        (["models", "zzz*"], "no model matches 'zzz*'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("resnetlab: error: ") and message in err and err.count("\n") == 1


def test_models_table_and_json(capsys):
    code, out, _ = run(capsys, "models", "resnet5*")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["Model", "Params", "GFLOPs"]
    assert any(l.split()[:3] == ["resnet50", "25,557,032", "8.18"] for l in lines)
    assert any(l.startswith("resnet56") and "3x32x32" in l for l in lines)
    code, out, _ = run(capsys, "models", "wide*", "--json")
    listed = json.loads(out)
    assert [m["name"] for m in listed] == ["wide_resnet50_2", "wide_resnet101_2"]
    assert listed[1]["params"] == 126_886_696 and listed[1]["default_input_size"] == [3, 224, 224]


def test_models_lists_every_registered_model(capsys):
    from resnetlab.models import list_models

    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == list_models()


def test_python_dash_m_entry_point():
    # the error path: the exit status must survive `python -m`, with no traceback
    bad = subprocess.run(
        [sys.executable, "-m", "resnetlab", "summary", "resnet19"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert (
        bad.stderr.startswith("resnetlab: error: unknown model") and "Traceback" not in bad.stderr
    )
