"""ONNX out: `resnetlab export` writes a trained net as an ONNX model, checked before it is kept;
`resnetlab predict model.onnx` runs one with onnxruntime.

The exported graph is the kept weights (best.safetensors where there is one, as eval does) with
every batch norm folded into its convolution (`fuse_bn`), in eval mode, taking a float NCHW batch
named "input" (dynamic batch dimension by default; height and width fixed to the run's input
size) and returning "logits". What a consumer needs to feed it travels in the model's
metadata_props, each value a JSON string:

    classes      ["T-shirt/top", ...]       class names, in logit order
    input_size   [C, H, W]                  the input the graph takes
    resize       28 or null                 the size training resized images to (null: none)
    eval_view    {"resize_shorter": 232, "center_crop": 224} or absent: a streamed run's view
                 (data/eval_view.py): Resize(shorter side) + CenterCrop, input_size the crop
    normalize    {"mean": [..], "std": [..]} or null: (x / 255 - mean) / std per channel
    stored_size  [H, W] or absent: an image folder trained in memory stored each image at this
                 size first (Pillow's bilinear), then resized it to input_size
    preprocess   a sentence saying the same in words
    model, data, resnetlab_version

Every export is checked: onnxruntime runs it on a batch of the run's real test images (seen as
training saw them), or on random inputs when the data is absent (it says so), and its logits must
match PyTorch's to `tolerance` (max abs) with the same top-1 class for every image; otherwise the
file is not written and an ExportError says by how much they differ. The file is written
atomically.

The exporter: torch.onnx's torch.export-based one (`dynamo=True`, needs onnxscript), falling
back to the TorchScript-based one (`dynamo=False`, deprecated but still in torch 2.13) when it
fails; the result says which one made the file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from resnetlab.data.datasets import IMAGEFOLDER, resolve_spec
from resnetlab.data.shards import is_stream_name
from resnetlab.data.sources import open_split
from resnetlab.errors import DataError, ExportError, ResnetlabError, UsageError, first_line
from resnetlab.fileio import write_bytes
from resnetlab.inference.images import in_order, preprocess, read_images
from resnetlab.inference.loading import (
    eval_view,
    load_model,
    loader_for,
    open_test_set,
    resolve_weights,
)
from resnetlab.models.fuse import fuse_bn
from resnetlab.version import __version__

# onnx and onnxruntime are an optional extra (`require_onnx`): imported where they are used.

ONNX_EXTRA = "pip install 'resnetlab[onnx]'"
DEFAULT_TOLERANCE = 1e-4
DEFAULT_CHECK_IMAGES = 64
INPUT_NAME, OUTPUT_NAME = "input", "logits"
META_KEYS = (
    "classes", "input_size", "resize", "normalize", "model", "data", "eval_view", "stored_size"
)  # fmt: skip


def require_onnx():
    """(onnx, onnxruntime), or a UsageError naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise UsageError(
            f"ONNX export and inference need the onnx extra ({e.name or 'onnx'} is not installed): "
            f"{ONNX_EXTRA}"
        ) from None
    return onnx, onnxruntime


def parse_batch(value: str | int | None) -> int | None:
    """--batch: "dynamic" (None) or a positive number of images."""
    if value is None or value == "dynamic":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UsageError(f"--batch takes a positive number of images or 'dynamic', not {value!r}")
    return n


# --- export ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines, deprecation warnings and torchvision notices, silenced."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_dynamo(model: nn.Module, sample: torch.Tensor, opset: int | None, dynamic: bool):
    kwargs = dict(
        dynamo=True,
        verbose=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        external_data=False,
    )
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    program = torch.onnx.export(model, (sample,), **kwargs)
    return program.model_proto


def _export_torchscript(model: nn.Module, sample: torch.Tensor, opset: int | None, dynamic: bool):
    import onnx

    buf = io.BytesIO()
    kwargs = dict(
        dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True
    )
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    torch.onnx.export(model, (sample,), buf, **kwargs)
    return onnx.load_from_string(buf.getvalue())


EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _opset_of(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _to_onnx(
    model: nn.Module, sample: torch.Tensor, opset: int | None, dynamic: bool, exporter: str
):
    """(ModelProto, exporter name, notes) from the first exporter that works."""
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    failures = []
    for name in order:
        try:
            with _quiet():
                proto = EXPORTERS[name](model, sample, opset, dynamic)
        except Exception as e:  # the exporters raise many types; the next one may still work
            failures.append(f"the {name} exporter failed ({type(e).__name__}: {first_line(e)})")
            continue
        made = _opset_of(proto)
        if (
            opset is not None and made != opset
        ):  # the dynamo exporter makes opset 18 or more, whatever is asked
            failures.append(f"the {name} exporter made opset {made}, not {opset}")
            continue
        return proto, name, failures
    raise ExportError(f"cannot export to ONNX: {'; '.join(failures)}")


def _props(meta: dict) -> dict[str, str]:
    norm = meta.get("normalize")
    c, h, w = meta["input_size"]
    view = eval_view(meta)
    shown = (
        f"the shorter side resized to {view.resize} (bilinear, antialiased), the centre {h}x{w} cut"
        if view
        else f"resized to {h}x{w} when of another size (bilinear, antialiased)"
    )
    if meta.get("stored_size") and not view:
        sh, sw = meta["stored_size"]
        shown = (
            f"resized to {sh}x{sw} first (Pillow's bilinear) as stored in training, then {shown}"
        )
    words = (
        f"float32 NCHW batch of {c}-channel {h}x{w} images ({'grey' if c == 1 else 'RGB'}), "
        f"pixel values divided by 255, {shown}"
        + (", then (x - mean) / std per channel with `normalize`" if norm else ", not normalised")
    )
    props = {k: json.dumps(meta.get(k)) for k in META_KEYS}
    props.update(preprocess=words, resnetlab_version=__version__)
    return props


def _ort_session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())  # as many as torch is allowed
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def check_onnx(
    data: bytes,
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch: int | None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict:
    """Run the ONNX bytes with onnxruntime on `inputs` and compare with `model`'s logits.

    A fixed batch is fed in slices of that size; a dynamic one as one batch, then image by image
    for the first two (so both batch sizes are run). Returns the figures (never raises on a
    mismatch: `passed` says it)."""
    started = time.perf_counter()
    session = _ort_session(data)
    with torch.inference_mode():
        reference = model(inputs).float()
    if batch is None:
        pieces = [slice(0, len(inputs))] + [slice(i, i + 1) for i in range(min(2, len(inputs)))]
    else:
        pieces = [slice(i, i + batch) for i in range(0, len(inputs) - batch + 1, batch)]
    diff, agrees = 0.0, torch.ones(len(inputs), dtype=torch.bool)
    checked = torch.zeros(len(inputs), dtype=torch.bool)
    for s in pieces:
        got = torch.from_numpy(
            session.run([OUTPUT_NAME], {INPUT_NAME: inputs[s].contiguous().numpy()})[0]
        )
        if got.shape != reference[s].shape:
            raise ExportError(
                f"the ONNX model returned {list(got.shape)} logits for a {list(inputs[s].shape)} input, "
                f"PyTorch {list(reference[s].shape)}"
            )
        diff = max(diff, (reference[s] - got).abs().max().item())
        agrees[s] &= reference[s].argmax(1) == got.argmax(1)
        checked[s] = True
    agree, count = int(agrees[checked].sum()), int(checked.sum())
    return {
        "max_abs_diff": diff,
        "top1_agree": agree,
        "count": count,
        "tolerance": tolerance,
        "runs": len(pieces),
        "max_abs_logit": reference.abs().max().item() if reference.numel() else 0.0,
        "passed": diff <= tolerance and agree == count,
        "seconds": time.perf_counter() - started,
    }


def float32_noise(model: nn.Module, inputs: torch.Tensor) -> float:
    """How far PyTorch's own float32 logits are from float64 ones on `inputs`: the rounding floor
    below which no export can be asked to match (deep nets reach 1e-4 and more)."""
    with torch.inference_mode():
        exact = copy.deepcopy(model).double()(inputs.double())
        return (model(inputs).double() - exact).abs().max().item()


def _rounding_hint(check: dict, model: nn.Module, inputs: torch.Tensor) -> str:
    """On a failed check: is the difference float32 rounding? (measured against float64)"""
    noise = float32_noise(model, inputs)
    check["float32_noise"] = noise
    if noise < check["tolerance"] / 2 or check["top1_agree"] != check["count"]:
        return ""
    return (
        f" (PyTorch's own float32 logits differ from float64 ones by up to {noise:.2g} on these inputs: "
        f"rounding, not a broken export; pass --tolerance {float(f'{3 * noise:.1g}'):g} to accept it)"
    )


def _check_export_args(exporter: str, opset: int | None) -> None:
    """Raise UsageError for an unknown exporter or an opset below 7."""
    if exporter not in ("auto", *EXPORTERS):
        raise UsageError(f"unknown exporter {exporter!r}; use auto, dynamo or torchscript")
    if opset is not None and opset < 7:
        raise UsageError(f"--opset must be 7 or more, got {opset}")


def _check_batch(
    check_inputs: torch.Tensor | None,
    check_source: str | None,
    input_size: tuple[int, ...],
    batch: int | None,
) -> tuple[torch.Tensor, str | None]:
    """The check inputs (random normal ones when none are given), at least `batch` of them, and
    where they come from; a UsageError when they are not of `input_size`."""
    if check_inputs is None:
        check_inputs = torch.randn(
            max(batch or 0, 16), *input_size, generator=torch.Generator().manual_seed(0)
        )
        check_source = check_source or "random normal inputs"
    check_inputs = check_inputs.cpu().float().contiguous()
    if batch is not None and len(check_inputs) < batch:
        check_inputs = check_inputs.repeat(
            (batch + len(check_inputs) - 1) // len(check_inputs), 1, 1, 1
        )[:batch]
    if tuple(check_inputs.shape[1:]) != input_size:
        raise UsageError(
            f"check inputs are {list(check_inputs.shape[1:])}, the model takes {list(input_size)}"
        )
    return check_inputs, check_source


def _trace_sample(folded: nn.Module, check_inputs: torch.Tensor, batch: int | None) -> torch.Tensor:
    """The batch to export with (`batch` images, else 2), after checking the model runs on it."""
    sample = check_inputs[: batch or 2].clone()
    if len(sample) < (batch or 2):
        sample = sample.repeat(2, 1, 1, 1)[: batch or 2]
    try:
        with torch.inference_mode():
            folded(sample)
    except ResnetlabError:
        raise
    except Exception as e:
        raise UsageError(
            f"the model does not run on a {list(sample.shape)} input ({first_line(e)})"
        ) from None
    return sample


def _stamp_and_check(proto, meta: dict, out: str | Path) -> bytes:
    """Write `meta` into the model's metadata_props, serialize it and run onnx's checker on it."""
    import onnx

    onnx.helper.set_model_props(proto, _props(meta))
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ExportError(
            f"the exported ONNX model is invalid ({first_line(e)}); {Path(out)} not written"
        ) from None
    return data


def _verify_export(
    data: bytes,
    model: nn.Module,
    check_inputs: torch.Tensor,
    check_source: str | None,
    *,
    batch: int | None,
    tolerance: float,
    out: str | Path,
) -> dict:
    """Run `check_onnx` on the ONNX bytes; an ExportError when onnxruntime's logits do not match."""
    check = check_onnx(data, model, check_inputs, batch=batch, tolerance=tolerance)
    check["inputs"] = check_source or "the given inputs"
    if not check["passed"]:
        raise ExportError(
            f"onnxruntime's logits differ from PyTorch's by up to {check['max_abs_diff']:.3g} (tolerance "
            f"{tolerance:g}) and agree on top-1 for {check['top1_agree']} of {check['count']} on "
            f"{check['inputs']}{_rounding_hint(check, model, check_inputs)}; {Path(out)} not written"
        )
    return check


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    input_size: tuple[int, int, int],
    classes=None,
    resize: int | None = None,
    normalize: dict | None = None,
    meta: dict | None = None,
    check_inputs: torch.Tensor | None = None,
    check_source: str | None = None,
    opset: int | None = None,
    batch: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: str = "auto",
) -> dict:
    """Export `model` (any nn.Module taking [N, C, H, W]; lazy layers must have run) as ONNX.

    `check_inputs`: a float batch as the model sees it (else random normal inputs); the export
    is written only if onnxruntime's logits match. Returns what was done and the check's figures.
    """
    require_onnx()
    _check_export_args(exporter, opset)
    input_size = tuple(int(v) for v in input_size)
    folded = (
        fuse_bn(model).cpu().float()
    )  # a copy; also refuses lazy layers that have not run, in one line
    model = (
        copy.deepcopy(model).cpu().float().eval()
    )  # the caller's model stays where and as it was
    check_inputs, check_source = _check_batch(check_inputs, check_source, input_size, batch)
    sample = _trace_sample(folded, check_inputs, batch)

    started = time.perf_counter()
    proto, used, failures = _to_onnx(folded, sample, opset, batch is None, exporter)
    export_seconds = time.perf_counter() - started
    meta = dict(
        meta or {}, input_size=list(input_size), classes=classes, resize=resize, normalize=normalize
    )
    data = _stamp_and_check(proto, meta, out)
    check = _verify_export(
        data, model, check_inputs, check_source, batch=batch, tolerance=tolerance, out=out
    )
    write_bytes(out, data)
    opset_used = _opset_of(proto)
    return {
        "onnx": str(out),
        "bytes": len(data),
        "exporter": used,
        "exporter_notes": failures,
        "opset": opset_used,
        "batch": "dynamic" if batch is None else batch,
        "input_size": list(input_size),
        "export_seconds": export_seconds,
        "check": check,
        "onnxruntime": require_onnx()[1].__version__,
        "torch": torch.__version__,
    }


