"""What a sweep leaves in its folder besides the trials' run folders: trials.csv (one row a
trial), best.json (a configuration `resnetlab train --config best.json` reruns) and report.html
(self-contained: Optuna's matplotlib plots inline, the trials table, links to the runs' reports).

Only validation figures choose and rank trials. The test figure shown is that of the best trial's
kept weights alone, beside the search and never used by it.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from resnetlab.errors import first_line
from resnetlab.fileio import write_bytes, write_csv, write_json, write_text
from resnetlab.report.html import CSP, STYLE, esc, fmt, img_tag, table
from resnetlab.rundir import REPORT_FILE, read_json, read_summary
from resnetlab.sweep.study import (
    INTERRUPTED,
    PRUNED_FILE,
    Plan,
    rerun_config,
    state_name,
    trial_config,
    trial_folder,
)

PLOTS = (
    ("history", "optimisation history", "plot_optimization_history"),
    ("importances", "parameter importances (fANOVA)", "plot_param_importances"),
    ("parallel", "parallel coordinates", "plot_parallel_coordinate"),
)


def trial_rows(study, plan: Plan) -> list[dict]:
    """One row a trial: number, state, its settings, epochs run, validation figure, seconds."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    rows = []
    for t in study.get_trials(deepcopy=False):
        epochs = t.user_attrs.get("epochs", 0)
        value = t.value if t.value is not None else t.intermediate_values.get(epochs)
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "trial": t.number,
                "state": state_name(t),
                **{name: t.params.get(name) for name in plan.space()},
                "epochs": epochs,
                plan.objective: value,
                "seconds": seconds,
                "retry_of": Retry.retried_trial_number(t),
                "host": t.user_attrs.get("host"),
                "run": t.user_attrs.get("run"),
                "error": t.user_attrs.get("error") or t.user_attrs.get(INTERRUPTED),
            }
        )
    return rows


def columns(plan: Plan) -> list[str]:
    head = ["trial", "state", *plan.space(), "epochs", plan.objective, "seconds", "retry_of"]
    return [*head, "host", "run", "error"]


def best_trial(study):
    """The best completed trial, or None while there is none."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_record(study, plan: Plan) -> dict | None:
    """best.json: the best trial's whole configuration (its final test back on, for a rerun) and
    what the sweep knows of it, with the test figure of its kept weights apart."""
    best = best_trial(study)
    if best is None:
        return None
    folder = trial_folder(plan.out, best.number)
    return {
        "config": rerun_config(plan.base, best.params).to_dict(),
        "sweep": {
            "study": plan.study,
            "trial": best.number,
            "objective": plan.objective,
            "value": best.value,
            "params": best.params,
            "epochs": best.user_attrs.get("epochs"),
            "run": str(folder) if folder.is_dir() else None,
            "host": best.user_attrs.get("host"),
        },
        # the test set, evaluated once for the kept weights of this trial: reported apart
        "test": best_test(plan, best.number, best.params, folder),
    }


def best_test(plan: Plan, number: int, params: dict, folder: Path) -> dict:
    """The test figure of the best trial's kept weights, measured once, after the search, through
    `resnetlab eval`'s evaluate_run (the trial's test examples, precision and --tta views): the
    trials themselves measured none. Taken from best.json when it holds this trial's already;
    {} when the trial's folder is on another machine."""
    old = read_json(Path(plan.out) / "best.json")
    done = old.get("test", {}).get("kept_test_acc") is not None
    if old.get("sweep", {}).get("trial") == number and done:
        return old["test"]  # the same weights: not evaluated again
    kept = read_summary(folder).get("kept_weights")
    if not kept or not (folder / kept).is_file():
        return {}
    from resnetlab.inference.eval_run import evaluate_run

    cfg = trial_config(plan.base, params)
    r = evaluate_run(folder / kept, data_dir=cfg.data_dir, tta=cfg.tta, device=cfg.device)
    return {
        "trial": number,
        "kept_weights": kept,
        "kept_test_acc": r["acc"],
        "kept_test_loss": r["loss"],
        "test_count": r["count"],
        "tta": None if cfg.tta == "none" else cfg.tta,
        "precision": r["precision"],
        "evaluated": "once, after the search; no trial was chosen or pruned on it",
    }


