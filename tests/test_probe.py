"""Precision and layout chosen by a timed probe (train/precision.py): the
cache (cold, then warm: no step the second time), the bound (steps counted on a fake clock),
explicit settings and resumed runs bypass it, the decision recorded."""

from __future__ import annotations

import json

import pytest
import torch

from resnetlab.train import make_config
from resnetlab.train import precision as probing
from resnetlab.train.precision import Candidate, probe

FP32_CL, FP32_NCHW = Candidate(False, True), Candidate(False, False)
BF16_CL, BF16_NCHW = Candidate(True, True), Candidate(True, False)
ALL = [BF16_CL, BF16_NCHW, FP32_CL, FP32_NCHW]


class FakeRun:
    """make_step for probe(): each step advances a fake clock by its candidate's seconds."""

    def __init__(self, seconds: dict[Candidate, float], first_extra: float = 0.0):
        self.seconds, self.first_extra = seconds, first_extra
        self.now, self.steps, self.built = 0.0, [], []

    def clock(self) -> float:
        return self.now

    def make_step(self, candidate: Candidate):
        self.built.append(candidate)

        def step():
            first = not any(c == candidate for c in self.steps)
            self.now += self.seconds[candidate] + (self.first_extra if first else 0.0)
            self.steps.append(candidate)

        return step


def run_probe(fake: FakeRun, path, candidates=ALL, expected_steps=None, **kwargs):
    key = {"processor": "test", "model": "m", "shape": [64, 1, 28, 28]}
    return probe(
        key, candidates, fake.make_step, expected_steps, clock=fake.clock, path=path, **kwargs
    )


def test_cold_cache_probes_warm_cache_pays_nothing(tmp_path):
    path = tmp_path / "probe.json"
    seconds = {BF16_CL: 0.030, BF16_NCHW: 0.028, FP32_CL: 0.031, FP32_NCHW: 0.025}
    cold = FakeRun(seconds, first_extra=0.01)
    first = run_probe(cold, path)
    assert first.choice == FP32_NCHW and first.complete and not first.cached
    assert len(cold.steps) == 4 * 3  # one warm-up and two timed steps each
    assert first.figures == pytest.approx({c.name: s for c, s in seconds.items()})
    assert first.seconds == pytest.approx(sum(seconds.values()) * 3 + 4 * 0.01)
    assert json.loads(path.read_text())  # kept in the cache file
    warm = FakeRun(seconds)
    second = run_probe(warm, path)
    assert warm.built == [] and warm.steps == []  # nothing built, nothing run
    assert second.cached and second.seconds == 0 and second.choice == FP32_NCHW
    assert "from the cache, probe 0 s" in second.line() and "fp32 NCHW" in second.line()
    other = FakeRun(seconds)  # another key (here: another shape) probes again
    probe({"shape": [64, 1, 96, 96]}, ALL, other.make_step, None, clock=other.clock, path=path)
    assert len(other.steps) == 12


def test_the_probe_stays_within_three_seconds(tmp_path):
    """0.5 s a step: the probe never starts a step that would end past 3 s."""
    fake = FakeRun(dict.fromkeys(ALL, 0.5))
    result = run_probe(fake, tmp_path / "probe.json")
    assert len(fake.steps) == 6 and fake.now <= 3.0  # two candidates' three steps
    assert not result.complete and result.seconds == pytest.approx(3.0)
    assert set(result.figures) == {BF16_CL.name, BF16_NCHW.name}
    assert "cut short by its bound" in result.line()
    # the next run measures what is left, within its own bound, and then decides on all four
    fake = FakeRun(dict.fromkeys(ALL, 0.5) | {FP32_NCHW: 0.4})
    result = run_probe(fake, tmp_path / "probe.json")
    assert len(fake.steps) == 6 and result.complete and result.choice == FP32_NCHW