def _test_batch(meta: dict, count: int, data_dir: str | None) -> tuple[torch.Tensor | None, str]:
    """`count` of the run's test images as training saw them, or (None, why not)."""
    name = meta.get("data")
    if not name:
        return None, "random normal inputs (the weights name no dataset)"
    try:
        if not (name.startswith(IMAGEFOLDER) or is_stream_name(name)):
            open_split(
                resolve_spec(name), False, data_dir, download=False
            )  # found here? (downloads nothing)
        test = open_test_set(meta, name, root=data_dir)  # a packed set: through the run's view
    except DataError:
        return None, f"random normal inputs ({name}'s test data was not found)"
    if tuple(test.images.shape[1:2]) != (meta["in_chans"],):
        return (
            None,
            f"random normal inputs ({name} has {test.images.shape[1]} channels, the model {meta['in_chans']})",
        )
    test = test.take(min(count, len(test)), seed=0)
    x, _ = next(iter(loader_for(meta, test, batch_size=len(test))))
    # counted from the batch: a streamed set leaves an unreadable image out of it
    return x.float().contiguous(), f"{len(x)} {name} test images"


def exported_meta(meta: dict) -> dict:
    """What of a run's weights metadata travels in its ONNX file besides the input's size,
    classes, resize and normalisation: how its images are shown to it (META_KEYS)."""
    view = eval_view(meta)
    return {
        "model": meta["model"],
        "data": meta.get("data"),
        **({"eval_view": view.to_metadata()} if view else {}),
        **({"stored_size": meta["stored_size"]} if meta.get("stored_size") else {}),
    }


