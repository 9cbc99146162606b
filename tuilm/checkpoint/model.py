"""Model checkpoints (last.safetensors, best.safetensors, step-<STEP>.safetensors): the weights plus the metadata
that makes them usable alone (tuilm/checkpoint/metadata.py), saved atomically with a checksum and loaded only
after every check; and `open_model`, what `--model-path` accepts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuilm import __version__
from tuilm.checkpoint import integrity
from tuilm.checkpoint.header import load_tensors, open_checked, read_data
from tuilm.checkpoint.metadata import FORMAT, VERSION, checked_metadata, json_or_str, tokenizer_of
from tuilm.checkpoint.paths import resolve_model_path
from tuilm.errors import CheckpointError
from tuilm.model.weights import load_weights, model_tensors


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
    integrity.write(Path(path), model_tensors(model), metadata)
    return Path(path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (CPU, fp32) after every check: header, metadata, shapes and the checksum."""
    path = resolve_model_path(path)
    header = open_checked(path)
    checked_metadata(path, header)
    return _verified_tensors(path, header)


def _verified_tensors(path: Path, header) -> dict[str, torch.Tensor]:
    data = read_data(path, header)
    integrity.verify(path, header, data, "weights")
    return load_tensors(path, data, "the weights cannot be read")


def load_checkpoint(path: Path, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False) -> Checkpoint:
    """The model, tokenizer and settings of a checkpoint. Weights holding NaN or Inf are refused unless
    `allow_nonfinite` (a post-mortem of a diverged run)."""
    from tuilm.model import GPT

    path = resolve_model_path(path)
    header = open_checked(path)
    parsed = checked_metadata(path, header)
    config = parsed["config"]
    metadata = header.metadata
    tokenizer = tokenizer_of(path, metadata)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}"
        )
    tensors = _verified_tensors(path, header)
    model = GPT(config)
    hint = "this model cannot produce text; pass --allow-nonfinite to load it anyway for a post-mortem"
    load_weights(model, tensors, path, allow_nonfinite=allow_nonfinite, hint=hint)
    meta = {
        k: json_or_str(v)
        for k, v in metadata.items()
        if k not in ("model_config", "tokenizer", "train_config", "format")
    }
    return Checkpoint(path, model.to(device).eval(), tokenizer, parsed["train_config"], meta)


def open_model(path: Path, device="cpu", *, allow_nonfinite: bool = False) -> Checkpoint:
    """A Checkpoint of a tuilm checkpoint, run directory or RUN@STEP, or of a transformers directory: what
    `--model-path` accepts. An exported directory brings its run's settings back (tuilm_run.json), so `eval`
    finds the run's val split; another has none."""
    from tuilm.export.hf import RUN_FILE
    from tuilm.model.pretrained import is_model_dir, load_pretrained

    if not is_model_dir(path):
        return load_checkpoint(path, device, allow_nonfinite=allow_nonfinite)
    folder = Path(path).expanduser()
    model, tokenizer = load_pretrained(str(folder), device=device)
    run = {}
    if (folder / RUN_FILE).is_file():
        try:
            run = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder / RUN_FILE}: cannot read ({e})") from None
    return Checkpoint(
        folder / "model.safetensors", model, tokenizer, run.get("run_config") or {}, run.get("meta") or {}
    )
