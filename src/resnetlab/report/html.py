"""report.html: one self-contained page per run (`resnetlab report RUN`, and written at the end of
every run). Images are inline base64 data URIs, styles are inline, there is no script, and a
Content-Security-Policy forbids anything else, so the page opens offline and looks the same anywhere.

Sections (each a <section id=...>): summary, configuration, environment, timings, curves,
confusion, per-class, mistakes, events. A section whose files the run lacks says why.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
from pathlib import Path

from resnetlab.errors import UsageError, plural
from resnetlab.fileio import write_text
from resnetlab.report.mistakes import (
    UNREADABLE_CSV,
    read_confusion_csv,
    read_mistakes_csv,
    read_unreadable_csv,
)
from resnetlab.report.plots import curve_marks, curves_png, have_matplotlib
from resnetlab.report.runs import NO_TEST, has_test_figures, is_sweep, run_state
from resnetlab.rundir import (
    CONFUSION_CSV,
    CONFUSION_PNG,
    CURVES_PNG,
    EPOCH_METRICS,
    MISTAKES_CAM,
    MISTAKES_CSV,
    MISTAKES_PNG,
    REPORT_FILE,
    is_run,
    read_config,
    read_events,
    read_metrics,
    read_summary,
)

SECTIONS = (
    "summary",
    "configuration",
    "environment",
    "timings",
    "curves",
    "confusion",
    "per-class",
    "mistakes",
    "events",
)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 16px 24px 48px; color: #1d2330; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.1em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.5em; padding-bottom: 0.2em; border-bottom: 2px solid #dde3ee; }
.sub { color: #5a6478; margin: 0 0 0.8em; }
.state { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.85em; font-weight: 600; }
.finished { background: #dff3e4; color: #1b6b32; } .interrupted { background: #fff1d6; color: #8a5a00; }
.failed { background: #fbe0e0; color: #9b1c1c; } .unfinished { background: #e6ebf3; color: #3b4a63; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #dde3ee; border-radius: 8px; padding: 8px 14px; min-width: 130px; }
.card .v { font-size: 1.35em; font-weight: 600; } .card .k { color: #5a6478; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 4px 0; }
th, td { border-bottom: 1px solid #e6eaf1; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f4f6fa; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.cols { columns: 2 420px; column-gap: 28px; } .cols table { break-inside: avoid; width: 100%; }
img { max-width: 100%; height: auto; border: 1px solid #eef1f6; }
.bar { display: inline-block; height: 10px; background: #4a78c2; border-radius: 2px; vertical-align: middle; }
.note { color: #5a6478; font-style: italic; }
.wide { overflow-x: auto; } .wide td { white-space: nowrap; }
code { background: #f4f6fa; padding: 0 4px; border-radius: 3px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(
        f'<th class="n">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def load_run(folder: str | Path) -> dict:
    """Everything a report or a comparison reads from a run folder; UsageError if it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give a run folder (one holding config.json)")
    if not is_run(folder) and is_sweep(folder):  # `report`/`compare` of a sweep's folder
        trials = sorted(p.name for p in folder.iterdir() if is_run(p))
        raise UsageError(
            f"{folder} is a sweep's folder, not a run's: its page is {folder / 'report.html'} "
            f"(`resnetlab sweep` writes it); give one of its trials"
            + (f", e.g. {folder / trials[0]}" if trials else "")
        )
    if not is_run(folder):
        raise UsageError(
            f"{folder} is not a run folder (no config.json); give the folder `resnetlab train` wrote"
        )
    events = read_events(folder)
    return {
        "path": folder,
        "config": read_config(folder),
        "summary": read_summary(folder),
        "metrics": read_metrics(folder),
        "events": events,
        "state": run_state(folder, events),
    }