def default_onnx_path(weights: Path) -> Path:
    """best.safetensors -> best.onnx, model.safetensors -> model.onnx, beside it."""
    return weights.with_suffix(".onnx")


def export_run(
    source: str | Path,
    *,
    out: str | Path | None = None,
    opset: int | None = None,
    batch: str | int | None = None,
    data_dir: str | None = None,
    check_images: int = DEFAULT_CHECK_IMAGES,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: str = "auto",
) -> dict:
    """`resnetlab export`: the kept weights of a run folder (or a .safetensors file) as ONNX."""
    require_onnx()
    fixed = parse_batch(batch)
    if check_images < 1:
        raise UsageError(f"--check-images must be positive, got {check_images}")
    if not tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {tolerance}")
    weights = resolve_weights(source)
    if weights.suffix == ".onnx":
        raise UsageError(
            f"{weights} is already an ONNX model; export takes a run folder or a .safetensors file"
        )
    model, meta = load_model(weights, "cpu")
    view = eval_view(meta)
    if view is not None:  # a streamed run: the graph takes its evaluation view's crops
        meta["input_size"] = [meta["in_chans"], view.crop, view.crop]
    out = Path(out) if out else default_onnx_path(weights)
    if out.suffix != ".onnx":
        raise UsageError(f"--out {out} should end in .onnx")
    inputs, described = _test_batch(meta, max(check_images, fixed or 0), data_dir)
    result = export_onnx(
        model,
        out,
        input_size=tuple(meta["input_size"]),
        classes=meta.get("classes"),
        resize=meta.get("resize"),
        normalize=meta.get("normalize"),
        meta=exported_meta(meta),
        check_inputs=inputs,
        check_source=described,
        opset=opset,
        batch=fixed,
        tolerance=tolerance,
        exporter=exporter,
    )
    return dict(result, weights=str(weights), model=meta["model"])


