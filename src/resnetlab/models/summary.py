"""`summarize(model)`: layers, parameters, MACs/FLOPs and activation memory of one forward pass;
`describe_models(pattern)`: the registry as a table of sizes and costs.

Everything runs on the meta device (shapes without data), so a 126M-parameter net is summarized
in a fraction of a second with no memory, and a model instance is never modified: its parameters
and buffers are swapped for meta stand-ins through `torch.func.functional_call`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.errors import UsageError, first_line
from resnetlab.models.create import create_model
from resnetlab.models.registry import get_model_info, list_models

_STRIDED = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
_LARGEST_PROBE = 1 << 14  # search limit, in pixels, for the smallest input a net accepts


@dataclass
class LayerRow:
    name: str  # dotted module path, as in state_dict keys
    type: str
    output_shape: list[int] | None  # None for a module the forward pass did not call
    params: int  # including its sub-modules'
    macs: int  # multiply-accumulates of its convolutions and linear layers


@dataclass
class ModelSummary:
    model: str
    input_size: tuple[int, int, int]  # (C, H, W)
    batch_size: int
    depth: int
    output_shape: list[int]
    total_params: int
    trainable_params: int
    param_bytes: int
    macs: int  # multiply-accumulates of convolutions and linear layers
    flops: int  # 2 x macs, as torch.utils.flop_counter counts them
    activation_bytes: int  # tensors autograd keeps for backward in one forward pass
    rows: list[LayerRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def render(self) -> str:
        c, h, w = self.input_size
        lines = [
            f"{self.model}: input {self.batch_size}x{c}x{h}x{w} -> output "
            + "x".join(map(str, self.output_shape))
        ]
        if self.rows:
            table = [("Layer", "Type", "Output shape", "Params", "MACs")]
            for row in self.rows:
                indent = "  " * row.name.count(".")
                shape = "x".join(map(str, row.output_shape)) if row.output_shape else "-"
                table.append(
                    (
                        indent + row.name,
                        row.type,
                        shape,
                        f"{row.params:,}",
                        _si(row.macs) if row.macs else "-",
                    )
                )
            widths = [max(len(r[i]) for r in table) for i in range(5)]
            for j, r in enumerate(table):
                cells = [
                    r[i].ljust(widths[i]) if i < 3 else r[i].rjust(widths[i]) for i in range(5)
                ]
                lines.append("  ".join(cells).rstrip())
                if j == 0:
                    lines.append("-" * len(lines[-1]))
        lines += [
            "",
            f"Total params:          {self.total_params:,}",
            f"Trainable params:      {self.trainable_params:,}",
            f"Non-trainable params:  {self.total_params - self.trainable_params:,}",
            f"Parameter memory:      {_mib(self.param_bytes)}",
            f"MACs:                  {_si(self.macs)}  (multiply-accumulates of convolutions and "
            "linear layers)",
            f"FLOPs:                 {_si(self.flops)}  (= 2 x MACs, counted with "
            "torch.utils.flop_counter)",
            f"Activation memory:     {_mib(self.activation_bytes)}  (tensors autograd keeps for backward "
            f"in one forward pass of batch {self.batch_size})",
        ]
        return "\n".join(lines)

    __str__ = render


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _check_input_size(
    input_size: Sequence[int], batch_size: int, depth: int
) -> tuple[int, int, int]:
    size = tuple(input_size)
    if len(size) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
    ):
        raise UsageError(
            f"input size must be three positive integers C H W, got {' '.join(map(str, size))}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise UsageError(f"depth must be 0 or more, got {depth}")
    if (
        batch_size * size[0] * size[1] * size[2] >= 2**62
    ):  # torch sizes are 64-bit: beyond, a traceback
        raise UsageError(
            f"a batch of {batch_size} x {' x '.join(map(str, size))} is too large to describe; "
            "give a smaller batch size or input size"
        )
    return size


def _first_conv(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def _meta_state(model: nn.Module) -> dict[str, Tensor]:
    """Meta stand-ins for every parameter and buffer, keeping dtype and requires_grad."""
    state = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        state[name] = torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
    for name, b in model.named_buffers(remove_duplicate=False):
        state[name] = torch.empty_like(b, device="meta")
    return state


@dataclass
class _Trace:
    output: Tensor
    shapes: dict[str, list[int]]
    undersized: tuple[str, str, list[int]] | None  # (layer, kind, input H x W) that cannot stride
    flop_counts: dict
    flops: int
    activation_bytes: int


def _trace(model: nn.Module, x: Tensor) -> _Trace:
    """One forward pass with gradients on meta tensors, recording what a summary needs."""
    shapes: dict[str, list[int]] = {}
    undersized: list[tuple[str, str, list[int]]] = []

    def record_output(name, module, inputs, output):
        if isinstance(output, Tensor):
            shapes[name] = list(output.shape)

    def check_stride(name, module, inputs):
        stride = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
        spatial = list(inputs[0].shape[-len(stride) :])
        # A stride-2 layer given a 1-pixel map cannot downsample: the input is too small.
        if any(s > 1 and n < 2 for s, n in zip(stride, spatial)):
            undersized.append((name, f"{type(module).__name__}, stride {max(stride)}", spatial))

    handles = []
    for name, m in model.named_modules():
        handles.append(
            m.register_forward_hook(lambda mod, i, o, n=name: record_output(n, mod, i, o))
        )
        if isinstance(m, _STRIDED):
            handles.append(
                m.register_forward_pre_hook(lambda mod, i, n=name: check_stride(n, mod, i))
            )

    state = _meta_state(model)
    # Tensors are told apart by storage, so that views (a transposed weight) and tensors saved
    # by several operations count once; weights and the input are not activations.
    not_activations = {t.untyped_storage()._cdata for t in [*state.values(), x]}
    saved: dict[int, tuple[Tensor, int]] = {}  # storage -> (a tensor keeping it alive, bytes)

    def pack(t: Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in not_activations:
            saved[storage._cdata] = (t, storage.nbytes())
        return t

    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False)
    try:
        # Eval mode: batch norm then accepts a batch of one 1x1 map, and autograd keeps the same
        # tensors as in training (input, per-channel mean and inverse std).
        model.eval()
        with (
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            counter,
        ):
            out = torch.func.functional_call(model, state, (x,))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return _Trace(
        out,
        shapes,
        undersized[0] if undersized else None,
        counter.get_flop_counts(),
        counter.get_total_flops(),
        sum(nbytes for _, nbytes in saved.values()),
    )


def _smallest_square_input(model: nn.Module, channels: int, start: int) -> int | None:
    """The smallest H = W > start at which no strided layer gets a 1-pixel map (binary search
    on meta); None when `start` itself fits or nothing up to _LARGEST_PROBE does."""

    def fits(side: int) -> bool:
        try:
            x = torch.empty(1, channels, side, side, device="meta")
            return _trace(model, x).undersized is None
        except (RuntimeError, ValueError):
            return False

    if fits(start):
        return None
    low, high = start, start + 1  # fits(low) is False; grow high until it fits
    while not fits(high):
        low, high = high, high * 2
        if high > _LARGEST_PROBE:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def _resolve_model(
    model_or_name: nn.Module | str,
    input_size: Sequence[int] | None,
    batch_size: int,
    depth: int,
) -> tuple[nn.Module, str, tuple[int, int, int]]:
    """(model, label, checked input size): a registered name built on meta, or the given module."""
    if isinstance(model_or_name, str):
        info = get_model_info(model_or_name)
        size = _check_input_size(
            info.default_input_size if input_size is None else input_size, batch_size, depth
        )
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = create_model(info.name, in_chans=size[0])
        label = info.name
    else:
        model, label = model_or_name, type(model_or_name).__name__
        if input_size is None:
            raise UsageError("give input_size=(C, H, W) to summarize a model instance")
        size = _check_input_size(input_size, batch_size, depth)
        if any(isinstance(p, UninitializedParameter) for p in model.parameters()):
            raise UsageError(
                f"{label} has lazy layers that are not initialized yet; "
                "run one batch through it first"
            )
    return model, label, size


def _check_channels(model: nn.Module, label: str, size: tuple[int, int, int]) -> None:
    """Raise UsageError when the model's first convolution takes other than C input channels."""
    c, h, w = size
    conv = _first_conv(model)
    if (
        conv is not None
        and not isinstance(conv.weight, UninitializedParameter)
        and conv.in_channels != c
    ):
        raise UsageError(
            f"{label} takes {conv.in_channels} input channels, got {c} (input size {c}x{h}x{w})"
        )


