"""Pre-trained GPT-2 weights in tuilm's model: `--init gpt2` (or -medium, -large, -xl, or a local directory).

A directory in Hugging Face's layout holds `config.json`, `model.safetensors` and `tokenizer.json`; the named
sizes are fetched into huggingface_hub's cache (the optional extra: `pip install 'tuilm[hf]'`). The weights are
read with safetensors only, never unpickled. A local directory may also hold a Llama or Qwen3 model (what
`tuilm export --to hf` writes, among others): tuilm.export.arch maps each architecture's names and checks that its
math is tuilm's. tuilm.checkpoint.model.open_model makes such a directory what `--model-path` accepts.

GPT-2 is tuilm's pre-norm transformer with: biases everywhere (bias=true), the tanh approximation of GELU
(act=gelu_tanh), LayerNorm eps 1e-5 (torch's default, which tuilm uses), learned positions (up to
n_positions=1024; a shorter seq_len keeps the first rows), and the head tied to the token embedding. Its Conv1D
layers store weights as (in, out), so they are transposed; the fused c_attn is q, k, v in tuilm's order.

Its tokenizer is GPT-2's byte-level BPE with one special token, <|endoftext|>, used as tuilm's end-of-sequence
and, since GPT-2 has no pad token, as the pad id too (padding is masked and never scored).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tuilm.errors import CheckpointError, ConfigError, TuilmError

HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
FILES = ("config.json", "model.safetensors", "tokenizer.json")


class HubError(TuilmError):
    """The optional Hugging Face extra is missing, or the hub cannot be reached."""


def resolve(spec: str) -> Path:
    """A local directory with the three files, downloading a named GPT-2 size into huggingface_hub's cache."""
    path = Path(spec).expanduser()
    if spec not in HUB_MODELS:
        if not path.is_dir():
            names = ", ".join(HUB_MODELS)
            raise ConfigError(f"--init {spec}: not one of {names} and not a directory")
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise ConfigError(f"{path}: a Hugging Face model directory needs {', '.join(missing)}")
        return path
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise HubError(f"--init {spec} needs huggingface_hub: pip install 'tuilm[hf]'") from None
    repo = HUB_MODELS[spec]
    try:
        paths = [Path(hf_hub_download(repo, f)) for f in FILES]
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(
            f"could not fetch {repo} from the Hugging Face hub ({first}); offline, pass --init a directory "
            f"holding {', '.join(FILES)}"
        ) from None
    return paths[0].parent


# config.json keys -> tuilm's model settings (with a default where transformers has one): each value is typed and
# ranged as tuilm's own (config.RANGES) before anything reads it or is allocated
HF_KEYS = {
    "gpt2": {
        "vocab_size": ("vocab_size", None),
        "n_embd": ("d_model", None),
        "n_layer": ("n_layers", None),
        "n_head": ("n_heads", None),
        "n_positions": ("seq_len", 1024),
    },
    "llama": {
        "vocab_size": ("vocab_size", None),
        "hidden_size": ("d_model", None),
        "num_hidden_layers": ("n_layers", None),
        "num_attention_heads": ("n_heads", None),
        "intermediate_size": ("d_ff", None),
        "max_position_embeddings": ("seq_len", 2048),
    },
}


def read_config(folder: Path) -> dict:
    """config.json as a dict, or one CheckpointError naming the file: unreadable, not JSON, nested too deep to
    parse, or not an object."""
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a model config") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path}: must be a JSON object of settings, got a {type(hf).__name__}")
    return hf


def hf_setting(folder: Path, hf: dict, key: str, setting: str, default=None):
    """hf[key] checked as tuilm's model.<setting> (type and range), before anything is allocated."""
    from tuilm.config import checked

    if key not in hf and default is None:
        raise CheckpointError(f"{folder}/config.json: no {key!r}; is this a GPT-2, Llama or Qwen3 model directory?")
    try:
        return checked(f"model.{setting}", hf.get(key, default))
    except ConfigError as e:
        raise CheckpointError(f"{folder}/config.json: {key}: {e}") from None


def model_config(folder: Path, seq_len: int | None = None, dropout: float = 0.0):
    """The tuilm ModelConfig of a GPT-2, Llama or Qwen3 config.json (seq_len None: the model's full context)."""
    from tuilm.export.arch import tuilm_config

    hf = read_config(folder)
    keys = HF_KEYS["gpt2" if hf.get("model_type", "gpt2") == "gpt2" else "llama"]
    for key, (setting, default) in keys.items():
        hf_setting(folder, hf, key, setting, default)
    if hf.get("n_inner") is not None:
        hf_setting(folder, hf, "n_inner", "d_ff")
    try:
        return tuilm_config(hf, folder, seq_len, dropout)
    except (KeyError, TypeError, ValueError) as e:  # a value of the wrong kind that no range names
        raise CheckpointError(f"{folder}/config.json: {type(e).__name__}: {e}") from None


def load_tokenizer(folder: Path):
    from tuilm.data.tokenizer import Tokenizer

    return Tokenizer.from_file(folder / "tokenizer.json")


def load_weights(model, folder: Path) -> None:
    """Copy the directory's GPT-2 weights into a tuilm GPT built from model_config(folder)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tuilm.export.arch import tuilm_tensors
    from tuilm.model.weights import load_weights as check_and_load

    path = folder / "model.safetensors"
    try:
        hf = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights cannot be read ({e})") from None
    arch = read_config(folder).get("model_type", "gpt2")
    try:
        tensors = tuilm_tensors(hf, model.cfg, arch)
    except KeyError as e:
        raise CheckpointError(f"{path}: not {arch} weights (no tensor {e})") from None
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        check_and_load(model, {k: v.to(dtype) for k, v in tensors.items()}, path)


def load_pretrained(spec: str, seq_len: int | None = None, device="cpu"):
    """(model in eval mode, tokenizer) for `--init`/`eval --init`."""
    from tuilm.model.gpt import GPT

    folder = resolve(spec)
    cfg = model_config(folder, seq_len)
    model = GPT(cfg)
    load_weights(model, folder)
    tokenizer = load_tokenizer(folder)
    check_vocab(tokenizer, cfg, folder)
    return model.to(device).eval(), tokenizer


def check_vocab(tokenizer, cfg, folder) -> None:
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer.json has {tokenizer.vocab_size:,} tokens but the model {cfg.vocab_size:,}"
        )


def init_config(config, spec: str):
    """The run config with GPT-2's architecture (the user's seq_len, capped by the model, and dropout kept)."""
    folder = resolve(spec)
    seq_len = config.model.seq_len
    cfg = model_config(folder, seq_len, config.model.dropout)
    return replace(config, model=cfg), folder


def is_model_dir(path: Path) -> bool:
    """A transformers directory (exported by `tuilm export --to hf`, or any GPT-2/Llama/Qwen3 one)."""
    path = Path(path).expanduser()
    return path.is_dir() and all((path / f).is_file() for f in FILES)