def format_export(r: dict) -> str:
    c = r["check"]
    lines = [
        f"wrote {r['onnx']} ({r['bytes'] / 1e6:.1f} MB): {r['model']} from {r['weights']}, batch norms folded, "
        f"input [{r['batch']}, {', '.join(map(str, r['input_size']))}], opset {r['opset']}, "
        f"{r['exporter']} exporter ({r['export_seconds']:.1f} s)",
        f"checked with onnxruntime {r['onnxruntime']} on {c['inputs']}: max abs logit difference "
        f"{c['max_abs_diff']:.2e} (tolerance {c['tolerance']:g}), top-1 agrees on {c['top1_agree']}/{c['count']}",
    ]
    lines += [f"note: {n}; the next exporter was used" for n in r["exporter_notes"]]
    return "\n".join(lines)


# --- inference -------------------------------------------------------------------------------


def read_onnx_meta(path: str | Path) -> dict:
    """The metadata props of a resnetlab ONNX file, decoded: classes, input_size, normalize, ..."""
    onnx, _ = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX model {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{path} is not a readable ONNX model ({first_line(e)})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in ("classes", "input_size") if k not in props]
    if missing:
        raise ExportError(
            f"{path} has no {' or '.join(missing)} in its metadata; it was not exported by resnetlab "
            "(`resnetlab export`)"
        )
    try:
        meta = {k: json.loads(props[k]) for k in META_KEYS if k in props}
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} has unreadable resnetlab metadata ({e})") from None
    meta["in_chans"] = meta["input_size"][0]
    return meta


class OnnxModel(nn.Module):
    """An exported model as a module: onnxruntime on the CPU, float32 logits out (a model exported
    for a fixed batch gets its last, smaller slice padded, and the padding dropped)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.session = _ort_session(Path(path).read_bytes())
        shape = self.session.get_inputs()[0].shape
        self.fixed = shape[0] if isinstance(shape[0], int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        step, logits = self.fixed or len(x), []
        for start in range(0, len(x), step):
            part = x[start : start + step]
            if self.fixed and len(part) < self.fixed:
                part = torch.cat([part, part[:1].expand(self.fixed - len(part), *part.shape[1:])])
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: part.cpu().numpy()})[0]
            logits.append(torch.from_numpy(out)[: len(x) - start])
        return torch.cat(logits).to(x.device)


def load_onnx_model(path: str | Path) -> tuple[OnnxModel, dict]:
    """(the exported model as a module, its metadata as load_model gives a run's)."""
    meta = read_onnx_meta(path)
    meta["num_classes"] = len(meta["classes"])
    return OnnxModel(path), meta


def predict_onnx(path: str | Path, images: list[str | Path], *, top_k: int = 3) -> list[dict]:
    """`resnetlab predict model.onnx IMAGES`: the same top-k as for the run, run by onnxruntime."""
    model, meta = load_onnx_model(path)
    pictures, read, failed = read_images(images, meta)
    x = preprocess(pictures, meta, torch.device("cpu"))
    logits = [model(x)]
    probs = torch.cat(logits).float().softmax(1)
    classes = meta["classes"] or [str(i) for i in range(probs.shape[1])]
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    results = [
        {
            "image": p,
            "top": [{"class": classes[i], "prob": v} for v, i in zip(ps.tolist(), idx.tolist())],
        }
        for p, ps, idx in zip(read, top.values, top.indices)
    ]
    return in_order(images, results, failed)
