"""Same accuracy through the streaming path (issue 27): Fashion-MNIST packed into shards and
trained with the `quick` recipe through the streamed loader against the same recipe on the
in-memory data, same seed and settings; prints both kept-weights test accuracies, the gap in
points and each run's time.

The two paths agree in what they do (the same padded crop, flip, progressive resizing, whitened
first layer, validation split and schedule) but not in their random draws: the in-memory loader
draws each batch's augmentation at once, the streamed one each sample's from its own generator;
so the gap is one seed's run-to-run spread plus whatever the paths do differently.

Usage: OMP_NUM_THREADS=2 python benchmarks/stream_accuracy.py [--seed S] [--out DIR] [flags...]
(extra flags go to both runs, e.g. `--epochs 4 --subset 20000` for a shorter look).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from resnetlab.data.shards import pack_builtin
from resnetlab.train import make_config, train


def run(name: str, out: Path, data: str, seed: int, extra: dict) -> dict:
    cfg = make_config("quick", data=data, seed=seed, **extra)
    start = time.perf_counter()
    summary = train(cfg, out=out / name, verbose=False)
    seconds = time.perf_counter() - start
    acc = summary.get("kept_test_acc", summary.get("test_acc"))
    print(f"{name:10s} test acc {acc:.4f}  {seconds:7.1f} s", flush=True)
    return {"test_acc": acc, "seconds": round(seconds, 1), "summary": summary}


def parse_extra(flags: list[str]) -> dict:
    """--name value pairs (numbers where they parse) as TrainConfig overrides."""
    extra = {}
    for flag, value in zip(flags[::2], flags[1::2]):
        try:
            extra[flag.lstrip("-").replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            extra[flag.lstrip("-").replace("-", "_")] = value
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/resnetlab-stream-accuracy"))
    args, rest = parser.parse_known_args()
    extra = parse_extra(rest)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    start = time.perf_counter()
    manifest = pack_builtin("fashion-mnist", args.out / "shards")
    counts = {s: v["count"] for s, v in manifest["splits"].items()}
    print(f"packed fashion-mnist {counts} in {time.perf_counter() - start:.1f} s", flush=True)
    memory = run("in-memory", args.out, "fashion-mnist", args.seed, extra)
    streamed = run("streamed", args.out, f"shards:{args.out / 'shards'}", args.seed, extra)
    gap = 100 * (memory["test_acc"] - streamed["test_acc"])
    print(f"gap {gap:+.2f} points (in-memory minus streamed; contract: within 0.3)")
    (args.out / "result.json").write_text(
        json.dumps({"in_memory": memory, "streamed": streamed, "gap_points": gap}, indent=1)
    )


if __name__ == "__main__":
    main()
