"""A model checkpoint's metadata: what each value must be, checked before anything is built from it.

The string metadata holds the format and tuilm versions, the model config, the tokenizer JSON, the training
config, step, tokens seen, val loss, bits/char and the data fingerprint. Its values are type-checked and the model
config compared with the header's tensor names, shapes and dtypes before any model is built; whatever is wrong
becomes one CheckpointError line naming the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuilm.checkpoint.header import Header, clip, is_int, open_checked
from tuilm.checkpoint.paths import resolve_model_path
from tuilm.errors import CheckpointError, ConfigError, TuilmError
from tuilm.formatting import short
from tuilm.model.weights import compare_shapes, mismatch, saved_state

FORMAT = "tuilm-checkpoint"
VERSION = 1  # of the model checkpoint and of the training state
# Position tables and the KV cache are not in the file, so their size (seq_len x d_model x layers) is bounded apart.
MAX_CONTEXT_ELEMENTS = 2**27  # 512 MiB in fp32


def number_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def count(v: Any) -> bool:
    return is_int(v) and v >= 0


def _str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


# What each known metadata value must be once parsed as JSON; others are kept as they are.
META_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model_config": (lambda v: isinstance(v, dict), "a JSON object"),
    "train_config": (lambda v: isinstance(v, dict), "a JSON object"),
    "step": (count, "a whole number >= 0"),
    "tokens": (count, "a whole number >= 0"),
    "epoch": (number_or_none, "a number"),
    "val_loss": (number_or_none, "a number or null"),
    "val_bpc": (number_or_none, "a number or null"),
    "best_val_loss": (number_or_none, "a number or null"),
    "data_fingerprint": (_str_or_none, "a string"),
    "data": (lambda v: v is None or isinstance(v, dict), "a JSON object"),
    "run": (_str_or_none, "a string"),
    "recipe": (_str_or_none, "a string"),
}


def damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: the checkpoint's metadata is damaged ({why})")


def parse(path: Path, metadata: dict[str, str], key: str, damaged=damaged) -> Any:
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):
        raise damaged(path, f"{key} is not valid JSON") from None


def check_version(path: Path, metadata: dict[str, str], damaged=damaged) -> None:
    version = metadata.get("format_version", "0")
    if not re.fullmatch(r"\d{1,9}", version):
        raise damaged(path, f"format_version {short(version)} is not a number")
    if int(version) > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer tuilm ({short(metadata.get('tuilm_version'))}); upgrade tuilm"
        )


def checked_metadata(path: Path, header: Header) -> dict[str, Any]:
    """The metadata's known values, parsed and type-checked; the model config checked against the tensors."""
    from tuilm.model import ModelConfig

    metadata = header.metadata
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: this safetensors file was not written by tuilm (no tuilm metadata: model config and "
            "tokenizer); train one with `tuilm train`"
        )
    check_version(path, metadata)
    for key in ("model_config", "tokenizer"):
        if key not in metadata:
            raise damaged(path, f"no {key}")
    parsed: dict[str, Any] = {"train_config": {}}
    for key, (ok, kind) in META_TYPES.items():
        if key in metadata:
            value = parse(path, metadata, key)
            if not ok(value):
                raise damaged(path, f"{key} must be {kind}, got {short(value)}")
            parsed[key] = value
    try:
        config = ModelConfig.from_dict(parsed["model_config"])
    except (ConfigError, TypeError) as e:
        raise damaged(path, f"model_config: {clip(e)}") from None
    _check_config(path, config, header)
    _check_train_config(path, parsed["train_config"], parsed["model_config"])
    parsed["config"] = config
    return parsed


