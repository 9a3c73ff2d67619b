"""Weights trained elsewhere, into a resnetlab model: `load_pretrained(model, path)`.

The ImageNet-family nets (resnet18 ... wide_resnet101_2) use torchvision's key names, which timm's
ResNets share, so a state_dict saved by either loads as it is. Accepted files:

- `.safetensors` (what timm and the Hugging Face hub ship; resnetlab's own model.safetensors too);
- `.pth` / `.pt` / `.bin`: a state_dict saved with `torch.save`, read with `weights_only=True`
  (nothing is unpickled but tensors and plain containers), possibly nested under "state_dict",
  "model_state_dict" or "model" (timm's and many training scripts' checkpoints), with DDP's
  "module." or torch.compile's "_orig_mod." prefix.

Everything must match strictly, except two adaptations for fine-tuning on other data, each
reported in a note (returned, passed to `say`, or given as a `PretrainedNote` warning):

- the classifier (the model's last nn.Linear, `fc` in the family) with another number of classes
  keeps the model's fresh initialisation;
- the first convolution with another number of input channels follows timm's `adapt_input_conv`:
  3 -> 1 sums over the colour channels; 3 -> N repeats the RGB filters and scales them by 3/N;
  1 -> N repeats the grey filter and divides it by N (a grey image copied to N channels then
  gives the same output).

Any other difference is one CheckpointError naming the first few keys or shapes, and how many.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from resnetlab.errors import CheckpointError, UsageError, first_line
from resnetlab.models.registry import build, list_models
from resnetlab.weights import load_weights

__all__ = ["PretrainedNote", "read_state_dict", "load_pretrained", "adapt_input_conv"]

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 3  # keys named in an error before "and N more"


class PretrainedNote(UserWarning):
    """An adaptation made while loading weights (a re-initialised classifier, an adapted stem)."""


def _unwrap(obj, path: Path) -> dict[str, Tensor]:
    """The state_dict inside what torch.load returned: plain, or nested under a known key."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return obj
        nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = nested
    what = (
        f"a {type(obj).__name__}"
        if not isinstance(obj, dict)
        else f"a dict with keys {', '.join(map(repr, list(obj)[:5]))}{' ...' if len(obj) > 5 else ''}"
    )
    raise CheckpointError(
        f"{path} holds {what}, not a state_dict of tensors (looked under "
        f"{', '.join(map(repr, _NESTED_KEYS))}); save model.state_dict() with torch.save"
    )


