"""`resnetlab compare RUN RUN ...`: several runs side by side, as compare.png (their curves on
shared axes: one colour per run, training dashed, validation and test solid), compare.json and
compare.html (the figure, a table of final and kept figures, and the settings that differ).

It reads run folders only (config.json, metrics.csv, summary.json), so it works on any runs,
finished or not: the degradation experiment's four nets (`resnetlab compare exp/plain20
exp/resnet20 exp/plain56 exp/resnet56`) draw that experiment's comparison.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from resnetlab.errors import UsageError, plural
from resnetlab.fileio import write_json, write_text
from resnetlab.report.html import CSP, STYLE, esc, fmt, img_tag, load_run, table
from resnetlab.report.plots import have_matplotlib, new_figure, save_png

FIGURES = (
    "epochs",
    "train_acc",
    "test_acc",
    "val_acc",
    "best_val_acc",
    "kept_weights",
    "kept_test_acc",
    "train_seconds",
    "examples_per_sec",
)
FIGURE_HEADERS = (
    "epochs",
    "final train acc",
    "final test acc",
    "final val acc",
    "best val acc",
    "kept weights",
    "kept test acc",
    "train s",
    "examples/s",
)
IGNORED_SETTINGS = (
    "data_dir",
    "tensorboard",
    "mlflow",
)  # where the files were and what was logged, not what was trained


def default_compare_path(root: str | Path = "runs") -> Path:
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-compare"


def run_labels(paths: list[Path]) -> list[str]:
    """Each run's folder name; parent/name where two runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _final_figures(run: dict) -> dict:
    s, metrics = run["summary"], run["metrics"]
    last = metrics[-1] if metrics else {}
    figures = {
        "epochs": s.get("epochs", last.get("epoch", 0)),
        "train_acc": last.get("train_acc"),
        # --no-epoch-test: the last weights' test figure is measured once, at the end (summary)
        "test_acc": last.get("test_acc", s.get("test_acc")),
        "val_acc": last.get("val_acc"),
    }
    for key in (
        "best_val_acc",
        "kept_weights",
        "kept_test_acc",
        "train_seconds",
        "examples_per_sec",
    ):
        figures[key] = s.get(key)
    if figures["train_seconds"] is None and metrics:
        figures["train_seconds"] = sum(r.get("epoch_seconds", 0.0) for r in metrics)
    return figures


def differing_settings(configs: list[dict]) -> dict[str, list]:
    """setting -> each run's value, for the settings whose values are not all equal; `stream` as
    the run had it (shards:PATH streams without the flag: TrainConfig.streamed)."""
    configs = [
        dict(c, stream=True) if str(c.get("data", "")).startswith("shards:") else c for c in configs
    ]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    out = {}
    for k in keys:
        if k in IGNORED_SETTINGS:
            continue
        values = [c.get(k) for c in configs]
        if any(
            json.dumps(v, sort_keys=True) != json.dumps(values[0], sort_keys=True)
            for v in values[1:]
        ):
            out[k] = values
    return out


def compare_data(folders: list[str | Path]) -> dict:
    if len(folders) < 2:
        raise UsageError(f"compare takes two or more run folders, got {len(folders)}")
    runs = [load_run(f) for f in folders]
    labels = run_labels([r["path"] for r in runs])
    return {
        "runs": [
            {
                "label": label,
                "run": str(r["path"]),
                "state": r["state"],
                "model": r["config"].get("config", {}).get("model"),
                "data": r["config"].get("config", {}).get("data"),
                **_final_figures(r),
                "metrics": r["metrics"],
            }
            for label, r in zip(labels, runs)
        ],
        "differing_settings": differing_settings([r["config"].get("config", {}) for r in runs]),
    }


