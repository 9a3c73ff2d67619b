"""`resnetlab eval` and the analysis a run's report shows: a trained model on a test set (loss,
accuracy, per-class table, confusion matrix) through the same views as the run's final figure, and
the test images it gets most confidently wrong."""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.data.identity import data_changed, data_identity
from resnetlab.device import resolve_device
from resnetlab.errors import DataError, UsageError
from resnetlab.inference.evaluation import evaluate
from resnetlab.inference.loading import load_model, loader_for, open_test_set, shown_images
from resnetlab.inference.onnx import load_onnx_model
from resnetlab.inference.tta import with_tta
from resnetlab.report.mistakes import (
    MISTAKES_K,
    Mistakes,
    mistakes_from_evaluation,
    per_class_table,
    write_analysis,
)
from resnetlab.report.runs import has_test_figures
from resnetlab.rundir import (
    CONFUSION_CSV,
    MISTAKES_CSV,
    kept_weights,
    read_config,
    read_summary,
)

PRECISIONS = ("run", "fp32", "bf16")
EVAL_WORKERS = (
    2  # processes decoding a streamed test set where no run says (StreamLoader's default)
)


def evaluate_run(
    source: str | Path,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    tta: str = "none",
    device: str = "auto",
    batch_size: int | None = None,
    mistakes: int = 0,
    out: str | Path | None = None,
    precision: str = "run",
    full_test: bool = False,
    workers: int | None = None,
) -> dict:
    """Loss, accuracy, per-class table and confusion matrix of a run's (or weights file's) model on
    a test set (`data`, default the one it was trained on), through `tta`'s views; with `mistakes`
    the most confident mistakes are written too (see eval_mistakes).

    By default a run's own test figure is reproduced exactly: the run's test examples (its
    --subset; `full_test` takes them all), its precision (`precision="run"`: bf16 autocast and
    channels_last as the run had them, on the same kind of device; "fp32" or "bf16" force one),
    its evaluation batch, and its unfolded batch norms (`predict` folds them; folding changes the
    float rounding). A packed set (shards:PATH, or the run's own data when it was streamed) is
    streamed through the run's evaluation view (data/eval_view.py), decoded by `workers`
    processes (default: the run's --workers)."""
    _check_arguments(mistakes, batch_size, precision, workers)
    dev = resolve_device(device)
    onnx = Path(source).suffix == ".onnx"  # an exported model: onnxruntime, float32, on the CPU
    model, meta = load_onnx_model(source) if onnx else load_model(source, dev)
    how = _as_the_run(source, dev, data or meta["data"], precision, full_test)
    if onnx:
        dev = torch.device("cpu")
        how.update(amp=False, channels_last=False, precision_source="onnxruntime runs float32")
    test_set = open_test_set(
        meta, data, root=data_dir, subset=how["subset"], seed=how["seed"], remote=how["remote"]
    )  # a packed set (shards:PATH) streamed through the run's evaluation view
    if data is None:  # the run's own test set: an image folder's may have changed since
        _check_same_data(meta, test_set, source)
    _check_matches(test_set, meta, data or meta["data"])
    if how["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    loader = loader_for(
        meta,
        test_set,
        batch_size=batch_size or how["batch_size"],
        device=dev,
        channels_last=how["channels_last"],
        workers=how["workers"] if workers is None else workers,
    )
    net = with_tta(model, tta)  # the trainer's final test figure uses the same views
    found = {}
    if mistakes > 0:  # one pass: the figures and the mistakes, written to `out` (RUN/eval/)
        changed = data if data not in (None, meta["data"]) else None
        setting = eval_setting(changed, tta if tta != how["tta"] else None, full_test, precision)
        result, found = eval_mistakes(
            net,
            loader,
            dev,
            test_set,
            source,
            out=out,
            k=mistakes,
            amp=how["amp"],
            setting=setting,
            images=shown_images(meta, test_set),
        )
    else:
        result = evaluate(net, loader, dev, amp=how["amp"], num_classes=meta["num_classes"])
    return {
        "weights": str(source),
        "data": data or meta["data"],
        "tta": tta,
        "precision": "bf16" if how["amp"] else "fp32",
        "precision_source": how["precision_source"],
        "test_examples": how["test_examples"],
        **_figures(result, test_set.classes),
        **found,
    }


def run_cache(cfg: dict) -> dict:
    """The shard cache (and its bound) a run's config gives for shards:URL: its test split is
    read through it, not copied again into the default cache (maybe on another, smaller disk)."""
    return {k: cfg[k] for k in ("cache", "cache_size") if isinstance(cfg.get(k), str)}


def _check_matches(test_set, meta: dict, data: str) -> None:
    """The test set must have the model's input channels and classes."""
    if test_set.images.shape[1] != meta["in_chans"] or len(test_set.classes) != meta["num_classes"]:
        raise UsageError(
            f"{data} has {test_set.images.shape[1]} channels and {len(test_set.classes)} classes, "
            f"but the model takes {meta['in_chans']} channels and predicts {meta['num_classes']} classes; pick a matching --data"
        )