def _strip_wrappers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (.safetensors, or a torch.save'd state_dict), on the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; pass the weights file itself (.pth, .pt or .safetensors)"
        )
    if path.suffix == ".safetensors":
        return _strip_wrappers(load_weights(path)[0])
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, which torch.load(weights_only=True) refuses "
                "to unpickle; load it where it was made and save its state_dict alone with torch.save"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({first_line(e)}); it may be truncated"
        ) from None
    except Exception as e:  # truncated zip, not a torch file at all: torch raises many types
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({first_line(e)}); it may be truncated "
            "or not saved by torch.save"
        ) from None
    return _strip_wrappers(_unwrap(obj, path))


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A first-convolution weight [O, I, kh, kw] for `in_chans` input channels (timm's rule)."""
    out_c, have, *_ = weight.shape
    dtype, w = weight.dtype, weight.float()
    if in_chans == have:
        return weight
    if have == 3 and in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    elif have == 3:
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    elif have == 1:
        w = w.repeat(1, in_chans, 1, 1) / in_chans
    else:
        raise CheckpointError(
            f"cannot adapt a first convolution of {have} input channels to {in_chans}; "
            "only 3 (RGB) or 1 (grey) input channels adapt"
        )
    return w.to(dtype)


def _layer_names(model: nn.Module) -> tuple[str | None, str | None]:
    """(first Conv2d, last Linear) module names: the stem convolution and the classifier."""
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown} (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else shown


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _guess_model(sd: dict[str, Tensor]) -> str | None:
    """The registered model whose keys and shapes (stem and classifier aside) the checkpoint has."""
    wanted = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    for name in list_models():
        try:
            with torch.device("meta"):
                candidate = build(name)
        except Exception:  # a builder that needs options; not a candidate
            continue
        stem, head = _layer_names(candidate)
        free = {f"{stem}.weight", f"{head}.weight", f"{head}.bias"}
        own = {
            k: tuple(v.shape)
            for k, v in candidate.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
        if own.keys() == wanted.keys() and all(own[k] == wanted[k] or k in free for k in own):
            return name
    return None


def _mismatch(path: Path, what: str, model_name: str, sd: dict[str, Tensor]) -> CheckpointError:
    guess = _guess_model(sd)
    hint = f"; it looks like {guess}'s weights" if guess and guess != model_name else ""
    return CheckpointError(f"{path} does not fit {model_name}: {what}{hint}")


def _check_keys(path: Path, own: dict, sd: dict[str, Tensor], model_name: str) -> None:
    """Raise CheckpointError naming the keys the checkpoint lacks or has beyond the model's."""
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing key(s): {_listed(missing)}"] if missing else []) + (
            [f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}"] if unexpected else []
        )
        raise _mismatch(path, "; ".join(parts), model_name, sd)


def _adapt_shapes(
    model: nn.Module, own: dict, sd: dict[str, Tensor]
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(adapted copy of `sd`, notes, shape clashes): the stem and classifier adapted to the model."""
    stem, head = _layer_names(model)
    notes, clashes = [], []
    sd = dict(sd)
    for key, mine in own.items():
        theirs = sd.get(key)
        if theirs is None or theirs.shape == mine.shape:
            continue
        if (
            key == f"{stem}.weight"
            and theirs.dim() == 4
            and theirs.shape[0] == mine.shape[0]
            and theirs.shape[2:] == mine.shape[2:]
        ):
            sd[key] = adapt_input_conv(theirs, mine.shape[1])
            rule = (
                "summed over its colour channels"
                if mine.shape[1] == 1
                else f"repeated and scaled by {theirs.shape[1]}/{mine.shape[1]}"
            )
            notes.append(
                f"first convolution {stem} adapted from {theirs.shape[1]} to {mine.shape[1]} input "
                f"channel(s): {rule} (timm's adapt_input_conv)"
            )
        elif (
            key in (f"{head}.weight", f"{head}.bias")
            and theirs.shape[0] != mine.shape[0]
            and theirs.shape[1:] == mine.shape[1:]
        ):
            sd[key] = mine  # keep the fresh initialisation
            if key == f"{head}.weight":
                notes.append(
                    f"classifier {head} re-initialised for {mine.shape[0]} classes "
                    f"(the checkpoint has {theirs.shape[0]})"
                )
        else:
            clashes.append(
                f"{key} is {_shape(theirs)} in the checkpoint, {_shape(mine)} in the model"
            )
    return sd, notes, clashes


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    *,
    say: Callable[[str], None] | None = None,
    model_name: str | None = None,
) -> list[str]:
    """Load the checkpoint at `path` into `model` (strict, with the two adaptations above).

    Returns the notes on what was adapted; each is also passed to `say`, or, without it,
    given as a `PretrainedNote` warning. Raises CheckpointError when the weights do not fit.
    """
    path = Path(path)
    model_name = model_name or type(model).__name__
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise UsageError(
            "the model has lazy layers that have not run yet; call it once on an input, then load weights"
        )
    sd = read_state_dict(path)
    own = model.state_dict()
    _check_keys(path, own, sd, model_name)

    sd, notes, clashes = _adapt_shapes(model, own, sd)
    if clashes:
        more = f" (and {len(clashes) - _SHOWN} more)" if len(clashes) > _SHOWN else ""
        raise _mismatch(
            path,
            f"{len(clashes)} shape clash(es): {'; '.join(clashes[:_SHOWN])}{more}",
            model_name,
            sd,
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {model_name}: {first_line(e)}") from None
    for note in notes:
        if say is not None:
            say(note)
        else:
            warnings.warn(note, PretrainedNote, stacklevel=2)
    return notes