def plot_comparison(data: dict, path: str | Path):
    """Loss (left) and accuracy (right) per epoch; one colour per run; train dashed, val/test solid."""
    fig = new_figure(figsize=(11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2, sharex=True)
    colours = [f"C{i % 10}" for i in range(len(data["runs"]))]
    drawn, losses = set(), []
    for run, colour in zip(data["runs"], colours):
        rows = run["metrics"]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        for split, style in (
            ("train", dict(linestyle="--", marker=".", markersize=3)),
            ("val", dict(linestyle="-", marker="x", markersize=4, alpha=0.7)),
            ("test", dict(linestyle="-", marker=".", markersize=5)),
        ):
            if f"{split}_acc" not in rows[0]:
                continue
            label = f"{run['label']} {split}"
            drawn.add(split)
            losses += [r[f"{split}_loss"] for r in rows]
            ax_loss.plot(
                epochs, [r[f"{split}_loss"] for r in rows], color=colour, label=label, **style
            )
            ax_acc.plot(
                epochs, [r[f"{split}_acc"] for r in rows], color=colour, label=label, **style
            )
    from matplotlib.ticker import MaxNLocator

    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    log = bool(losses) and all(v > 0 for v in losses)
    if log:  # one diverged run (a loss of 1e6) would flatten every other run on a linear axis
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel("loss (log scale)")
    handles, labels = ax_acc.get_legend_handles_labels()
    if handles:  # beside the axes, not over the curves (save_png's tight box keeps it)
        fig.legend(
            handles,
            labels,
            fontsize=8,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            ncol=1 + len(handles) // 24,
        )
    fig.suptitle(comparison_subtitle(drawn, log))
    fig.tight_layout()
    save_png(fig, Path(path))
    return fig


def comparison_subtitle(drawn: set[str], log: bool) -> str:
    """What compare.png shows, naming only the curves it drew."""
    parts = ["training dashed"] if "train" in drawn else []
    solid = [
        name for split, name in (("val", "validation (x)"), ("test", "test (.)")) if split in drawn
    ]
    if solid:
        parts.append(f"{' and '.join(solid)} solid")
    parts.append("one colour per run")
    if log:
        parts.append("loss on a log scale")
    if "test" not in drawn:
        parts.append("no per-epoch test figures (see the table)")
    return "; ".join(parts)


def _figures_table(data: dict) -> str:
    header = ["run", "state", "model", "data", *FIGURE_HEADERS]
    rows = []
    for r in data["runs"]:
        cells = [esc(r["label"]), esc(r["state"]), esc(r["model"]), esc(r["data"])]
        for k in FIGURES:
            v = r.get(k)
            cells.append(
                esc(
                    f"{v:.1f}"
                    if k in ("train_seconds", "examples_per_sec") and v is not None
                    else fmt(v)
                )
            )
        rows.append(cells)
    numeric = set(range(4, len(header))) - {4 + FIGURES.index("kept_weights")}
    return f'<div class="wide">{table(header, rows, numeric)}</div>'


def _settings_table(data: dict) -> str:
    diff = data["differing_settings"]
    if not diff:
        return '<p class="note">the runs share every setting</p>'
    labels = [r["label"] for r in data["runs"]]
    return table(
        ["setting", *labels],
        [[f"<code>{esc(k)}</code>", *[esc(fmt(v)) for v in values]] for k, values in diff.items()],
    )


def compare_runs(folders: list[str | Path], out: str | Path | None = None) -> dict:
    """Write compare.png (with matplotlib), compare.json and compare.html into `out`; return the
    data (without the per-epoch rows) and the paths written."""
    data = compare_data(folders)
    given = out is not None
    out = Path(out) if given else default_compare_path()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "compare.json", "html": out / "compare.html"}
    if have_matplotlib():
        files["png"] = out / "compare.png"
        plot_comparison(data, files["png"])
    write_json(files["json"], data)
    figure = (
        img_tag(files["png"], "curves of the runs")
        if "png" in files
        else "<p class=\"note\">matplotlib is not installed: no figure (pip install 'resnetlab[plot]')</p>"
    )
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            f"<title>comparison of {len(data['runs'])} runs</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            f"<h1>Comparison of {len(data['runs'])} runs</h1>",
            '<p class="sub">'
            + ", ".join(f"<code>{esc(r['run'])}</code>" for r in data["runs"])
            + "</p>",
            f'<section id="curves"><h2>Curves</h2>{figure}</section>',
            f'<section id="figures"><h2>Final and kept figures</h2>{_figures_table(data)}</section>',
            f'<section id="settings"><h2>Settings that differ</h2>{_settings_table(data)}</section>',
            "</body>",
            "</html>",
            "",
        ]
    )
    write_text(files["html"], page)
    return {
        "out": str(out),
        "out_given": given,
        "files": {k: str(v) for k, v in files.items()},
        "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in data["runs"]],
        "differing_settings": data["differing_settings"],
    }


def format_comparison(result: dict) -> str:
    """`resnetlab compare`'s text: a line per run, the settings that differ, the files written."""
    lines = []
    for r in result["runs"]:
        acc = r["kept_test_acc"] if r["kept_test_acc"] is not None else r["test_acc"]
        figure = f"test acc {acc:.4f}" if acc is not None else "test acc -"
        if acc is None and r.get("best_val_acc") is not None:  # a sweep's trial: no test figure
            figure = f"test not evaluated, best val acc {r['best_val_acc']:.4f}"
        lines.append(
            f"{r['label']}: {r['model']} on {r['data']}, {r['epochs']} {plural(r['epochs'], 'epoch')}, {r['state']}, "
            + figure
        )
    for k, values in result["differing_settings"].items():
        lines.append(f"  {k}: " + " | ".join(json.dumps(v) for v in values))
    where = result["out"] + (
        "" if result.get("out_given", True) else " (the default folder; --out DIR for another)"
    )
    lines.append(f"written into {where}: {', '.join(result['files'].values())}")
    return "\n".join(lines)
