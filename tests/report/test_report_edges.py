"""Issue 31, items 8-10 and the degradation nits of 16: compare, curves.png, report.html of an
interrupted run, degradation.png and its table. Run folders are written by hand (no training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from resnetlab.report.plots import plot_curves  # noqa: E402
from resnetlab.rundir import METRIC_COLUMNS  # noqa: E402


def fake_run(folder: Path, rows: list[dict], summary: dict | None = None, events=()) -> Path:
    folder.mkdir(parents=True)
    config = {"model": "resnet20", "data": "fashion-mnist", "epochs": 15, "preset": "quick"}
    (folder / "config.json").write_text(json.dumps({"config": config}))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    with open(folder / "events.jsonl", "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    return folder


def rows(n: int, *, val=True, test=True, diverged=False) -> list[dict]:
    out = []
    for e in range(1, n + 1):
        r = dict(epoch=e, train_loss=1.0 / e, train_acc=0.5 + e / 100, lr=0.1)
        r.update(examples_per_sec=100.0 * e, epoch_seconds=2.0)
        if val:
            r.update(val_loss=1.2 / e * (1e6 if diverged else 1), val_acc=0.4 + e / 100)
        if test:
            r.update(test_loss=1.1 / e, test_acc=0.45 + e / 100)
        out.append(r)
    return out


# --- item 8: compare ---------------------------------------------------------------------------


def test_compare_final_test_acc_from_summary_log_loss_and_honest_subtitle(tmp_path, monkeypatch):
    import resnetlab.report.compare as compare

    summary = dict(epochs=2, test_acc=0.8123, kept_test_acc=0.8234, kept_weights="best.safetensors")
    a = fake_run(tmp_path / "a", rows(2, test=False), summary)
    b = fake_run(tmp_path / "b", rows(2, test=False, diverged=True), dict(summary, test_acc=0.1))
    figures = []
    save = compare.save_png
    monkeypatch.setattr(
        compare, "save_png", lambda fig, path: (figures.append(fig), save(fig, path))
    )
    result = compare.compare_runs([a, b], tmp_path / "cmp")
    assert [r["test_acc"] for r in result["runs"]] == [0.8123, 0.1]  # not None: from summary.json
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "0.8123" in html
    ax_loss, _ = figures[0].axes
    assert ax_loss.get_yscale() == "log"  # the diverged run does not flatten the other
    subtitle = figures[0].get_suptitle()
    assert "test (.)" not in subtitle and "validation" in subtitle and "log scale" in subtitle


# --- item 9: curves.png ---------------------------------------------------------------------------


def test_curves_of_one_epoch_show_points_and_whole_epoch_ticks(tmp_path):
    fig = plot_curves(rows(1), tmp_path / "c.png", "one epoch")
    for ax in fig.axes:
        assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0]
    assert (tmp_path / "c.png").stat().st_size > 0


def test_curves_mark_the_kept_epoch_and_the_final_test_figure(tmp_path):
    from resnetlab.report.plots import curve_marks

    summary = dict(epochs=10, best_epoch=7, kept_weights="best.safetensors", kept_test_acc=0.91)
    summary["tta"] = "flip"
    fig = plot_curves(rows(10), None, **curve_marks(summary))
    _, ax_acc = fig.axes
    labels = [line.get_label() for line in ax_acc.get_lines()]
    assert "kept: epoch 7" in labels and "final test (flip TTA) 0.9100" in labels
    star = next(line for line in ax_acc.get_lines() if line.get_label().startswith("final"))
    assert list(star.get_xdata()) == [7] and list(star.get_ydata()) == [0.91]
    fig = plot_curves(rows(10), None)  # longer runs: whole epochs only
    ticks = fig.axes[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks)


# --- item 10: report.html of an interrupted run -------------------------------------------------


def test_report_of_an_interrupted_run_draws_curves_timings_and_best_val(tmp_path):
    from resnetlab.report.html import build_report

    events = [
        {"time": "2026-01-01T00:00:00", "event": "start"},
        {"time": "2026-01-01T00:01:00", "event": "interrupt", "epoch": 3, "step_in_epoch": 5},
    ]
    run = fake_run(tmp_path / "r", rows(3, test=False), None, events)
    page = build_report(run)
    curves = page[page.index('<section id="curves">') : page.index('<section id="confusion">')]
    assert "data:image/png;base64," in curves and "did not finish" not in curves
    timings = page[page.index('<section id="timings">') : page.index('<section id="curves">')]
    assert "3 completed epochs" in timings and "6.0 s" in timings and "200.0" in timings
    summary = page[
        page.index('<section id="summary">') : page.index('<section id="configuration">')
    ]
    assert "best val acc (epoch 3)" in summary and "0.4300" in summary
    assert not (run / "curves.png").exists()  # the report reads the run, it does not add files


# --- item 9 and 16: the degradation experiment's figure and table --------------------------------


def test_degradation_figure_at_one_epoch_tells_the_nets_apart(tmp_path):
    from resnetlab.report.plots import plot_degradation

    data = [
        dict(
            net=f"{kind}{d}",
            depth=d,
            residual=kind == "resnet",
            epoch=1,
            train_err=0.3,
            test_err=0.3,
        )
        for d in (20, 56)
        for kind in ("plain", "resnet")
    ]
    fig = plot_degradation(data, tmp_path / "d.png")
    ax = fig.axes[0]
    looks = {
        (line.get_color(), line.get_marker(), str(line.get_markerfacecolor()))
        for line in ax.get_lines()
    }
    assert len(looks) == 4  # four distinct points, not four identical dots
    assert all(line.get_marker() not in (".", "None", None) for line in ax.get_lines())
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0]


def test_degradation_table_heading_and_caveat_when_too_short():
    from resnetlab.experiments.degradation import format_table

    nets = [
        dict(net=f"{k}{d}", depth=d, train_err=0.2, test_err=0.2, seconds=1.0)
        for d in (20, 56)
        for k in ("plain", "resnet")
    ]
    result = dict(
        nets=nets, depths=[20, 56], plain_degrades=True, residual_no_worse=True, epochs=1,
        subset=2000,
    )  # fmt: skip
    text = format_table(result)
    assert text.splitlines()[0].startswith("final errors")
    assert "too short to conclude; run the defaults" in text
    assert "1 epoch on 2,000 examples" in text
    assert "too short" not in format_table(dict(result, epochs=8, subset=8000))


def test_degradation_nets_are_named_by_their_recipe():
    from resnetlab.experiments.degradation import Net, degradation_config

    cfg = degradation_config(
        Net(20, False), data="fashion-mnist", epochs=1, width=8, subset=600, seed=0, lr=0.1
    )
    assert cfg.preset == "degradation"  # `resnetlab runs` lists it so, not as "quick"


def test_counts_read_as_words():
    from resnetlab.distributed.group import DistInfo
    from resnetlab.errors import UsageError
    from resnetlab.train.checkpoint import check_resume_world_size

    with pytest.raises(UsageError, match=r"trained with 2 processes, this launch has 1;"):
        check_resume_world_size(2, DistInfo(), "runs/a")
    with pytest.raises(UsageError, match=r"trained with 1 process, this launch has 2;"):
        check_resume_world_size(1, DistInfo(rank=0, world_size=2), "runs/a")


def test_a_class_name_the_font_lacks_is_one_warning_line_not_matplotlibs(tmp_path, capsys):
    import warnings

    import numpy as np

    from resnetlab.report.plots import plot_confusion

    odd = "\U0010fffd\U0010fffc"  # private-use characters: in no font matplotlib ships
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(2):  # a second figure with them says nothing more
            plot_confusion(np.eye(2, dtype=int), [odd, "b"], tmp_path / f"c{i}.png")
    assert [str(w.message) for w in caught] == []  # none of matplotlib's per-glyph warnings
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "\U0010fffc \U0010fffd as boxes" in lines[0]
    assert (tmp_path / "c1.png").stat().st_size > 0


def test_report_of_a_sweeps_folder_points_to_its_page_and_a_trial(tmp_path, capsys):
    from resnetlab import cli

    sweep = tmp_path / "sweep"
    fake_run(sweep / "trial-0000", [])
    (sweep / "sweep.json").write_text("{}")
    assert cli.main(["report", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert f"its page is {sweep / 'report.html'}" in err and str(sweep / "trial-0000") in err
    assert err.count("\n") == 1
