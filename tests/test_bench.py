"""`resnetlab bench`: a smoke run (no timing assertions: figures depend on the machine and its load),
the variant names, the textbook baseline's pieces, and the command's errors."""

import json
import math

import pytest
import torch

from resnetlab.bench import Variant, format_report, parse_variant, preset_defaults
from resnetlab.cli import main
from resnetlab.errors import UsageError


@pytest.fixture(scope="module")
def smoke():
    """One tiny run of the CI smoke command; its JSON is shared by the checks below."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        # --threads 1: restored afterwards; on a shared 2-core machine one thread is far steadier
        code = main(
            [
                "bench",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--batch-size",
                "8",
                "--threads",
                "1",
                "--json",
            ]
        )
    assert code == 0, err.getvalue()
    assert torch.get_num_threads() == threads, "bench restores the thread count"
    assert torch.backends.cudnn.benchmark == cudnn_benchmark, (
        "bench restores cuDNN's autotuning flag"
    )
    return json.loads(out.getvalue()), err.getvalue()


@pytest.mark.needs_fashion_mnist
def test_smoke_json_is_sane(smoke):
    result, progress = smoke
    assert "warming up textbook" in progress  # progress goes to stderr, stdout is JSON only
    assert result["config"]["steps"] == 2 and result["config"]["batch_size"] == 8
    names = result["config"]["variants"]
    assert names[:2] == ["textbook", "fp32"]
    assert set(result["results"]) == set(names)
    for name, res in result["results"].items():
        for key in (
            "train_ex_s",
            "eval_ex_s",
            "loader_ex_s",
            "epoch_s",
            "train_ex_cpu_s",
            "eval_ex_cpu_s",
            "loader_ex_cpu_s",
            "epoch_cpu_s",
        ):
            assert math.isfinite(res[key]) and res[key] > 0, (name, key, res[key])
        assert res["epoch_s"] == pytest.approx(res["epoch_train_s"] + res["epoch_eval_s"])
        assert res["epoch_cpu_s"] == pytest.approx(
            res["epoch_train_cpu_s"] + res["epoch_eval_cpu_s"]
        )
        assert len(res["rounds"]) == 1
        assert res["peak_mib"] is None or res["peak_mib"] >= 0
    base = result["results"]["textbook"]
    assert set(result["ratios"]) == set(names) - {"textbook"}
    for name, ratio in result["ratios"].items():
        res = result["results"][name]
        assert ratio["train"] == pytest.approx(res["train_ex_s"] / base["train_ex_s"])
        assert ratio["epoch"] == pytest.approx(base["epoch_s"] / res["epoch_s"])
        assert ratio["eval_cpu"] == pytest.approx(res["eval_ex_cpu_s"] / base["eval_ex_cpu_s"])
    assert result["results"]["textbook"]["settings"]["textbook"] is True
    assert result["results"]["fp32"]["settings"] == {
        "textbook": False,
        "amp": False,
        "channels_last": True,
        "fuse": True,
        "foreach": True,
        "compile": False,
        "capture": False,
        "eval_batch_size": 256,
    }  # capture: as resolved here (a CPU: none)
    # the textbook recipe stays fp32; its layout is what the probe measured fastest
    assert result["defaults"]["d2l"] in ("fp32", "fp32-nchw")
    probe = result["defaults_probe"]  # the same policy as a run's, at the bench's shape
    assert probe["probe_seconds"] <= 3.5 and probe["line"].startswith("precision and layout: ")
    assert result["machine"]["cpu"] and result["machine"]["process_peak_rss_mib"] > 0


@pytest.mark.needs_fashion_mnist
def test_compute_ceiling_is_consistent(smoke):
    result, _ = smoke
    compute, results = result["compute"], result["results"]
    peaks = compute["matmul_peak_gflop_s"]
    assert "fp32" in peaks and all(math.isfinite(v) and v > 0 for v in peaks.values())
    assert ("bf16" in peaks) == any(r["settings"]["amp"] for r in results.values())
    for res in results.values():
        assert res["train_gflop_s"] == pytest.approx(
            compute["train_gflop_per_example"] * res["train_ex_s"]
        )
    assert compute["train_ceiling"] == pytest.approx(
        max(peaks.values()) / results["textbook"]["train_gflop_s"]
    )
    assert f"trains at most {compute['train_ceiling']:.2f}x the textbook" in format_report(result)


def test_training_flops_are_forward_and_backward():
    """Backward costs two forwards (input and weight gradients), less the first convolution's input
    gradient, which nothing needs."""
    from resnetlab.bench import training_flops_per_example
    from resnetlab.models import summarize

    forward = summarize("resnet18_d2l", input_size=(1, 96, 96)).flops
    first_conv = 2 * 64 * 48 * 48 * 7 * 7  # 7x7, 1 -> 64 channels, stride 2: its input gradient
    assert training_flops_per_example("resnet18_d2l", 1, 10, 96) == 3 * forward - first_conv


@pytest.mark.needs_fashion_mnist
def test_text_report_has_every_figure_and_ratio(smoke):
    result, _ = smoke
    text = format_report(result)
    for label in (
        "training ex/s",
        "training GFLOP/s",
        "evaluation",
        "loader",
        "epoch s (est.)",
        "peak MiB",
    ):
        assert label in text
    assert f"({result['ratios']['fp32']['train']:.2f}x)" in text
    assert "extrapolated to 60000 training and 10000 test examples" in text
    assert "d2l: fp32" in text


def test_variant_names():
    assert parse_variant("textbook") == Variant(
        "textbook", textbook=True, channels_last=False, fuse=False, foreach=False
    )
    assert parse_variant("fp32") == Variant("fp32")
    v = parse_variant("bf16-nchw-compile")
    assert v.amp and not v.channels_last and v.compile and v.fuse and v.foreach
    assert not parse_variant("fp32-noforeach-nofuse").foreach
    for bad in ("fp16", "bf16-fast", "textbook-compile"):
        with pytest.raises(UsageError, match="variant"):
            parse_variant(bad)


def test_preset_defaults_follow_presets_and_bf16_pays():
    from resnetlab.train.precision import bf16_pays

    cpu = torch.device("cpu")
    defaults = preset_defaults(cpu)
    assert defaults["d2l"] == "fp32"
    assert defaults["quick"] == ("bf16" if bf16_pays(cpu) else "fp32")


def test_preset_defaults_are_the_probes_pick_among_what_each_preset_allows():
    cpu = torch.device("cpu")
    figures = {
        "bf16 channels_last": 0.2,
        "bf16 NCHW": 0.3,
        "fp32 channels_last": 0.5,
        "fp32 NCHW": 0.4,
    }
    defaults = preset_defaults(cpu, figures)
    assert defaults["d2l"] == "fp32-nchw"  # fp32 by the preset, NCHW by measurement
    assert defaults["quick"] == "bf16"
    assert (
        preset_defaults(cpu, {"fp32 channels_last": 0.5, "fp32 NCHW": 0.4})["quick"] == "fp32-nchw"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be a positive"),
        (["--variants", "textbook,fp64"], "unknown bench variant 'fp64'"),
        (["--variants", "fp32,fp32"], "each variant once"),
        (["--model", "resnet9000"], "resnet9000"),
        pytest.param(
            ["--steps", "300", "--batch-size", "256"],
            "lower one of them",
            marks=pytest.mark.needs_fashion_mnist,
        ),
        (
            ["--device", "cuda"] if not torch.cuda.is_available() else ["--resize", "4"],
            "cuda" if not torch.cuda.is_available() else "at least 8",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    code = main(["bench", "--repeats", "1", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("resnetlab: error:") and message in err[-1]


def test_textbook_pipeline_matches_torchvision_semantics():
    """PIL resize then ToTensor: float32 [1, r, r] in [0, 1]; at the native size exactly x / 255."""
    from resnetlab.bench.textbook_baseline import PILImages, pil_loader

    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(5)
    x, y = PILImages(images, labels)[3]
    assert x.dtype == torch.float32 and y == 3
    torch.testing.assert_close(x, images[3].float() / 255)
    big, _ = PILImages(images, labels, resize=96)[0]
    assert big.shape == (1, 96, 96) and 0 <= float(big.min()) and float(big.max()) <= 1
    xb, yb = next(iter(pil_loader(images, labels, 4, shuffle=False, resize=32)))
    assert xb.shape == (4, 1, 32, 32) and yb.tolist() == [0, 1, 2, 3]


def test_notebook_net_is_resnetlabs_textbook_net():
    """The baseline's verbatim cells and resnetlab's resnet18_d2l are the same net, key for key."""
    from resnetlab.bench.textbook_baseline import notebook_resnet18
    from resnetlab.models import create_model

    torch.manual_seed(0)
    notebook = notebook_resnet18()
    torch.manual_seed(0)
    ours = create_model("resnet18_d2l")
    theirs, mine = notebook.state_dict(), ours.state_dict()
    assert list(theirs) == list(mine)
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_gpu_script_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu.sh end to end with tiny runs on the CPU: every step succeeds and leaves its JSON."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
    # One thread per child: the runs are tiny, and on a shared 2-core machine two threads stall.
    env = dict(
        os.environ,
        OUT=str(tmp_path),
        PYTHON=os.environ.get("PYTHON", "python3"),
        OMP_NUM_THREADS="1",
        SEEDS="0",
    )
    proc = subprocess.run(
        ["bash", str(script), "--dry-run", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == [
        "tests",
        "d2l_bf16",
        "d2l",
        "d2l_compile",
        "bench",
        "quick_s0",
        "best_s0",
    ]
    assert all(r[1] == "0" for r in rows)
    for name in ("d2l_bf16", "d2l", "d2l_compile", "quick_s0", "best_s0"):
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        assert summary["preset"] == name.split("_")[0] and summary["device"] == "cpu"
        assert (tmp_path / "runs" / name / "metrics.csv").exists()
        assert not list((tmp_path / "runs" / name).glob("*.safetensors")), (
            "weights are not sent back"
        )
    amp = {
        name: json.loads((tmp_path / "runs" / name / "config.json").read_text())["config"]["amp"]
        for name in ("d2l_bf16", "d2l", "d2l_compile")
    }
    assert amp == {
        "d2l_bf16": True,
        "d2l": False,
        "d2l_compile": True,
    }  # bf16 and the textbook's fp32
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert "textbook" in bench["results"] and bench["config"]["device"] == "cpu"
    assert "torch" in (tmp_path / "env.txt").read_text()


def test_timed_rounds_capture_no_evaluation_graph(monkeypatch):
    """A captured variant captures its evaluation graph once, in the untimed warm-up round: every
    capture synchronises and empties the allocator's cache, which would bias the variant timed
    next. Checked on the CPU with the capture taken out (tests/train/test_graphs.py's stand-in)."""
    import contextlib
    import functools

    from resnetlab.bench import measure, runners
    from resnetlab.data import Dataset
    from resnetlab.models.fuse import fuse_bn
    from resnetlab.train.graphs import CapturedEvaluator
    from resnetlab.train.setup import Splits

    class FakeGraph:
        def __init__(self, fn):
            self.fn, self.replays = fn, 0

        def replay(self):
            self.replays += 1
            self.fn()

    class fake:  # capture keeps the function, replay calls it
        captured = []
        side_stream = staticmethod(lambda device: contextlib.nullcontext())

        @classmethod
        def capture(cls, fn):
            cls.captured.append(FakeGraph(fn))
            return cls.captured[-1]

    monkeypatch.setattr(
        runners, "CapturedEvaluator", functools.partial(CapturedEvaluator, graphs=fake)
    )
    g = torch.Generator().manual_seed(0)
    ds = Dataset(
        "t",
        torch.randint(0, 256, (32, 1, 8, 8), generator=g, dtype=torch.uint8),
        torch.arange(32) % 10,
        [str(i) for i in range(10)],
    )
    cpu = torch.device("cpu")
    runner = runners.ResnetlabRunner(
        parse_variant("fp32"), "resnet20", Splits(ds, None, ds), 8, None, 2, cpu, 0
    )
    runner.capture = True  # as on CUDA, for the evaluation
    measure.timed_round(runner, cpu)  # the warm-up round: the one capture
    assert len(fake.captured) == 1
    graph = fake.captured[0]
    for _ in range(2):  # timed rounds replay it, with the current weights folded in
        measure.timed_round(runner, cpu)
    assert len(fake.captured) == 1 and graph.replays > 2
    folded = runner.evaluator.model.state_dict()
    expected = fuse_bn(runner.model).state_dict()
    assert all(torch.equal(folded[k], expected[k]) for k in expected)


def test_noforeach_with_captured_steps_is_refused_in_one_line():
    """On CUDA resnetlab's variants capture their steps, whose update is always foreach."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    with pytest.raises(UsageError, match="add -nograph") as caught:
        parse_variant("bf16-noforeach", cuda)
    assert "\n" not in str(caught.value)
    assert not parse_variant("bf16-noforeach-nograph", cuda).foreach
    assert not parse_variant("fp32-noforeach", cpu).foreach  # nothing is captured on a CPU
    assert not parse_variant("fp32-noforeach-compile", cuda).foreach  # compiled: not captured
    assert parse_variant("textbook", cuda).textbook


def _gpu_script_with_fake_python(tmp_path, cuda: bool, *args):
    """benchmarks/gpu.sh with $PYTHON a stand-in that logs each call's arguments and
    RESNETLAB_TEST_REQUIRE_DATA, and answers the CUDA check as told: the script's own logic, in
    milliseconds."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'echo "REQUIRE=${RESNETLAB_TEST_REQUIRE_DATA:-} $*" >> "$FAKE_LOG"\n'
        'case "$*" in *cuda.is_available*) exit "$FAKE_CUDA" ;; esac\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    log.unlink(missing_ok=True)  # this call's log only
    env = dict(
        os.environ,
        OUT=str(out),
        PYTHON=str(fake),
        FAKE_LOG=str(log),
        FAKE_CUDA=str(0 if cuda else 3),
    )
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
    proc = subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60
    )
    return proc, log.read_text() if log.exists() else ""