def _check_same_data(meta: dict, test_set, source) -> None:
    """Refuse, in one line, a run's own data whose test split is no longer the one the run
    recorded (an image folder's files added, removed or replaced): its figure would not be the
    run's. Only the test split's version is compared (a weights file's "data" is the data's name,
    not a version)."""
    name = meta["data"]
    why = data_changed(meta, data_identity(name, test_set), name, f"since {source} was trained")
    if why:
        raise DataError(
            f"{why}; put it back as it was, or give --data {name} to evaluate on it as it is now"
        )


def _figures(result: dict, classes: list[str]) -> dict:
    """An evaluation's figures as `eval` reports them."""
    return {
        "loss": result["loss"],
        "acc": result["acc"],
        "count": result["count"],
        **({"unreadable": len(result["unreadable"])} if result.get("unreadable") else {}),
        "per_class": per_class_table(result["confusion"], classes),
        "confusion": result["confusion"].tolist(),
        "classes": classes,
    }


def _as_the_run(source, dev: torch.device, data: str, precision: str, full_test: bool) -> dict:
    """How `eval` evaluates: the run's way where its config.json is beside the weights (same data):
    its test subset and seed, its bf16 and channels_last on the same kind of device, its
    per-process evaluation batch; otherwise fp32, the whole test set, batches of 256."""
    source = Path(source)
    record = read_config(source if source.is_dir() else source.parent)
    cfg = record.get("config") if isinstance(record.get("config"), dict) else {}
    workers = cfg.get("workers", EVAL_WORKERS)  # the run's decoding processes, whatever the data
    workers = workers if isinstance(workers, int) and workers >= 0 else EVAL_WORKERS
    remote = run_cache(cfg)  # whatever the data
    if cfg.get("data") != data:
        cfg = {}  # another dataset (or no run): nothing of the run applies
    same_kind = bool(cfg) and str(record.get("device", "")).split(":")[0] == dev.type
    subset = None if full_test else cfg.get("subset")
    amp = {"run": bool(record.get("amp")) and same_kind, "fp32": False, "bf16": True}[precision]
    if precision != "run":
        source_of = f"--precision {precision}"
    elif not cfg:
        source_of = "no run settings found"
    else:
        source_of = "as the run" if same_kind else f"the run trained on {record.get('device')}"
    world = max(int(record.get("world_size", 1) or 1), 1)
    return {
        "subset": subset,
        "seed": cfg.get("seed", 0),
        "amp": amp,
        "channels_last": bool(record.get("channels_last")) and same_kind,
        "batch_size": -(-cfg["batch_size"] // world) if cfg.get("batch_size") else 256,
        "precision_source": source_of,
        "tta": cfg.get("tta", "none"),  # the views of the run's own final figure
        "workers": workers,  # decoding processes for a streamed test set
        "remote": remote,
        "test_examples": f"the run's --subset {subset} (seed {cfg.get('seed', 0)})"
        if subset
        else "all",
    }


def _check_arguments(
    mistakes: int, batch_size: int | None, precision: str, workers: int | None = None
) -> None:
    """evaluate_run's arguments, refused in one line each (the CLI's flags and Python alike)."""
    if mistakes < 0:
        raise UsageError(f"--mistakes must be zero or positive, got {mistakes}")
    if batch_size is not None and batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be zero or positive, got {workers}")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision is one of {', '.join(PRECISIONS)}, got {precision!r}")


def eval_mistakes(
    model,
    loader,
    device,
    test_set,
    source: str | Path,
    *,
    out: str | Path | None,
    k: int,
    amp: bool = False,
    setting: str = "",
    images=None,
) -> tuple[dict, dict]:
    """`resnetlab eval`'s pass: (what engine.evaluate returns: loss, acc, count, confusion; the
    mistakes' summary) from one pass, with mistakes.png/.csv and confusion.csv written into `out`,
    by default eval/ beside the weights (RUN/eval/ for a run folder), so the training run's own
    files (made on its test set, perhaps a subset) are left as they are; an eval with other
    settings than the run's (`setting`, from eval_setting) writes into eval/<setting>/ and names
    it in the figure's title, so one eval's files never replace another's."""
    source = Path(source)
    default = (source if source.is_dir() else source.parent) / "eval"
    folder = Path(out) if out is not None else default / setting if setting else default
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; give a folder")
    m = find_mistakes(model, loader, device, amp=amp, classes=list(test_set.classes), k=k)
    files = write_analysis(
        folder,
        m,
        test_set.images if images is None else images,  # `images`: as the model saw them
        title=f"{source.name}{f' ({setting})' if setting else ''}: {m.wrong} of {m.count} "
        f"{test_set.name} test images wrong; the {len(m.items)} most confident",
    )
    result = {"loss": m.loss, "acc": m.acc, "count": m.count, "confusion": m.confusion}
    if m.unreadable:
        result["unreadable"] = [u["index"] for u in m.unreadable]
    return result, {
        "wrong": m.wrong,
        "mistakes_shown": len(m.items),
        "mistakes_dir": str(folder),
        "mistakes_files": [str(f) for f in files],
    }