def test_the_probe_stays_within_two_percent_of_the_run(tmp_path):
    fake = FakeRun(dict.fromkeys(ALL, 0.01))
    result = run_probe(fake, tmp_path / "a.json", expected_steps=400)  # 2 %: 8 steps
    assert len(fake.steps) == 6 and len(result.figures) == 2
    fake = FakeRun(dict.fromkeys(ALL, 0.01))
    result = run_probe(fake, tmp_path / "b.json", expected_steps=100)  # 2 steps: nothing fits
    assert fake.steps == [] and fake.built == [] and result.figures == {}
    assert result.choice == ALL[0]  # the instruction-set policy's pick
    assert not (tmp_path / "b.json").exists()  # nothing measured, nothing cached
    # in time: 1,000 steps (20 probe steps allowed) at the fastest step seen, 1/16 s: 2 % is 1.25 s
    fake = FakeRun(dict.fromkeys(ALL, 1 / 16) | {BF16_CL: 1 / 4})
    result = run_probe(fake, tmp_path / "c.json", expected_steps=1000)
    assert fake.now <= 0.02 * 1000 / 16 and len(fake.steps) == 3 + 3 + 3 + 2
    assert result.choice != BF16_CL and len(result.figures) == 4


def test_explicit_settings_and_resumed_runs_bypass_the_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETLAB_PROBE_CACHE", str(tmp_path / "probe.json"))
    monkeypatch.setattr(probing, "bf16_pays", lambda device: True)  # all four are candidates
    monkeypatch.setattr(probing, "probe_step", lambda *a: pytest.fail("probed"))
    cpu, shape = torch.device("cpu"), (64, 1, 28, 28)
    for amp, channels_last in ((True, False), (False, True)):
        cfg = make_config("quick", amp=amp, channels_last=channels_last)
        policy = probing.resolve_policy(cfg, cpu, shape, 10, expected_steps=10**6)
        assert (policy.amp, policy.channels_last, policy.probe) == (amp, channels_last, None)
    assert probing.candidates(make_config("quick", amp=False), cpu) == [FP32_CL, FP32_NCHW]
    assert probing.candidates(make_config("d2l"), cpu) == [FP32_CL, FP32_NCHW]  # d2l stays fp32
    assert probing.candidates(make_config("quick", channels_last=False), cpu) == [
        BF16_NCHW,
        FP32_NCHW,
    ]
    resumed = probing.resolve_policy(
        make_config("quick"),
        cpu,
        shape,
        10,
        expected_steps=10**6,
        resumed={"amp": False, "channels_last": False},
    )
    assert (resumed.amp, resumed.channels_last) == (False, False)
    several = probing.resolve_policy(
        make_config("quick"), cpu, shape, 10, expected_steps=10**6, world_size=2
    )
    assert (several.amp, several.channels_last) == (True, True)  # the instruction-set policy
    assert not (tmp_path / "probe.json").exists()