def test_gpu_script_refuses_without_cuda_in_one_line(tmp_path):
    proc, calls = _gpu_script_with_fake_python(tmp_path, False, "--only", "tests")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch.cuda.is_available() is False" in lines[0]
    assert "pytest" not in calls  # nothing ran
    # --dry-run --device cpu checks the script's plumbing on a CPU: no CUDA check there
    proc, calls = _gpu_script_with_fake_python(
        tmp_path, False, "--dry-run", "--device", "cpu", "--only", "tests"
    )
    assert proc.returncode == 0, proc.stderr
    assert "cuda.is_available" not in calls and "pytest" in calls


def test_gpu_script_requires_the_data_for_its_cuda_tests(tmp_path):
    """Without Fashion-MNIST every CUDA test would skip and the step pass: the step sets
    RESNETLAB_TEST_REQUIRE_DATA=1, which turns that skip into an error (tests/conftest.py)."""
    proc, calls = _gpu_script_with_fake_python(tmp_path, True, "--only", "tests")
    assert proc.returncode == 0, proc.stderr
    pytest_calls = [line for line in calls.splitlines() if "-m pytest" in line]
    assert len(pytest_calls) == 1 and pytest_calls[0].startswith("REQUIRE=1 ")


def test_the_default_path_is_among_the_variants_measured():
    """Without --variants, bench also measures each preset's default as the probe picks it."""
    from resnetlab.bench.core import _missing_defaults

    parsed = [parse_variant(v) for v in ("textbook", "fp32", "bf16")]
    defaults = {"d2l": "fp32-nchw", "quick": "bf16", "best": "bf16-compile"}
    assert _missing_defaults(defaults, parsed) == ["fp32-nchw"]