def _trace_input(
    model: nn.Module, label: str, size: tuple[int, int, int], batch_size: int
) -> _Trace:
    """Trace one batch of `size`; a UsageError (with the smallest size that fits) when it fails."""
    c, h, w = size
    x = torch.empty(batch_size, c, h, w, device="meta")
    try:
        trace = _trace(model, x)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"{label} cannot run on input {c}x{h}x{w}: {first_line(e)}") from None
    if trace.undersized is not None:
        layer, kind, spatial = trace.undersized
        smallest = _smallest_square_input(model, c, min(h, w))
        hint = f"; H and W must each be at least {smallest}" if smallest else ""
        raise UsageError(
            f"input {c}x{h}x{w} is too small for {label}: {layer} ({kind}) "
            f"gets a {'x'.join(map(str, spatial))} map and cannot downsample it{hint}"
        )
    return trace


def _layer_rows(model: nn.Module, trace: _Trace, depth: int) -> list[LayerRow]:
    """One row per sub-module down to `depth` levels: type, output shape, params and MACs."""
    root = type(model).__name__
    rows = []
    for name, m in model.named_modules():
        level = name.count(".") + 1 if name else 0
        if not 1 <= level <= depth:
            continue
        flops = sum(trace.flop_counts.get(f"{root}.{name}", {}).values())
        rows.append(
            LayerRow(
                name,
                type(m).__name__,
                trace.shapes.get(name),
                sum(p.numel() for p in m.parameters()),
                flops // 2,
            )
        )
    return rows