@pytest.mark.parametrize("winner", [FP32_CL, FP32_NCHW])
def test_a_run_records_and_applies_the_probes_decision(monkeypatch, tmp_path, winner):
    """build() probes the run's own model and shape, says it in one line, keeps it for
    config.json and builds what it chose: the model's weights and the loaders' batches in that
    layout. The next build with the same key reads the cache. The steps run on a fake clock that
    makes `winner` the fastest, so the decision does not depend on this machine's timings."""
    from functools import partial

    from resnetlab.data import Dataset
    from resnetlab.train import setup

    monkeypatch.setenv("RESNETLAB_PROBE_CACHE", str(tmp_path / "probe.json"))
    loser = FP32_NCHW if winner == FP32_CL else FP32_CL
    fake = FakeRun({winner: 0.01, loser: 0.02})
    asked = []

    def fake_probe_step(cfg, shape, num_classes, device):
        asked.append((cfg.model, tuple(shape), num_classes))
        return fake.make_step

    monkeypatch.setattr(probing, "probe_step", fake_probe_step)
    monkeypatch.setattr(probing, "probe", partial(probing.probe, clock=fake.clock))
    images = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)  # 3 channels: the layouts differ
    ds = Dataset("t", images, torch.arange(64) % 10, [str(i) for i in range(10)])
    splits = setup.Splits(ds, None, ds)
    # 4 steps an epoch x 1,000 epochs (only built here): 2 % of the run leaves room for both layouts
    cfg = make_config(
        "quick",
        model="resnet20",
        model_kwargs={"width": 4},
        batch_size=16,
        epochs=1000,
        val_split=0,
        progressive_resize=0,
        init="default",
        device="cpu",
        amp=False,
        normalize=False,  # the default dataset's statistics are for one channel
    )
    said = []
    parts = setup.build(cfg, splits=splits, say=said.append)
    assert asked == [("resnet20", (16, 3, 8, 8), 10)]  # the run's own model and batch shape
    assert sorted(fake.built, key=str) == sorted([FP32_CL, FP32_NCHW], key=str)
    described = parts.describe()["probe"]
    assert described["choice"] == winner.name and described["complete"]
    assert described["seconds_per_step"] == pytest.approx({winner.name: 0.01, loser.name: 0.02})
    assert parts.channels_last == winner.channels_last == parts.describe()["channels_last"]
    assert said == [described["line"]] and said[0].startswith("precision and layout: ")
    # ... and applied: the weights and the batches are in the layout recorded
    layout = torch.channels_last if winner.channels_last else torch.contiguous_format
    convs = [m.weight for m in parts.raw_model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=layout) for w in convs)
    for loader in (parts.loaders.train, parts.loaders.test):
        x, _ = next(iter(loader))
        assert x.shape[1] == 3 and x.is_contiguous(memory_format=layout)
        assert not x.is_contiguous(
            memory_format=torch.contiguous_format if winner.channels_last else torch.channels_last
        )
    assert (tmp_path / "probe.json").exists()
    said.clear()
    fake.built.clear()
    again = setup.build(cfg, splits=splits, say=said.append)
    described = again.describe()["probe"]
    assert described["cached"] and described["probe_seconds"] == 0 and fake.built == []
    assert described["choice"] == winner.name and again.channels_last == winner.channels_last
    assert "from the cache, probe 0 s" in said[0]


def test_the_cache_lives_in_the_user_cache(monkeypatch, tmp_path):
    from resnetlab.train.precision import cache_path

    monkeypatch.delenv("RESNETLAB_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_path() == tmp_path / "resnetlab" / "probe.json"  # beside the datasets' cache


def test_the_report_shows_the_decision_and_its_figures(tmp_path):
    from resnetlab.report.html import _environment_section

    line = "precision and layout: fp32 NCHW (per step: fp32 NCHW 288 ms, fp32 channels_last 477 ms; probe 2.3 s)"
    config = {"device": "cpu", "amp": False, "channels_last": False, "probe": {"line": line}}
    assert line in _environment_section({"config": config})


def test_a_resumed_run_keeps_the_policy_it_ran_with(monkeypatch, tmp_path):
    """Resume stays bit-identical whatever a probe would pick now: the checkpoint's policy wins,
    and a checkpoint from before the probe gets the policy of its time."""
    from resnetlab.data import Dataset
    from resnetlab.distributed.group import DistInfo
    from resnetlab.train import setup
    from resnetlab.train.checkpoint import make_checkpoint
    from resnetlab.train.engine import TrainState
    from resnetlab.train.precision import bf16_pays

    monkeypatch.setattr(probing, "probe_step", lambda *a: pytest.fail("probed"))
    ds = Dataset("t", torch.zeros(64, 1, 8, 8, dtype=torch.uint8), torch.arange(64) % 10)
    splits, cpu = setup.Splits(ds, None, ds), torch.device("cpu")
    cfg = make_config("quick", batch_size=16, epochs=10**4, device="cpu")
    saved = {"amp": False, "channels_last": False}
    policy = setup._precision_and_layout(cfg, DistInfo(), cpu, splits, {"policy": saved}, None)
    assert (policy.amp, policy.channels_last) == (False, False)
    policy = setup._precision_and_layout(cfg, DistInfo(), cpu, splits, {}, None)
    assert (policy.amp, policy.channels_last) == (bf16_pays(cpu), True)
    net = torch.nn.Linear(2, 2)
    checkpoint = make_checkpoint(
        cfg, net, torch.optim.SGD(net.parameters()), TrainState(), 1, policy=saved
    )
    assert checkpoint["policy"] == saved
