"""Regenerate the CPU tables of BENCHMARKS.md (section "## Speed") from fresh measurements.

    python benchmarks/cpu_tables.py                 # the two headline configurations + memory
    python benchmarks/cpu_tables.py --ablations     # also: what each trick buys, threads, compile
    python benchmarks/cpu_tables.py --render-only   # re-render the tables from the saved JSON

Every figure comes from a `resnetlab bench --json` (or `resnetlab train`) run started here; the raw
JSON is kept in benchmarks/results/cpu_speed.json and the tables between the markers
`<!-- speed-tables:begin -->` and `<!-- speed-tables:end -->` of BENCHMARKS.md are replaced.
The machine may be shared: each table records the load average before and after its run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from resnetlab.bench import FIGURES, compute_summary  # noqa: E402
from resnetlab.fileio import write_json, write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu_speed.json"
DOC = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- speed-tables:begin -->", "<!-- speed-tables:end -->"

# The 2 cores are shared by a team: with other processes running, torch's default of two threads
# stalls (each parallel region waits for a descheduled partner thread; measured 3-7x slower than
# one thread), so the headline tables use one thread and "threads2_28px" shows two.
# (key, title, bench flags): the two targets.
HEADLINE = [
    ("b256_28px", "batch 256, 28 px, one thread", ["--batch-size", "256", "--threads", "1"]),
    (
        "b64_96px",
        "batch 64, 96 px, one thread",
        ["--batch-size", "64", "--resize", "96", "--steps", "2", "--threads", "1"],
    ),
]
# (key, title, bench flags): one trick at a time, threads, compile; on the cheaper 28 px configuration.
ABLATIONS = [
    (
        "tricks_28px",
        "each trick alone, batch 256, 28 px, one thread",
        [
            "--batch-size",
            "256",
            "--threads",
            "1",
            "--variants",
            "textbook,fp32,fp32-nchw,fp32-noforeach,fp32-nofuse,bf16,bf16-nchw",
        ],
    ),
    (
        "threads2_28px",
        "two threads (torch's default here), batch 256, 28 px",
        ["--batch-size", "256", "--threads", "2", "--steps", "2", "--repeats", "2"],
    ),
    (
        "compile_28px",
        "torch.compile (inductor), batch 256, 28 px, one thread",
        [
            "--batch-size",
            "256",
            "--threads",
            "1",
            "--repeats",
            "2",
            "--variants",
            "textbook,fp32,fp32-compile,bf16,bf16-compile",
        ],
    ),
]
# (preset, extra train flags): peak RSS of a short run of each CPU preset. The whole dataset is
# loaded and the peak comes from a training step and an evaluation batch, so one epoch of a subset
# shows it; one thread (OMP_NUM_THREADS=1) keeps the run short on the shared machine.
MEMORY = [
    ("quick", ["--epochs", "1", "--subset", "2048", "--val-split", "256"]),
    ("d2l", ["--epochs", "1", "--subset", "512"]),
]


def _bench(flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "resnetlab", "bench", *flags, "--json"]
    print("$", "resnetlab bench", " ".join(flags), file=sys.stderr, flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        # An empty inductor cache: the compile time a first run pays (a warm cache skips most of it).
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache),
        )
    if proc.returncode != 0:
        raise SystemExit(
            f"bench failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
        )
    result = json.loads(proc.stdout)
    result["command"] = "resnetlab bench " + " ".join(flags)
    result["wall_s"] = time.perf_counter() - started
    return result


def _train_peak_rss(preset: str, flags: list[str]) -> dict:
    """Peak RSS of a `resnetlab train` child, from wait4's resource usage."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile() as log:
        args = ["train", "--preset", preset, "--device", "cpu", *flags, "--out", out, "--overwrite"]
        print("$ resnetlab", " ".join(args[:-3]), file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        proc = subprocess.Popen(
            [sys.executable, "-m", "resnetlab", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(
                f"train --preset {preset} failed: {log.read().decode().strip().splitlines()[-1:]}"
            )
    return {
        "preset": preset,
        "command": "resnetlab " + " ".join(args[:-3]),
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


# --- rendering -------------------------------------------------------------------------------


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _where(r: dict) -> str:
    m, c = r["machine"], r["config"]
    return (
        f"{m['date'][:10]}, {m['cpu']} ({m['logical_cpus']} CPUs, {c['threads']} torch threads), "
        f"torch {m['torch']}; load average {m['loadavg_1min'][0]} -> {m['loadavg_1min'][1]} "
        f"(the run itself adds about {c['threads']}; the rest is other processes on the same cores)"
    )


def _variant_table(r: dict) -> list[str]:
    names = list(r["results"])
    head = (
        "| figure | "
        + " | ".join(f"{n}" + (" | ratio" if n in r["ratios"] else "") for n in names)
        + " |"
    )
    rule = "|---|" + "".join("---:|" * (2 if n in r["ratios"] else 1) for n in names)
    rows = [head, rule]
    for label, key, ratio_key, fmt in FIGURES:
        if not any(key in res for res in r["results"].values()):
            continue  # a figure that run did not record (saved before bench had it)
        cells = []
        for n in names:
            cells.append(_cell(r["results"][n].get(key), fmt))
            if n not in r["ratios"]:
                continue
            ratio = r["ratios"][n].get(ratio_key) if ratio_key else None
            if ratio_key is None:  # a figure without a ratio (GFLOP/s)
                cells.append("")
            else:
                cells.append(
                    "n/a"
                    if ratio is None
                    else f"**{ratio:.2f}x**"
                    if ratio_key != "memory"
                    else f"{ratio:.2f}x"
                )
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


# (figure, ratio key, at least, table keys): the CPU targets, as resnetlab / textbook ratios.
TARGETS = [
    ("training step", "train", 1.3, ["b256_28px", "b64_96px"]),
    ("evaluation", "eval", 2.0, ["b256_28px", "b64_96px"]),
    ("whole epoch (data + training + evaluation)", "epoch", 3.0, ["b64_96px"]),
]
RSS_TARGETS_MIB = {"quick": 2048, "d2l": 4096}


def _targets(saved: dict) -> list[str]:
    rows = ["| target | configuration | fp32 | bf16 |", "|---|---|---:|---:|"]
    for figure, key, floor, tables in TARGETS:
        for table in tables:
            r = saved.get(table)
            if r is None:
                continue
            cells = []
            for variant in ("fp32", "bf16"):
                ratios = r["ratios"].get(variant, {})
                wall, cpu = ratios.get(key), ratios.get(key + "_cpu")
                if wall is None or cpu is None:
                    cells.append("not measured")
                    continue
                verdict = (
                    "met"
                    if min(wall, cpu) >= floor
                    else "missed"
                    if max(wall, cpu) < floor
                    else "mixed"
                )
                cells.append(f"{wall:.2f}x / {cpu:.2f}x {verdict}")
            title = next(t for k, t, _ in HEADLINE if k == table)
            rows.append(f"| {figure} >= {floor}x | {title} | " + " | ".join(cells) + " |")
    defaults = next((saved[k]["defaults"] for k, _, _ in HEADLINE if k in saved), {})
    for row in saved.get("memory", []):
        limit = RSS_TARGETS_MIB.get(row["preset"])
        if limit:  # in the column of the precision the preset trains in
            cell = f"{row['peak_rss_mib']:,.0f} MiB {'met' if row['peak_rss_mib'] <= limit else 'missed'}"
            bf16 = defaults.get(row["preset"], "fp32").startswith("bf16")
            rows.append(
                f"| peak RSS of train --preset {row['preset']} <= {limit // 1024} GiB | `{row['command']}` | "
                + (f" | {cell} |" if bf16 else f"{cell} | |")
            )
    return rows


def render(saved: dict) -> str:
    out = [
        BEGIN,
        "<!-- generated by benchmarks/cpu_tables.py: edit that script, not these lines -->",
        "",
    ]
    if any(k in saved for k, _, _ in HEADLINE):
        out += [
            "#### the issue's targets on this CPU",
            "",
            'Ratios to the textbook from the tables below, by the wall clock / by CPU-seconds; "met" needs both.',
            "",
        ]
        out += _targets(saved) + [""]
    for group in ("headline", "ablations"):
        for key, title, _ in HEADLINE if group == "headline" else ABLATIONS:
            r = saved.get(key)
            if r is None:
                continue
            out += [
                f"#### {title}",
                "",
                f"`{r['command']}`: {_where(r)}; median of {r['config']['repeats']} "
                f"rounds of {r['config']['steps']} steps; the whole command took {r['wall_s']:.0f} s.",
                "",
            ]
            out += _variant_table(r)
            if "compute" in r:
                out += ["", f"Compute: {compute_summary(r)}."]
            extra = {
                n: res["warmup_train_s"]
                for n, res in r["results"].items()
                if res["settings"].get("compile")
            }
            if extra:
                out += [
                    "",
                    "First (compiling, empty inductor cache) training round: "
                    + ", ".join(
                        f"{n} {s:.0f} s for {r['config']['steps']} steps" for n, s in extra.items()
                    )
                    + ".",
                ]
            out.append("")
    mem = saved.get("memory")
    if mem:
        out += [
            "#### peak RSS of `resnetlab train` on the CPU",
            "",
            "| preset | command | peak RSS | target |",
            "|---|---|---:|---:|",
        ]
        targets = {"quick": "2 GiB", "d2l": "4 GiB"}
        for row in mem:
            out.append(
                f"| {row['preset']} | `{row['command']}` | {row['peak_rss_mib']:,.0f} MiB | "
                f"{targets.get(row['preset'], '')} |"
            )
        out += [
            "",
            f"Measured {saved.get('memory_date', '')} as the child's maximum resident set (wait4), "
            f"with OMP_NUM_THREADS=1.",
        ]
    out.append(END)
    return "\n".join(out)


def _write_doc(tables: str) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(
            f"{DOC} has no {BEGIN} ... {END} block in its ## Speed section; add the two markers"
        )
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    write_text(DOC, text[:start] + tables + text[stop:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also measure each trick alone, one thread and compile",
    )
    p.add_argument("--only", help="comma-separated table keys to (re)measure, e.g. b64_96px,memory")
    p.add_argument(
        "--render-only", action="store_true", help="re-render BENCHMARKS.md from the saved JSON"
    )
    args = p.parse_args(argv)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.render_only:
        default = [k for k, _, _ in HEADLINE + (ABLATIONS if args.ablations else [])] + ["memory"]
        wanted = args.only.split(",") if args.only else default
        known = [k for k, _, _ in HEADLINE + ABLATIONS] + ["memory"]
        if set(wanted) - set(known):
            p.error(f"unknown table {sorted(set(wanted) - set(known))}; known: {', '.join(known)}")
        for key, _, flags in HEADLINE + ABLATIONS:
            if key in wanted:
                saved[key] = _bench(flags)
                write_json(RESULTS, saved)  # keep what finished if a later run fails
        if "memory" in wanted:
            saved["memory"] = [_train_peak_rss(preset, flags) for preset, flags in MEMORY]
            saved["memory_date"] = datetime.date.today().isoformat()
            write_json(RESULTS, saved)
    _write_doc(render(saved))
    print(f"updated {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