def eval_setting(data: str | None, tta: str | None, full_test: bool, precision: str) -> str:
    """What sets an eval apart from the run's own figure (other data, other views than the run's
    final figure, all test examples, a forced precision), as a folder name ("" when nothing
    does): e.g. "tta-flip", "no-tta" (the run's figure had views), "mnist-full-test", "fp32"."""
    parts = [
        data.replace(":", "-").replace("/", "-") if data else "",
        ("no-tta" if tta == "none" else f"tta-{tta}") if tta else "",
        "full-test" if full_test else "",
        precision if precision != "run" else "",
    ]
    return "-".join(p for p in parts if p)


def find_mistakes(
    model: torch.nn.Module,
    loader,
    device: torch.device | str,
    *,
    amp: bool = False,
    classes: list[str],
    k: int = MISTAKES_K,
) -> Mistakes:
    """The top-`k` confident mistakes of `model` on `loader` (unshuffled, one process: an item's
    `index` is its position in the loader's dataset), from one evaluation pass."""
    result = evaluate(
        model, loader, torch.device(device), amp=amp, num_classes=len(classes), per_example=True
    )
    describe = getattr(loader.dataset, "describe", None)  # streamed data: unreadable files
    return mistakes_from_evaluation(result, loader.dataset.labels, classes, k, describe)


def ensure_analysis(folder: str | Path, *, device: str = "auto", batch_size: int = 256) -> bool:
    """For a finished run without mistakes.csv/confusion.csv (made before they existed): compute
    them with the kept weights on the run's own test set (its --subset too), with the run's bf16 and
    channels_last settings on the same kind of device. False when not needed."""
    folder = Path(folder)
    summary = read_summary(folder)
    if not summary or ((folder / MISTAKES_CSV).exists() and (folder / CONFUSION_CSV).exists()):
        return False
    if not has_test_figures(summary):  # --no-final-test: its test set stays unseen
        return False
    kept = folder / kept_weights(summary)
    if not kept.exists():
        raise UsageError(
            f"{folder} holds no {kept.name}; its weights are gone, so its mistakes cannot be found"
        )
    record = read_config(folder)
    cfg = record["config"]
    dev = resolve_device(device)
    same_kind = (
        str(record.get("device", "")).split(":")[0] == dev.type
    )  # then compute as the run did
    amp = bool(record.get("amp")) and same_kind
    channels_last = bool(record.get("channels_last")) and same_kind
    model, meta = load_model(kept, dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    test_set = open_test_set(
        meta,
        cfg["data"],
        root=cfg.get("data_dir"),
        subset=cfg.get("subset"),
        seed=cfg["seed"],
        remote=run_cache(cfg),
    )
    loader = loader_for(
        meta,
        test_set,
        batch_size=max(cfg["batch_size"], batch_size),
        device=dev,
        channels_last=channels_last,
        workers=cfg.get("workers", EVAL_WORKERS),
    )
    model = with_tta(
        model, cfg.get("tta", "none")
    )  # the views the run's own final test figure used
    m = find_mistakes(model, loader, dev, amp=amp, classes=list(test_set.classes))
    write_analysis(
        folder,
        m,
        shown_images(meta, test_set),
        title=f"{kept.name}: {m.wrong} of {m.count} test images wrong; "
        f"the {len(m.items)} most confident",
    )
    return True


def format_evaluation(r: dict) -> str:
    """`resnetlab eval`'s text: the figures, the per-class table, the confusion matrix."""
    views = f" ({r['tta']} TTA)" if r["tta"] != "none" else ""
    lines = [
        f"{r['data']} test set, {r['count']} examples{views}: loss {r['loss']:.4f}, acc {r['acc']:.4f}",
        f"test examples: {r['test_examples']}; precision: {r['precision']} ({r['precision_source']})",
    ]
    width = max(len(c) for c in r["classes"])
    lines.append(f"{'class':<{width}}  {'count':>6}  {'acc':>6}")
    for row in r["per_class"]:
        lines.append(f"{row['class']:<{width}}  {row['count']:>6}  {row['acc']:>6.4f}")
    lines.append("confusion matrix (rows: true, columns: predicted):")
    for cls, counts in zip(r["classes"], r["confusion"]):
        lines.append(f"{cls:<{width}}  " + " ".join(f"{c:>5}" for c in counts))
    if r.get("mistakes_files"):
        lines.append(
            f"{r['wrong']} mistakes; the {r['mistakes_shown']} most confident in "
            f"{', '.join(r['mistakes_files'])}"
        )
    return "\n".join(lines)
