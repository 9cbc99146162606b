"""The training state beside last.safetensors (train_state.safetensors): optimizer moments, RNG states and
train.ema's averaged weights as tensors, every counter as JSON metadata; checksummed like a model checkpoint.

Loading checks every value before the optimizer sees it: state tensors against their parameters' shapes, the
param groups against the optimizer's own, the RNG state against this torch's, the counters by type.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuilm.checkpoint import integrity
from tuilm.checkpoint.header import clip, is_int, load_tensors, read_data, read_header
from tuilm.checkpoint.metadata import VERSION, check_version, count, number_or_none, parse
from tuilm.errors import CheckpointError
from tuilm.formatting import short

STATE_FORMAT = "tuilm-train-state"


def save_train_state(
    path: Path, optimizer, extra: dict[str, Any], rng: dict[str, torch.Tensor], averaged: dict | None = None
) -> None:
    """Optimizer tensors, RNG states and train.ema's averaged weights (`averaged`, by parameter name) as tensors;
    everything else (counters, scalars) as JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    for name, value in rng.items():
        tensors[f"rng.{name}"] = value.to("cpu").contiguous()
    for name, value in (averaged or {}).items():
        tensors[f"ema.{name}"] = value.detach().to("cpu").contiguous()
    metadata = {
        "format": STATE_FORMAT,
        "format_version": str(VERSION),
        "param_groups": json.dumps(state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "state": json.dumps(extra),
    }
    integrity.write(Path(path), tensors, metadata)


def _finite_number(v: Any) -> bool:
    return number_or_none(v) and v is not None and math.isfinite(v)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(number_or_none(x) and x is not None for x in v)


def _health(v: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, dict):
        return False
    return (
        number_or_none(v.get("grad_ema"))
        and number_or_none(v.get("loss_ema"))
        and count(v.get("seen", 0))
        and isinstance(v.get("evals", []), list)
        and all(_numbers(e) for e in v.get("evals", []))
    )


# What the trainer reads back from the `state` metadata of train_state.safetensors.
STATE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "step": (count, "a whole number >= 0"),
    "tokens": (count, "a whole number >= 0"),
    "epoch": (count, "a whole number >= 0"),
    "batch_in_epoch": (count, "a whole number >= 0"),
    "elapsed": (lambda v: _finite_number(v) and v >= 0, "a number of seconds >= 0"),
    "best_val_loss": (number_or_none, "a number or null"),
    "best_val_bpc": (number_or_none, "a number or null"),
    "evals_since_best": (count, "a whole number >= 0"),
    "train_losses": (_numbers, "a list of numbers"),
}
OPTIONAL_STATE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "scaler": (lambda v: v is None or isinstance(v, dict), "a JSON object or null"),
    "health": (_health, "the health monitor's state"),
    "decay_start": (lambda v: v is None or (_finite_number(v) and 0 <= v <= 1), "a number in [0, 1] or null"),
    "best_weights": (lambda v: v in (None, "model", "ema"), "model or ema"),
    "target_hit": (lambda v: v is None or isinstance(v, dict), "a JSON object or null"),
}


