"""Pre-trained GPT-2 weights in tuilm's model: `--init gpt2` (or -medium, -large, -xl, or a local directory).

A directory in Hugging Face's layout holds `config.json`, `model.safetensors` and `tokenizer.json`; the named
sizes are fetched into huggingface_hub's cache (the optional extra: `pip install 'tuilm[hf]'`). The weights are
read with safetensors only, never unpickled.

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
from tuilm.model.config import _short

HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
FILES = ("config.json", "model.safetensors", "tokenizer.json")
ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


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


# GPT-2's config.json keys -> tuilm's model settings: each value is typed and ranged as tuilm's own (config.RANGES)
HF_KEYS = {"vocab_size": "vocab_size", "n_embd": "d_model", "n_layer": "n_layers", "n_head": "n_heads"}


def read_hf_config(folder: Path) -> dict:
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
        raise CheckpointError(f"{folder}/config.json: no {key!r}; is this a GPT-2 model directory?")
    try:
        return checked(f"model.{setting}", hf.get(key, default))
    except ConfigError as e:
        raise CheckpointError(f"{folder}/config.json: {key}: {e}") from None


def model_config(folder: Path, seq_len: int | None = None, dropout: float = 0.0):
    """The tuilm ModelConfig of a GPT-2 config.json (seq_len None: the model's full n_positions)."""
    from tuilm.model.config import ModelConfig

    hf = read_hf_config(folder)
    if hf.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{folder}: model_type {_short(hf.get('model_type'))} is not gpt2")
    act = ACTS.get(hf.get("activation_function", "gelu_new"))
    if act is None:
        raise CheckpointError(f"{folder}: activation {_short(hf.get('activation_function'))} is not supported")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not abs(eps - 1e-5) <= 1e-12:  # NaN too
        raise CheckpointError(f"{folder}: layer_norm_epsilon {_short(eps)} (tuilm uses 1e-5)")
    n_pos = hf_setting(folder, hf, "n_positions", "seq_len", 1024)
    shape = {ours: hf_setting(folder, hf, theirs, ours) for theirs, ours in HF_KEYS.items()}
    d_ff = hf_setting(folder, hf, "n_inner", "d_ff", 0) if hf.get("n_inner") is not None else None
    try:
        cfg = ModelConfig(
            **shape,
            seq_len=n_pos,
            d_ff=d_ff,
            dropout=dropout,
            pos="learned",
            act=act,
            norm="layernorm",
            tie_embeddings=True,
            bias=True,
        )
    except ConfigError as e:  # the rules between settings: d_model divisible by n_heads
        raise CheckpointError(f"{folder}/config.json: {e}") from None
    if seq_len is not None and seq_len > n_pos:
        raise ConfigError(f"seq_len {seq_len} is longer than the {n_pos} positions this model learned")
    return replace(cfg, seq_len=seq_len or n_pos)


def load_tokenizer(folder: Path):
    from tuilm.data.tokenizer import Tokenizer

    return Tokenizer.from_file(folder / "tokenizer.json")


def tuilm_tensors(hf: dict, cfg) -> dict:
    """GPT-2 safetensors names and layouts -> tuilm's state dict."""
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    out = {"tok_emb.weight": hf["wte.weight"], "pos_emb.weight": hf["wpe.weight"][: cfg.seq_len]}
    names = {
        "ln_1": "norm1",
        "attn.c_attn": "attn.qkv",
        "attn.c_proj": "attn.proj",
        "ln_2": "norm2",
        "mlp.c_fc": "mlp.fc",
        "mlp.c_proj": "mlp.proj",
    }
    for i in range(cfg.n_layers):
        for theirs, ours in names.items():
            w = hf[f"h.{i}.{theirs}.weight"]
            out[f"blocks.{i}.{ours}.weight"] = w if theirs.startswith("ln") else w.t().contiguous()  # Conv1D
            out[f"blocks.{i}.{ours}.bias"] = hf[f"h.{i}.{theirs}.bias"]
    out["norm_f.weight"], out["norm_f.bias"] = hf["ln_f.weight"], hf["ln_f.bias"]
    return out


def load_weights(model, folder: Path) -> None:
    """Copy the directory's GPT-2 weights into a tuilm GPT built from model_config(folder)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tuilm.checkpoint import load_weights as check_and_load

    path = folder / "model.safetensors"
    try:
        hf = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights cannot be read ({e})") from None
    try:
        tensors = tuilm_tensors(hf, model.cfg)
    except KeyError as e:
        raise CheckpointError(f"{path}: not GPT-2 weights (no tensor {e})") from None
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
