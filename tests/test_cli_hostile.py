"""Bad command lines, as a table: every sub-command's numeric flags at 0, negative, huge and
non-numeric values, unknown names, files where folders are wanted and the reverse. Each exits
with status 2 and says what was wrong on stderr (one line of ours, or argparse's usage and its one
error line); nothing prints a traceback, and nothing starts working before it has refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnetlab import cli

HUGE = "99999999999999999999"  # beyond 64 bits
NODATA = [
    "--data-dir",
    "/nonexistent-data",
]  # a flag that was wrongly accepted fails later, with status 1, not 2
FILE = (
    "/etc/hostname" if Path("/etc/hostname").is_file() else __file__
)  # a file where a folder is wanted


def _train(flag: str, value: str) -> list[str]:
    return ["train", flag, value, *NODATA]


OURS = [  # refused by resnetlab with one line of its own
    *[_train("--lr", v) for v in ("0", "-1", "nan", "inf", "1e400", "-0.0")],
    *[
        _train(f, v)
        for f in ("--epochs", "--batch-size", "--subset", "--resize")
        for v in ("0", "-1")
    ],
    _train("--val-split", "-1"),
    *[_train("--resize", v) for v in ("4097", HUGE)],  # tracebacks once the data was loaded
    _train("--seed", HUGE),  # a ValueError traceback from torch.manual_seed
    *[
        ["experiment", "degradation", "--width", v, *NODATA] for v in ("4097", HUGE)
    ],  # a TypeError traceback
    *[["bench", "--resize", v, *NODATA] for v in ("4097", HUGE)],  # a TypeError traceback
    *[_train("--nproc", v) for v in ("0", "-1", HUGE)],  # HUGE once started torchrun, which hung
    ["train", "--preset", "fastest"],
    ["train", "--data", "nosuch"],
    _train("--device", "tpu"),
    ["train", "--data-dir", FILE],  # a file where the data folder is wanted
    ["train", "--resume", "/x", "--lr", "0.1"],
    ["summary", "nosuch"],
    ["models", "nosuch*"],
    *[
        ["summary", "resnet18", "--batch-size", v] for v in ("0", "-1", HUGE)
    ],  # HUGE was a TypeError traceback
    ["summary", "resnet18", "--depth", "-1"],
    *[
        ["summary", "resnet18", "--input-size", *v]
        for v in (["0", "28", "28"], ["1", "-1", "28"], ["3", HUGE, "1"], [HUGE, HUGE, HUGE])
    ],
    *[["predict", "/nonexistent", "x.png", "--top-k", v] for v in ("0", "-1")],
    *[
        ["experiment", "degradation", f, v, *NODATA]
        for f in ("--epochs", "--width", "--lr")
        for v in ("0", "-1")
    ],
    ["experiment", "degradation", "--lr", "nan", *NODATA],
    ["experiment", "degradation", "--subset", "-1", *NODATA],
    *[
        ["experiment", "degradation", "--depths", *v, *NODATA]
        for v in (["0", "20"], ["-1", "20"], ["20", "20"], ["7", "9"], [HUGE, "20"])
    ],
    *[
        ["bench", f, v, *NODATA]
        for f in ("--batch-size", "--resize", "--steps", "--repeats", "--threads")
        for v in ("0", "-1")
    ],
    ["bench", "--threads", HUGE, *NODATA],  # was a ValueError traceback
    ["bench", "--model", "nosuch", *NODATA],
    ["bench", "--variants", "nosuch", *NODATA],
    ["bench", "--device", "tpu", *NODATA],
    ["data", "fetch", "nosuch"],
    ["data", "fetch", "imagefolder:/tmp"],
    ["data", "list", "--data-dir", FILE],  # listed every dataset as missing, status 0
]

ARGPARSE = [  # refused by argparse: its usage line, then "resnetlab ...: error: argument ..."
    *[
        _train(f, v)
        for f in (
            "--epochs",
            "--batch-size",
            "--resize",
            "--val-split",
            "--seed",
            "--subset",
            "--nproc",
        )
        for v in ("abc", "1.5", "")
    ],
    _train("--lr", "abc"),
    _train("--lr", "-inf"),
    _train("--lr", "0x10"),
    ["summary", "resnet18", "--batch-size", "abc"],
    ["summary", "resnet18", "--depth", "1e3"],
    ["summary", "resnet18", "--input-size", "1", "2"],
    ["eval", "/x", "--batch-size", "abc"],
    ["predict", "/x", "y.png", "--top-k", "two"],
    ["predict", "/x"],
    *[
        ["experiment", "degradation", f, "abc"]
        for f in ("--epochs", "--width", "--subset", "--lr", "--seed")
    ],
    ["experiment", "degradation", "--depths", "20"],
    ["experiment", "nosuch"],
    ["experiment"],
    *[
        ["bench", f, "abc"]
        for f in ("--batch-size", "--resize", "--steps", "--repeats", "--threads")
    ],
    ["data", "nosuch"],
    ["data"],
    ["nosuch"],
    [],
    ["train", "--nosuch"],
]


@pytest.mark.parametrize("argv", OURS, ids=[" ".join(a[:4]) for a in OURS])
def test_refused_with_one_line_of_ours(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("resnetlab: error: ") and err.count("\n") == 1, err
    assert out == ""


@pytest.mark.parametrize("argv", ARGPARSE, ids=[" ".join(a[:4]) or "(nothing)" for a in ARGPARSE])
def test_refused_by_argparse_with_usage_and_one_error_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2
    assert err.startswith("usage: resnetlab") and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("resnetlab") and ": error: " in last, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from resnetlab.models import create_model
    from resnetlab.weights import save_weights

    run = tmp_path_factory.mktemp("run")
    model = create_model("resnet20", num_classes=3, in_chans=1, width=4)
    save_weights(
        run / "model.safetensors",
        model.state_dict(),
        {
            "model": "resnet20",
            "model_kwargs": {"width": 4},
            "in_chans": 1,
            "num_classes": 3,
            "classes": ["a", "b", "c"],
            "input_size": [1, 8, 8],
            "resize": 8,
            "normalize": None,
            "data": "fashion-mnist",
        },
    )
    return run


def test_paths_of_the_wrong_kind_get_one_line(weights, tmp_path, capsys):
    """A folder where an image is wanted, a text file where weights or an image are, and so on."""
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "folder.png").mkdir()
    cases = [
        (["predict", str(weights), str(tmp_path)], 2, "cannot read image"),  # a folder for an image
        (["predict", str(weights), str(tmp_path / "notes.txt")], 2, "cannot read image"),
        (["predict", str(weights), str(tmp_path / "folder.png")], 2, "cannot read image"),
        (["predict", str(weights), str(tmp_path / "missing.png")], 2, "does not exist"),
        (
            ["predict", str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt")],
            1,
            "not a valid safetensors",
        ),
        (["eval", str(tmp_path / "notes.txt")], 1, "not a valid safetensors"),
        (["eval", str(tmp_path)], 1, "holds no model.safetensors"),  # a folder that is no run
        (
            ["train", "--resume", str(tmp_path / "notes.txt")],
            1,
            "not a readable resnetlab checkpoint",
        ),
        (["train", "--resume", str(tmp_path)], 1, "no checkpoint at"),
        (["train", "--data", f"imagefolder:{tmp_path / 'notes.txt'}"], 1, "no such folder"),
    ]
    for argv, status, words in cases:
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert (code, err.count("\n")) == (status, 1) and words in err, (argv, code, err)


def test_eval_and_predict_flags_on_real_weights(weights, tmp_path, capsys):
    """The numeric flags of eval and predict once the weights load (the table's cases stop earlier)."""
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    for argv in (
        ["eval", str(weights), "--batch-size", "0", *NODATA],
        ["eval", str(weights), "--batch-size", "-1", *NODATA],
        ["predict", str(weights), str(tmp_path / "x.png"), "--top-k", "0"],
        ["eval", str(weights), "--device", "tpu"],
        ["predict", str(weights), str(tmp_path / "x.png"), "--device", "tpu"],
    ):
        code = cli.main(argv)
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and err.startswith("resnetlab: error: "), (
            argv,
            err,
        )
    assert (
        cli.main(
            ["predict", str(weights), str(tmp_path / "x.png"), "--top-k", "99999999999999999999"]
        )
        == 0
    )  # all classes


@pytest.mark.needs_fashion_mnist
def test_train_out_that_is_a_file(capsys):
    code = cli.main(["train", "--subset", "64", "--val-split", "0", "--epochs", "1", "--out", FILE])
    _, err = capsys.readouterr()
    assert code == 2 and "is a file; give a folder" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--lr", "nan"],
        ["summary", "resnet18", "--batch-size", HUGE],
        ["bench", "--threads", HUGE],
    ],
)
def test_as_a_user_runs_it_no_traceback(argv):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (
        done.returncode == 2
        and done.stderr.startswith("resnetlab: error: ")
        and done.stderr.count("\n") == 1
    ), done.stderr