def load_train_state(path: Path, optimizer, average=None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore the optimizer (and `average`, train.ema's WeightAverage) in place; return (the extra state dict,
    the RNG tensors).

    Every value is checked before the optimizer sees it: state tensors against their parameters' shapes, the
    param groups against the optimizer's own, the RNG state against this torch's, the counters by type.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: the training state is corrupt ({why})")

    def damaged(_path: Path, why: str) -> CheckpointError:
        return corrupt(why)

    header = read_header(path, corrupt)
    metadata = header.metadata
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a tuilm training-state file")
    check_version(path, metadata, damaged)
    for key in ("param_groups", "optim_scalars", "state"):
        if key not in metadata:
            raise corrupt(f"no {key}")
    groups = parse(path, metadata, "param_groups", damaged)
    scalars = parse(path, metadata, "optim_scalars", damaged)
    extra = parse(path, metadata, "state", damaged)
    if not isinstance(extra, dict):
        raise corrupt("state must be a JSON object")
    for key, (ok, kind) in STATE_TYPES.items():
        if key not in extra or not ok(extra[key]):
            raise corrupt(f"state {key} must be {kind}, got {short(extra.get(key))}")
    for key, (ok, kind) in OPTIONAL_STATE_TYPES.items():
        if not ok(extra.get(key)):
            raise corrupt(f"state {key} must be {kind}, got {short(extra.get(key))}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    _check_groups(groups, optimizer.param_groups, corrupt)
    averaged_shapes = {k: tuple(v.shape) for k, v in average.tensors().items()} if average is not None else {}
    missing = [k for k in averaged_shapes if f"ema.{k}" not in header.tensors]
    if missing:
        raise corrupt(f"train.ema is on but the averaged weights are missing (ema.{missing[0]})")
    if not isinstance(scalars, dict):
        raise corrupt("optim_scalars must be a JSON object")
    state: dict[int, dict[str, Any]] = {}
    for index, entries in scalars.items():
        if not re.fullmatch(r"\d{1,9}", index) or int(index) >= len(params) or not isinstance(entries, dict):
            raise corrupt(f"optimizer scalars for {short(index)} fit no parameter")
        if not all(v is None or isinstance(v, int | float | bool) for v in entries.values()):
            raise corrupt(f"optimizer scalars for parameter {index} are not numbers")
        state.setdefault(int(index), {}).update(entries)
    names = {}
    for key, info in header.tensors.items():
        m = re.fullmatch(r"optim\.(\d{1,9})\.(\w{1,64})", key)
        if m:
            index = int(m.group(1))
            if index >= len(params) or not _fits(info.shape, tuple(params[index].shape)):
                raise corrupt(f"{short(key)} {info.shape} fits no parameter of this model")
            if info.dtype not in ("F32", "F64", "F16", "BF16"):
                raise corrupt(f"{short(key)} has dtype {info.dtype}")
            names[key] = ("optim", index, m.group(2))
        elif re.fullmatch(r"rng\.(torch|cuda)", key):
            names[key] = ("rng", 0, key[4:])
        elif key.startswith("ema.") and average is None:
            continue  # averaged weights this resume does not keep
        elif key[4:] in averaged_shapes and key.startswith("ema."):
            if info.shape != averaged_shapes[key[4:]] or info.dtype not in ("F32", "F64", "F16", "BF16"):
                raise corrupt(f"{short(key)} {info.shape} fits no parameter of this model")
            names[key] = ("ema", 0, key[4:])
        else:
            raise corrupt(f"unexpected tensor {short(key)}")
    rng_info = header.tensors.get("rng.torch")
    if rng_info is None or rng_info.dtype != "U8" or rng_info.shape != tuple(torch.get_rng_state().shape):
        raise corrupt("the random generator's state is missing or not this torch's")
    cuda = header.tensors.get("rng.cuda")
    if cuda is not None and (cuda.dtype != "U8" or len(cuda.shape) != 1):
        raise corrupt("the CUDA random generator's state is malformed")
    data = read_data(path, header)
    integrity.verify(path, header, data, "training state")
    tensors = load_tensors(path, data, "the training state is corrupt")
    rng, averaged = {}, {}
    for key, value in tensors.items():
        if key not in names:
            continue
        kind, index, name = names[key]
        if kind == "optim":
            state.setdefault(index, {})[name] = value
        else:
            (averaged if kind == "ema" else rng)[name] = value
    group_of = [g for g, group in enumerate(optimizer.param_groups) for _ in group["params"]]
    _check_consistent(state, params, group_of, corrupt)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model/optimizer ({clip(e)})") from None
    if average is not None:
        average.load(averaged)
    return extra, rng


def _fits(saved: tuple[int, ...], param: tuple[int, ...]) -> bool:
    """An optimizer state tensor is a scalar (a step count), or shaped like its parameter, a factored moment
    (Adafactor) keeping 1 in the dimensions it averages over."""
    if saved == ():
        return True
    return len(saved) == len(param) and all(s in (p, 1) for s, p in zip(saved, param, strict=True))


def _check_consistent(state: dict[int, dict[str, Any]], params: list, group_of: list[int], corrupt: Callable) -> None:
    """Every parameter of a kind (matrix or vector) in a param group carries the same state, each entry shaped
    alike: one moment dropped or reshaped would otherwise only fail at the first optimizer step, mid-run. (Groups
    differ: muon's Muon group keeps a momentum buffer where its AdamW groups keep two moments.)"""
    keys: dict[tuple[int, bool], tuple[int, set[str]]] = {}
    shapes: dict[tuple[int, str], tuple[int, tuple]] = {}
    for index, entries in sorted(state.items()):
        if not entries:
            continue  # a parameter that never had a gradient has no state yet: the optimizer starts it afresh
        p = params[index]
        first = keys.setdefault((group_of[index], p.dim() >= 2), (index, set(entries)))
        if first[1] != set(entries):
            raise corrupt(f"parameter {index} has state {sorted(entries)} but parameter {first[0]} {sorted(first[1])}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim():
                pattern = tuple(d == 1 or s == d for s, d in zip(value.shape, p.shape, strict=True))
                seen = shapes.setdefault((p.dim(), name), (index, pattern))
                if seen[1] != pattern:
                    raise corrupt(f"optim.{index}.{name} {tuple(value.shape)} is shaped unlike the others")


def _check_groups(groups: Any, live: list[dict], corrupt: Callable[[str], CheckpointError]) -> None:
    """Saved param groups must be the optimizer's own: same count, same keys, values of the same kind."""
    if not isinstance(groups, list) or len(groups) != len(live):
        raise corrupt(f"{len(live)} parameter groups expected, found {short(groups)}")
    for i, (saved, own) in enumerate(zip(groups, live, strict=True)):
        if not isinstance(saved, dict):
            raise corrupt(f"parameter group {i} is not a JSON object")
        params = saved.get("params")
        if not isinstance(params, list) or len(params) != len(own["params"]) or not all(map(is_int, params)):
            raise corrupt(f"parameter group {i} lists other parameters than this model's")
        for key, value in own.items():
            if key == "params":
                continue
            if key not in saved:
                if key == "initial_lr":  # stamped again from the config on resume (optim.stamp_peaks); older
                    continue  # checkpoints kept a ratio, lr_scale, instead
                raise corrupt(f"parameter group {i} has no {key}")
            if not _same_kind(saved[key], value):
                raise corrupt(f"parameter group {i}: {key} = {short(saved[key])} where {short(value)} belongs")


def _same_kind(saved: Any, own: Any) -> bool:
    if isinstance(own, bool) or own is None or isinstance(own, str):
        return type(saved) is type(own) or (own is None and saved is None)
    if isinstance(own, int | float):
        return _finite_number(saved)
    if isinstance(own, list | tuple):
        return isinstance(saved, list) and len(saved) == len(own) and all(map(_same_kind, saved, own))
    if isinstance(own, torch.Tensor):
        return _finite_number(saved)
    return saved == own