def write_plots(study, out: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as history.png, importances.png, parallel.png; returns {name:
    why it is missing} for those that could not be drawn (too few trials)."""
    import warnings

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    missing = {}
    for name, _, function in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(views, function)(study)
            fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            fig.set_size_inches(8, 4.5)
            if name == "parallel":
                tidy_parallel(fig)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            write_bytes(out / f"{name}.png", buf.getvalue())
        except Exception as e:  # noqa: BLE001 - e.g. importances need two completed trials
            missing[name] = first_line(e)
            (out / f"{name}.png").unlink(missing_ok=True)
    return missing


def tidy_parallel(fig) -> None:
    """Optuna's parallel coordinates with tick labels that do not overlap: each axis 2 inches
    apart, log axes labelled at 1, 2 and 5 times the decades as plain numbers (Optuna labels
    minor ticks, 2x10^-4 into the next name), at most 5 ticks on a number axis, small labels,
    the names level, and the worst trial's line not white."""
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    for a in axes:
        a.tick_params(axis="y", which="both", labelsize=8)
        if a is not axes[0]:
            a.grid(False)  # a parameter axis's grid lines cross the whole plot: one scale's only
        if a.get_yscale() == "log":
            a.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            a.yaxis.set_minor_locator(NullLocator())
        elif all(_is_number(t.get_text()) for t in a.get_yticklabels()):  # not a choice's names
            a.yaxis.set_major_locator(MaxNLocator(5))
    # Optuna colours each trial's line by its objective from white: the worst trial vanished into
    # the grey background. The same colour map from a quarter of its way (the colour bar follows).
    for lines in axes[0].collections:
        if isinstance(lines, LineCollection) and lines.get_array() is not None:
            cmap = lines.get_cmap()
            lines.set_cmap(ListedColormap(cmap(np.linspace(0.25, 1.0, 256)), name=cmap.name))
    # the names level (Optuna turns them 30 degrees, into the next axis's numbers), 2 inches apart
    axes[0].tick_params(axis="x", labelsize=9, labelrotation=0, pad=8)
    for label in axes[0].get_xticklabels():
        label.set_horizontalalignment("center")
    fig.set_size_inches(max(8.0, 2.0 * len(axes)), 4.5)


def _is_number(text: str) -> bool:
    try:
        float(text.replace("\u2212", "-"))
    except ValueError:
        return False
    return True


def write_report(study, plan: Plan, shown_storage: str, rows: list[dict], best: dict | None):
    """report.html in the sweep folder."""
    out = Path(plan.out)
    missing = write_plots(study, out)
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    cards = [
        ("study", plan.study),
        ("trials", ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"),
        ("objective", f"{plan.objective} ({'max' if 'acc' in plan.objective else 'min'})"),
    ]
    # the study's name is a card; the default one ("sweep") made the title read "sweep sweep"
    heading = f"sweep of {', '.join(plan.space())}"
    body = [f"<h1>{esc(heading)}</h1>"]
    body.append(
        f'<p class="sub">storage {esc(shown_storage)}; sampler {esc(plan.sampler)}, pruner '
        f"{esc(plan.pruner)}; searched: {esc(', '.join(plan.specs))}</p>"
    )
    body.append(
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
            for k, v in cards
        )
        + "</div>"
    )
    body.append(_best_section(best))
    for name, title, _ in PLOTS:
        png = out / f"{name}.png"
        shown = (
            img_tag(png, title) if png.is_file() else f'<p class="note">{esc(missing[name])}</p>'
        )
        body.append(f'<section id="{name}"><h2>{esc(title)}</h2>{shown}</section>')
    body.append(_trials_section(rows, plan))
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(heading)} ({esc(Path(plan.out).name)})</title><style>{STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
    write_text(out / "report.html", page)
    return out / "report.html"


def _best_section(best: dict | None) -> str:
    if best is None:
        return '<section id="best"><h2>best trial</h2><p class="note">no completed trial yet</p></section>'
    s, test = best["sweep"], best["test"]
    link = (
        f' (<a href="{esc(Path(s["run"]).name)}/report.html">its report</a>)'
        if s["run"] and Path(s["run"], REPORT_FILE).is_file()
        else ""
    )
    settings = table(["setting", "value"], [[esc(k), esc(fmt(v))] for k, v in s["params"].items()])
    test_line = (
        f"test accuracy of the best trial's kept weights, evaluated once "
        f"({esc(test.get('kept_weights'))}"
        f"{', ' + esc(test['tta']) + ' TTA' if test.get('tta') else ''}): "
        f"<b>{fmt(test.get('kept_test_acc'))}</b>, after the search; the trials measured no "
        "test figure, and no trial was chosen or pruned on it"
        if test.get("kept_test_acc") is not None
        else "its kept weights are not in this folder (it ran on another machine): not tested"
    )
    return (
        f'<section id="best"><h2>best trial: {s["trial"]}{link}</h2>'
        f"<p>{esc(s['objective'])} {fmt(s['value'])} after {s['epochs']} epochs; rerun it with "
        f"<code>resnetlab train --config best.json</code></p>{settings}"
        f"<p>{test_line}</p></section>"
    )


def _trials_section(rows: list[dict], plan: Plan) -> str:
    header = [c for c in columns(plan) if c != "run"]
    out = Path(plan.out)
    body = []
    for r in rows:
        cells = [esc(_cell(r[c], c, plan.objective)) for c in header]
        if r["run"] and (out / r["run"] / REPORT_FILE).is_file():
            cells[0] = f'<a href="{esc(r["run"])}/report.html">{cells[0]}</a>'
        body.append(cells)
    numeric = {i for i, c in enumerate(header) if c in ("trial", "epochs", "seconds")}
    return f'<section id="trials"><h2>trials</h2><div class="wide">{table(header, body, numeric)}</div></section>'


def _cell(value, column: str, objective: str) -> str:
    if isinstance(value, float) and column == "seconds":
        return f"{value:.1f}"
    if isinstance(value, float) and column != objective:
        return f"{value:.4g}"
    return fmt(value)


def write_outputs(study, plan: Plan, shown_storage: str) -> dict:
    """trials.csv, best.json and report.html; returns what the command prints."""
    out = Path(plan.out)
    rows = trial_rows(study, plan)
    write_csv(out / "trials.csv", rows, columns(plan))
    best = best_record(study, plan)
    files = [str(out / "trials.csv")]
    if best is not None:
        write_json(out / "best.json", best)
        files.append(str(out / "best.json"))
    files.append(str(write_report(study, plan, shown_storage, rows, best)))
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    pruned_here = sum(1 for r in rows if r["run"] and (out / r["run"] / PRUNED_FILE).is_file())
    return {
        "study": plan.study,
        "storage": shown_storage,
        "out": str(out),
        "trials": states,
        "pruned_here": pruned_here,
        "best": best,
        "files": files,
    }
