"""The bench's report: the table `resnetlab bench` prints, and the sentence on the compute ceiling."""

from __future__ import annotations

FIGURES = (  # (label, result key, ratio key or None, format); the CPU-second rows exist on a CPU only
    ("training ex/s", "train_ex_s", "train", "{:.1f}"),
    ("training ex/CPU-s", "train_ex_cpu_s", "train_cpu", "{:.1f}"),
    ("training GFLOP/s", "train_gflop_s", None, "{:.0f}"),
    ("evaluation ex/s", "eval_ex_s", "eval", "{:.1f}"),
    ("evaluation ex/CPU-s", "eval_ex_cpu_s", "eval_cpu", "{:.1f}"),
    ("loader ex/s", "loader_ex_s", "loader", "{:,.0f}"),
    ("loader ex/CPU-s", "loader_ex_cpu_s", "loader_cpu", "{:,.0f}"),
    ("epoch s (est.)", "epoch_s", "epoch", "{:,.0f}"),
    ("epoch CPU-s (est.)", "epoch_cpu_s", "epoch_cpu", "{:,.0f}"),
    ("peak MiB (added)", "peak_mib", "memory", "{:,.0f}"),
)


def compute_summary(result: dict) -> str:
    """One sentence: the arithmetic of a training step, the matmul peaks and the ceiling they set."""
    compute = result["compute"]
    peaks = ", ".join(
        f"{name} {value:.0f}" for name, value in compute["matmul_peak_gflop_s"].items()
    )
    text = (
        f"a training step is {compute['train_gflop_per_example']:.3f} GFLOP per example (convolutions and "
        f"linear layers, forward and backward); this device's matmul peak: {peaks} GFLOP/s"
    )
    if "train_ceiling" in compute:
        text += (
            f"; at that peak, a path with the textbook's FLOPs trains at most "
            f"{compute['train_ceiling']:.2f}x the textbook here"
        )
    return text


def format_report(result: dict) -> str:
    cfg, machine, results, ratios = (
        result["config"],
        result["machine"],
        result["results"],
        result["ratios"],
    )
    where = (
        machine.get("gpu")
        or f"{machine['cpu']}, {machine['logical_cpus']} CPUs, {cfg['threads']} threads"
    )
    lines = [
        f"resnetlab bench: {cfg['model']} on {cfg['data']}, batch {cfg['batch_size']}, {cfg['input_px']} px, "
        f"{cfg['device']} ({where}), torch {machine['torch']}, {machine['date']}",
        f"median of {cfg['repeats']} rounds of {cfg['steps']} steps after a warm-up; load average "
        f"{machine['loadavg_1min'][0]} -> {machine['loadavg_1min'][1]}",
    ]
    width = max(18, *(len(n) + 9 for n in results))
    lines.append(f"{'':20}" + "".join(f"{name:>{width}}" for name in results))
    for label, key, ratio_key, fmt in FIGURES:
        if key not in next(iter(results.values())):
            continue
        cells = []
        for name, res in results.items():
            value = res[key]
            text = "n/a" if value is None else fmt.format(value)
            ratio = ratios.get(name, {}).get(ratio_key)
            if ratio is not None:
                text += f" ({ratio:.2f}x)"
            cells.append(f"{text:>{width}}")
        lines.append(f"{label:20}" + "".join(cells))
    lines.append(
        "ratios are resnetlab / textbook (epoch: textbook time / resnetlab time; memory: below 1 is leaner)"
    )
    lines.append(f"compute: {compute_summary(result)}")
    lines.append(f"epoch: {result['notes']['epoch_s']}")
    if "busy" in result["notes"]:
        lines.append(f"warning: {result['notes']['busy']}")
    defaults = ", ".join(f"{preset}: {variant}" for preset, variant in result["defaults"].items())
    lines.append(f"resnetlab's default per preset on this device: {defaults}")
    return "\n".join(lines)