# --- sections -------------------------------------------------------------------------------


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def _missing(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _summary_section(run: dict) -> str:
    s, cfg, metrics = run["summary"], run["config"].get("config", {}), run["metrics"]
    cards = []

    def card(k, v):
        cards.append(
            f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        )

    if s and not has_test_figures(s):
        card("test acc", "not evaluated")
        if "best_val_acc" in s:
            card(f"best val acc (epoch {s.get('best_epoch')})", fmt(s["best_val_acc"]))
        card("final train acc", fmt(s.get("train_acc")))
        card("epochs", f"{s.get('epochs')}")
        cards.append(_missing(NO_TEST))
    elif s:
        tta = f", {s['tta']} TTA" if s.get("tta") else ""
        card(
            f"test acc, kept weights ({s.get('kept_weights', '?')}{tta})",
            fmt(s.get("kept_test_acc")),
        )
        if tta:
            card("the same without TTA", fmt(s.get("kept_test_acc_no_tta")))
        card("final test acc", fmt(s.get("test_acc")))
        if "best_val_acc" in s:
            card(f"best val acc (epoch {s.get('best_epoch')})", fmt(s["best_val_acc"]))
        card("final train acc", fmt(s.get("train_acc")))
        card("epochs", f"{s.get('epochs')}")
        card("training time", f"{s.get('train_seconds', 0):.1f} s")
        limit = s.get("time_limit")
        if isinstance(limit, dict):  # --time-limit: the plan's estimate against the time taken
            card(
                f"run time, limit {limit.get('limit_seconds', 0):.0f} s",
                f"{limit.get('actual_seconds', 0):.0f} s (planned {limit.get('planned_seconds', 0):.0f} s)",
            )
    elif metrics:
        last = metrics[-1]
        if "test_acc" in last:
            card("last test acc", fmt(last.get("test_acc")))
        best = best_val(metrics)
        if best is not None:
            card(f"best val acc (epoch {best['epoch']})", fmt(best["val_acc"]))
        card("epochs done", f"{last['epoch']} of {cfg.get('epochs', '?')}")
    else:
        cards.append(_missing("no epoch completed yet"))
    return _section("summary", "Summary", f'<div class="cards">{"".join(cards)}</div>')


def best_val(metrics: list[dict]) -> dict | None:
    """The metrics row of the best validation accuracy (the first of equals, as training keeps
    it), or None without a validation split."""
    rows = [r for r in metrics if "val_acc" in r]
    return max(rows, key=lambda r: r["val_acc"]) if rows else None


def _config_section(run: dict) -> str:
    cfg = run["config"].get("config", {})
    rows = [[f"<code>{esc(k)}</code>", esc(fmt(v))] for k, v in cfg.items()]
    half = (len(rows) + 1) // 2
    body = f'<div class="cols">{table(["setting", "value"], rows[:half])}{table(["setting", "value"], rows[half:])}</div>'
    return _section("configuration", "Configuration", body)


def _environment_section(run: dict) -> str:
    c = run["config"]
    versions = c.get("versions", {})
    rows = [[esc(f"{name} version"), esc(v)] for name, v in versions.items()]
    for key, label in (
        ("device", "device"),
        ("amp", "bf16 autocast"),
        ("channels_last", "channels_last"),
        ("capture", "CUDA graphs"),
        ("capture_fallback", "CUDA graphs fell back (op by op)"),
        ("world_size", "processes"),
        ("threads", "torch CPU threads"),
        ("host", "host"),
        ("params", "parameters"),
    ):
        if key in c:
            value = f"{c[key]:,}" if key == "params" else fmt(c[key])
            rows.append([esc(label), esc(value)])
    if isinstance(c.get("plan"), dict):  # --time-limit's plan, and its shortening if any
        rows.append([esc("time limit plan"), esc(c["plan"].get("line", ""))])
        if isinstance(c["plan"].get("shortened"), dict):
            rows.append([esc("plan shortened"), esc(c["plan"]["shortened"].get("line", ""))])
    if isinstance(c.get("probe"), dict):  # the timed probe that chose precision and layout
        rows.append([esc("precision and layout, measured"), esc(c["probe"].get("line", ""))])
    return _section(
        "environment",
        "Environment",
        table(["", ""], rows) if rows else _missing("config.json records no environment"),
    )


def _timings_section(run: dict) -> str:
    s, metrics = run["summary"], run["metrics"]
    parts = []
    if s:
        rows = [
            ["training (train steps only)", f"{s.get('train_seconds', 0):.1f} s"],
            ["whole run (data, evaluation, files)", f"{s.get('total_seconds', 0):.1f} s"],
            ["throughput (training examples / s)", f"{s.get('examples_per_sec', 0):,.1f}"],
            ["test examples", f"{s.get('test_count', '-')}"],
        ]
        finish = next((e for e in reversed(run["events"]) if e["event"] == "finish"), None)
        if finish and "mistakes_seconds" in finish:
            rows.append(
                ["mistakes pass and files (after training)", f"{finish['mistakes_seconds']:.2f} s"]
            )
        parts.append(table(["", ""], [[esc(a), esc(b)] for a, b in rows], numeric={1}))
    elif metrics:  # not finished: the completed epochs' figures, from metrics.csv
        seconds = sum(r.get("epoch_seconds", 0.0) for r in metrics)
        speeds = [r["examples_per_sec"] for r in metrics if "examples_per_sec" in r]
        n = len(metrics)
        rows = [
            [
                f"{n} completed epoch{'' if n == 1 else 's'} (training and evaluation)",
                f"{seconds:.1f} s",
            ],
            [
                "throughput (training examples / s, mean of the epochs)",
                f"{sum(speeds) / len(speeds):,.1f}" if speeds else "-",
            ],
        ]
        parts.append(table(["", ""], [[esc(a), esc(b)] for a, b in rows], numeric={1}))
    if metrics:
        keys = [k for k in EPOCH_METRICS if k in metrics[0]]
        rows = [
            [str(r["epoch"])]
            + [
                esc(fmt(r.get(k), 1 if k in ("examples_per_sec", "epoch_seconds") else 4))
                for k in keys
            ]
            for r in metrics
        ]
        parts.append(
            "<h3>Per epoch</h3>" + table(["epoch", *keys], rows, numeric=set(range(len(keys) + 1)))
        )
    return _section(
        "timings", "Timings and throughput", "\n".join(parts) or _missing("no epoch completed yet")
    )


def _curves_section(run: dict) -> str:
    """curves.png, or for a run that has not finished the curves drawn now from metrics.csv."""
    if (run["path"] / CURVES_PNG).exists() or not run["metrics"]:
        return _image_section(
            run, "curves", "Curves", CURVES_PNG, "no epoch completed yet: no curves"
        )
    if not have_matplotlib():
        return _section(
            "curves",
            "Curves",
            _missing("matplotlib is not installed: no curves (pip install 'resnetlab[plot]')"),
        )
    cfg = run["config"].get("config", {})
    png = curves_png(
        run["metrics"],
        f"{cfg.get('model', '?')} on {cfg.get('data', '?')} (epochs done so far)",
        **curve_marks(run["summary"]),
    )
    data = base64.b64encode(png).decode("ascii")
    note = '<p class="note">drawn from metrics.csv: the run has not finished</p>'
    return _section(
        "curves", "Curves", f'{note}<img alt="Curves" src="data:image/png;base64,{data}">'
    )


def _image_section(run: dict, sid: str, title: str, name: str, why: str) -> str:
    path = run["path"] / name
    if not path.exists() and _untested(run):
        return _section(sid, title, _missing(NO_TEST))
    return _section(sid, title, img_tag(path, title) if path.exists() else _missing(why))


def _untested(run: dict) -> bool:
    """A finished run that measured no test figure (--no-final-test)."""
    return bool(run["summary"]) and not has_test_figures(run["summary"])


def _per_class_section(run: dict) -> str:
    path = run["path"] / CONFUSION_CSV
    if not path.exists() and _untested(run):
        return _section("per-class", "Per-class accuracy", _missing(NO_TEST))
    if not path.exists():
        return _section(
            "per-class",
            "Per-class accuracy",
            _missing(
                "confusion.csv is missing: the run did not finish, or predates it (`resnetlab report` computes it "
                "for a finished run)"
            ),
        )
    classes, m = read_confusion_csv(path)
    rows = []
    for i, name in enumerate(classes):
        total = sum(m[i])
        acc = m[i][i] / total if total else float("nan")
        worst = max(
            ((m[i][j], classes[j]) for j in range(len(classes)) if j != i), default=(0, "-")
        )
        bar = f'<span class="bar" style="width:{0 if acc != acc else round(160 * acc)}px"></span>'
        rows.append(
            [
                esc(name),
                str(total),
                str(m[i][i]),
                esc(fmt(acc)),
                bar,
                esc(f"{worst[1]} ({worst[0]})" if worst[0] else "-"),
            ]
        )
    return _section(
        "per-class",
        "Per-class accuracy (kept weights, test set)",
        table(
            ["class", "count", "correct", "acc", "", "most often taken for"],
            rows,
            numeric={1, 2, 3},
        ),
    )


def _mistakes_section(run: dict) -> str:
    folder = run["path"]
    if not (folder / MISTAKES_CSV).exists() and _untested(run):
        return _section("mistakes", "Most confident mistakes", _missing(NO_TEST))
    if not (folder / MISTAKES_CSV).exists():
        return _section(
            "mistakes",
            "Most confident mistakes",
            _missing("mistakes.csv is missing: the run did not finish, or predates it"),
        )
    items = read_mistakes_csv(folder / MISTAKES_CSV)
    parts = [
        img_tag(folder / MISTAKES_PNG, "mistakes grid")
        if (folder / MISTAKES_PNG).exists()
        else _missing("mistakes.png is missing (matplotlib is not installed)")
    ]
    parts.append(_gradcam_row(folder))
    rows = [
        [str(r["index"]), esc(r["true"]), esc(r["predicted"]), f"{r['probability']:.3f}"]
        for r in items
    ]
    parts.append(
        "<details><summary>as a table (mistakes.csv)</summary>"
        + table(["test index", "true", "predicted", "probability"], rows, numeric={0, 3})
        + "</details>"
    )
    unreadable = read_unreadable_csv(folder / UNREADABLE_CSV)
    if unreadable:  # streamed data: test images that did not decode, left out of every figure
        parts.append(
            f"<p>{len(unreadable)} test {plural(len(unreadable), 'image')} could not be read and "
            f"{'was' if len(unreadable) == 1 else 'were'} left out of the test figures "
            f"({UNREADABLE_CSV}):</p>"
            + table(
                ["test index", "true", "file"],
                [[str(r["index"]), esc(r["true"]), esc(r["file"])] for r in unreadable],
                numeric={0},
            )
        )
    return _section(
        "mistakes", "Most confident mistakes (kept weights, test set)", "\n".join(parts)
    )


def _gradcam_row(folder: Path) -> str:
    """mistakes_gradcam.png (resnetlab.inference.explain) or a sentence saying why it is not there."""
    path = folder / MISTAKES_CAM
    if path.exists():
        return (
            "<p>Grad-CAM of the predicted (wrong) class: where in each image the net found it "
            "(red: most evidence).</p>" + img_tag(path, "Grad-CAM of the most confident mistakes")
        )
    if importlib.util.find_spec("captum") is None:
        return _missing(
            "No Grad-CAM row: Captum is not installed (pip install 'resnetlab[explain]', "
            "then `resnetlab report RUN` draws it)"
        )
    return _missing(
        "mistakes_gradcam.png is missing: the run predates it; `resnetlab report RUN` draws it"
    )


def describe_event(e: dict) -> str:
    kind = e["event"]
    if kind == "start":
        return f"started from scratch on {e.get('host', '?')}"
    if kind == "resume":
        where = (
            f"in epoch {e.get('epoch', 0) + 1} at step {e['step_in_epoch']}"
            if e.get("step_in_epoch")
            else f"after epoch {e.get('epoch')}"
        )
        return f"resumed {where} on {e.get('host', '?')}"
    if kind == "interrupt":
        step = e.get("step_in_epoch")
        return (
            f"interrupted in epoch {e.get('epoch', 0) + 1} at step {step}"
            if step
            else f"interrupted after epoch {e.get('epoch')}"
        )
    if kind == "plan_shortened":
        return e.get("line", "the time plan was shortened")
    if kind == "capture_fallback":
        return f"{e.get('reason', 'capturing failed')}: running op by op from then on"
    if kind == "failed":
        return f"failed: {e.get('error', '')}: {e.get('message', '')}"
    if kind == "finish":
        if e.get("test") == "not evaluated":  # --no-final-test
            return f"finished after epoch {e.get('epoch')}, test not evaluated"
        return f"finished after epoch {e.get('epoch')}, kept test acc {fmt(e.get('kept_test_acc'))}"
    return kind


def _events_section(run: dict) -> str:
    events = run["events"]
    if not events:
        return _section(
            "events", "What happened when", _missing("events.jsonl is missing: the run predates it")
        )
    rows = [
        [esc(e.get("time", "-").replace("T", " ")), esc(e["event"]), esc(describe_event(e))]
        for e in events
    ]
    resumed = sum(e["event"] == "resume" for e in events)
    stopped = sum(e["event"] in ("interrupt", "failed") for e in events)
    lead = f"<p>{len(events)} events: {stopped} stop(s), {resumed} resume(s).</p>"
    return _section(
        "events", "What happened when", lead + table(["time (UTC)", "event", "what"], rows)
    )


def build_report(folder: str | Path) -> str:
    run = load_run(folder)
    cfg = run["config"].get("config", {})
    title = f"{cfg.get('model', '?')} on {cfg.get('data', '?')}"
    state = run["state"]
    sections = [
        _summary_section(run),
        _config_section(run),
        _environment_section(run),
        _timings_section(run),
        _curves_section(run),
        _image_section(
            run,
            "confusion",
            "Confusion matrix (kept weights, test set)",
            CONFUSION_PNG,
            "confusion.png is missing: the run did not finish",
        ),
        _per_class_section(run),
        _mistakes_section(run),
        _events_section(run),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(run['path'].name)}: {esc(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            f'<h1>{esc(title)} <span class="state {esc(state)}">{esc(state)}</span></h1>',
            f'<p class="sub">run folder <code>{esc(run["path"])}</code>, preset <code>{esc(cfg.get("preset", "?"))}</code></p>',
            *sections,
            "</body>",
            "</html>",
            "",
        ]
    )


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """report.html in the run folder (or `out`); returns its path."""
    page = build_report(folder)
    path = Path(out) if out is not None else Path(folder) / REPORT_FILE
    write_text(path, page)
    return path