def _check_config(path: Path, config, header: Header) -> None:
    """Compare the config with the header's tensors: the cheap sizes first, then every name, shape and dtype."""
    from tuilm.model import GPT

    emb = header.tensors.get("tok_emb.weight")
    if emb is None:
        raise mismatch(path, "missing tok_emb.weight")
    if emb.shape != (config.vocab_size, config.d_model):
        raise mismatch(
            path, f"tok_emb.weight {emb.shape} vs vocab_size x d_model ({config.vocab_size}, {config.d_model})"
        )
    layers = {int(m.group(1)) for name in header.tensors if (m := re.match(r"blocks\.(\d{1,9})\.", name))}
    if layers != set(range(config.n_layers)):
        raise mismatch(path, f"the config says {config.n_layers} layers, the weights hold {len(layers)}")
    context = config.seq_len * config.d_model * (2 * config.n_layers + 1)
    if context > MAX_CONTEXT_ELEMENTS:
        raise mismatch(path, f"seq_len {config.seq_len} is absurd for this width and depth ({context:,} cached values)")
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = GPT(config)
    expected = {k: tuple(v.shape) for k, v in saved_state(model).items()}
    compare_shapes(path, expected, {k: t.shape for k, t in header.tensors.items()})
    wrong_dtype = [f"{k} {t.dtype}" for k, t in header.tensors.items() if t.dtype != "F32"]
    if wrong_dtype:
        raise mismatch(path, f"dtype {wrong_dtype[0]} (tuilm saves F32)")


def _check_train_config(path: Path, train_config: dict, model_config: dict) -> None:
    """The settings a resume and `tuilm eval` rebuild: tables of plain values, the model the one saved."""
    for section, values in train_config.items():
        if section in ("recipe", "description"):
            if not isinstance(values, str):
                raise damaged(path, f"train_config {section} must be a string, got {short(values)}")
            continue
        if not isinstance(values, dict):
            raise damaged(path, f"train_config [{short(section)}] must be a table, got {short(values)}")
        for key, value in values.items():
            if not (value is None or isinstance(value, str | int | float | bool)):
                raise damaged(path, f"train_config {section}.{short(key)} has the wrong type: {short(value)}")
    for key, value in (train_config.get("model") or {}).items():
        if key in model_config and model_config[key] != value:
            raise damaged(
                path, f"train_config model.{key} = {short(value)} but the model is {short(model_config[key])}"
            )
    if train_config:
        from tuilm.config import from_dict

        try:
            from_dict(train_config, train_config.get("recipe", "custom"))
        except TuilmError:
            pass  # settings this tuilm no longer takes: said in one line by whatever rebuilds them (eval, resume)
        except Exception as e:  # a value of a type the settings cannot take at all
            raise damaged(path, f"train_config: {type(e).__name__}: {clip(e, 80)}") from None


def read_tokenizer(path: Path):
    """The checkpoint's tokenizer, from the header only; a broken one is the file's damage, and names the file."""
    path = resolve_model_path(path)
    return tokenizer_of(path, read_metadata(path))


def read_run_config(path: Path):
    """The checkpoint's training config (a RunConfig), from the header only. A setting it holds that tuilm does
    not take is the file's damage (a flipped byte in a key), never the user's: the message names the file."""
    path = resolve_model_path(path)
    return saved_run_config(path, checked_metadata(path, open_checked(path))["train_config"])


def saved_run_config(path: Path, saved: dict):
    """A checkpoint's train_config (as Checkpoint.run_config holds it) as a RunConfig, or one line naming the file."""
    from tuilm.config import from_dict

    try:
        return from_dict(saved, str(saved.get("recipe", "custom")))
    except TuilmError as e:
        raise damaged(path, f"train_config: {clip(e)}; or a newer tuilm wrote it") from None


def tokenizer_of(path: Path, metadata: dict[str, str]):
    """The tokenizer the metadata holds, built whole now (so that a broken one fails here, naming the file)."""
    from tuilm.data.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.from_json(metadata["tokenizer"])
        tokenizer.token_bytes  # noqa: B018 - built now: a token outside the byte alphabet fails here, not mid-reply
    except TuilmError as e:
        raise damaged(path, f"tokenizer: {clip(e)}") from None
    except BaseException as e:  # the tokenizers library panics (a BaseException) on some malformed JSON
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        raise damaged(path, f"tokenizer: {type(e).__name__}") from None
    return tokenizer


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a tuilm checkpoint, after checking it is safe, really one of ours and that its
    config fits its tensors. Reads the header only; load_checkpoint and read_weights verify the checksum too."""
    path = resolve_model_path(path)
    header = open_checked(path)
    checked_metadata(path, header)
    return header.metadata


def json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value
