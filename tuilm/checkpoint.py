"""Checkpoints as safetensors files that carry everything needed to use them.

A model checkpoint (last.safetensors, best.safetensors) holds the weights plus string metadata: format and
tuilm versions, model config, tokenizer JSON, training config, step, tokens seen, val loss, bits/char and the
data fingerprint. The plain `safetensors` API reads it; `tuilm chat` needs nothing else.

Training state (optimizer moments, RNG, data position) goes to train_state.safetensors: tensors plus JSON
metadata. Nothing is ever pickled or unpickled, and every write is atomic.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from tuilm import __version__
from tuilm.atomic import atomic_write_bytes
from tuilm.errors import CheckpointError, ConfigError, TuilmError

FORMAT = "tuilm-checkpoint"
STATE_FORMAT = "tuilm-train-state"
VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


@dataclass
class Checkpoint:
    path: Path
    model: Any  # tuilm.model.GPT, in eval mode
    tokenizer: Any  # tuilm.data.tokenizer.Tokenizer
    run_config: dict  # the training config as saved (RunConfig.to_dict())
    meta: dict  # step, tokens, val_loss, val_bpc, data fingerprint, ...

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def model_tensors(model) -> dict[str, torch.Tensor]:
    """Weights to save: fp32, contiguous, the tied head left out (safetensors refuses shared storage)."""
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("head.weight", None)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_checkpoint(path: Path, model, tokenizer, run_config: dict, **meta: Any) -> Path:
    metadata = {
        "format": FORMAT,
        "format_version": str(VERSION),
        "tuilm_version": __version__,
        "model_config": json.dumps(model.cfg.to_dict()),
        "tokenizer": tokenizer.to_json(),
        "train_config": json.dumps(run_config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{k: json.dumps(v) for k, v in meta.items()},
    }
    atomic_write_bytes(Path(path), save(model_tensors(model), metadata=metadata))
    return Path(path)


def resolve_model_path(path: Path) -> Path:
    """A checkpoint file, or a run directory's best checkpoint (its last one when there is no best yet)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no best.safetensors or last.safetensors in this run directory")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a tuilm checkpoint, after checking it is safe and really one of ours."""
    path = resolve_model_path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES or sniff(path) == "pickle":
        raise CheckpointError(
            f"{path}: refusing to load a PyTorch pickle checkpoint: unpickling can run arbitrary code. "
            "tuilm reads and writes .safetensors checkpoints only"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file, or a corrupt one ({e})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: this safetensors file was not written by tuilm (no tuilm metadata: model config and "
            "tokenizer); train one with `tuilm train`"
        )
    if int(metadata.get("format_version", "0")) > VERSION:
        raise CheckpointError(f"{path}: written by a newer tuilm ({metadata.get('tuilm_version')}); upgrade tuilm")
    return metadata


MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def sniff(path: Path) -> str:
    """'safetensors', 'pickle' or 'unknown', judged by the file's structure, never by one byte.

    A safetensors file opens with its header's length as a little-endian u64 and then that many bytes of JSON;
    that length can start with any byte (0x80 included, whenever it is 128 mod 256), so the layout is checked
    first and only a file that is not laid out so is tested for pickle's protocol marker or a zip archive.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
            if len(head) == 8:
                n = int.from_bytes(head, "little")
                if 2 <= n <= min(MAX_HEADER, size - 8):
                    header = f.read(n)
                    if header[:1] == b"{":
                        try:
                            if isinstance(json.loads(header), dict):
                                return "safetensors"
                        except (UnicodeDecodeError, json.JSONDecodeError):
                            pass
    except OSError:
        return "unknown"
    # Pickle protocol 2+ starts with PROTO (0x80) and a protocol number; torch.save's default is a zip archive.
    if (head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04":
        return "pickle"
    return "unknown"


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    from tuilm.data.tokenizer import Tokenizer
    from tuilm.model import GPT, ModelConfig

    path = resolve_model_path(path)
    metadata = read_metadata(path)
    try:
        config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
        tokenizer = Tokenizer.from_json(metadata["tokenizer"])
        run_config = json.loads(metadata.get("train_config", "{}"))
    except (KeyError, json.JSONDecodeError, ConfigError, TuilmError) as e:
        raise CheckpointError(f"{path}: the checkpoint's metadata is damaged ({e})") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}"
        )
    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights cannot be read ({e})") from None
    model = GPT(config)
    load_weights(model, tensors, path)
    meta = {
        k: _json_or_str(v)
        for k, v in metadata.items()
        if k not in ("model_config", "tokenizer", "train_config", "format")
    }
    return Checkpoint(path, model.to(device).eval(), tokenizer, run_config, meta)


def load_weights(model, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    if model.cfg.tie_embeddings:
        expected.pop("head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}")
        if wrong:
            parts.append(f"shape {wrong[0]} (saved vs config)")
        raise CheckpointError(f"{path}: the weights do not match the model config: {'; '.join(parts)}")
    model.load_state_dict(tensors, strict=False)


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


# -- training state -------------------------------------------------------------------------------------------


def save_train_state(path: Path, optimizer, extra: dict[str, Any], rng: dict[str, torch.Tensor]) -> None:
    """Optimizer tensors and RNG states as tensors; everything else (counters, scalars) as JSON metadata."""
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
    metadata = {
        "format": STATE_FORMAT,
        "format_version": str(VERSION),
        "param_groups": json.dumps(state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "state": json.dumps(extra),
    }
    atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def load_train_state(path: Path, optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore the optimizer in place; return (the extra state dict, the RNG tensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: the training state is corrupt ({e})") from None
    if metadata.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a tuilm training-state file")
    state: dict[int, dict[str, Any]] = {}
    for index, entries in json.loads(metadata["optim_scalars"]).items():
        state.setdefault(int(index), {}).update(entries)
    rng = {}
    for key, value in tensors.items():
        kind, rest = key.split(".", 1)
        if kind == "optim":
            index, name = rest.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        elif kind == "rng":
            rng[rest] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model/optimizer ({e})") from None
    return json.loads(metadata["state"]), rng