def summarize(
    model_or_name: nn.Module | str,
    input_size: Sequence[int] | None = None,
    batch_size: int = 1,
    depth: int = 2,
) -> ModelSummary:
    """Summarize a registered model (by name, built for `input_size`'s channels) or a module.

    input_size: (C, H, W); None means the registered default (required for a module).
    depth: how many levels of sub-modules get a row (0: totals only; 1: top-level children).
    """
    model, label, size = _resolve_model(model_or_name, input_size, batch_size, depth)
    _check_channels(model, label, size)
    trace = _trace_input(model, label, size, batch_size)
    rows = _layer_rows(model, trace, depth)
    params = list(model.parameters())
    return ModelSummary(
        model=label,
        input_size=size,
        batch_size=batch_size,
        depth=depth,
        output_shape=list(trace.output.shape),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        macs=trace.flops // 2,
        flops=trace.flops,
        activation_bytes=trace.activation_bytes,
        rows=rows,
    )


@dataclass
class ModelListing:
    name: str
    params: int
    gflops: float  # at default_input_size, batch 1; FLOPs = 2 x MACs
    default_input_size: tuple[int, int, int]
    default_num_classes: int
    paper: str


def describe_models(pattern: str = "*") -> list[ModelListing]:
    """Size and cost of every registered model matching `pattern`, at its default input size."""
    listings = []
    for name in list_models(pattern):
        info = get_model_info(name)
        with torch.device("meta"):
            model = create_model(name)
        # no_grad halves the time: no autograd graph for shapes-only tensors
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(torch.empty(1, *info.default_input_size, device="meta"))
        listings.append(
            ModelListing(
                name,
                sum(p.numel() for p in model.parameters()),
                counter.get_total_flops() / 1e9,
                info.default_input_size,
                info.default_num_classes,
                info.paper,
            )
        )
    return listings


def render_model_table(listings: Sequence[ModelListing]) -> str:
    table = [("Model", "Params", "GFLOPs", "Input", "Classes", "Paper")]
    for m in listings:
        table.append(
            (
                m.name,
                f"{m.params:,}",
                f"{m.gflops:.2f}",
                "x".join(map(str, m.default_input_size)),
                str(m.default_num_classes),
                m.paper,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    right = {1, 2, 4}
    lines = [
        "  ".join(
            r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i]) for i in range(len(r))
        ).rstrip()
        for r in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("GFLOPs: 2 x multiply-accumulates of one image at the model's default input size")
    return "\n".join(lines)
