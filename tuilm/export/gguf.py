"""One GGUF file for llama.cpp (and ollama, LM Studio, ...), written with llama.cpp's own `gguf` package.

Llama-shaped models become llama.cpp's `llama` architecture, qk_norm ones its `qwen3`. llama.cpp's llama rotates
adjacent pairs (2i, 2i+1) where tuilm and transformers rotate i with i + head_dim/2, so the query and key rows are
permuted the way llama.cpp's own convert_hf_to_gguf.py does; its qwen3 rotates halves (NEOX) like tuilm, so its
rows stay. GPT-2-shaped models are refused: llama.cpp's gpt2 computes GELU its own approximate way, which this
exporter has not proven equal to tuilm's (export them with --to hf).

The tokenizer goes in as llama.cpp's "gpt2" BPE (token strings in the byte-level alphabet, the merges, <|pad|>
and <|eos|> as control tokens) with the "gpt-2" pre-tokenizer, the regex tuilm's ByteLevel pre-tokenizer splits
with; <|eos|> is also the BOS llama.cpp prepends, as tuilm starts every context with it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuilm.errors import ConfigError

DTYPES = ("f32", "f16", "bf16", "q8_0")
ARCHS = ("llama", "qwen3")


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("--to gguf needs llama.cpp's gguf package: pip install 'tuilm[export]'") from None
    return gguf


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")


def pre_tokenizer(tokenizer) -> str:
    """The llama.cpp pre-tokenizer that splits text as this tokenizer does, or ConfigError."""
    spec = json.loads(tokenizer.to_json())
    pre, norm = spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    if not byte_level or norm is not None:
        raise ConfigError(
            f"the tokenizer's pre-tokenizer ({pre.get('type')}, normalizer {norm and norm.get('type')}) matches "
            "none llama.cpp knows; tuilm's own byte-level BPE (ByteLevel, no prefix space) exports as gpt-2"
        )
    return "gpt-2"


def vocab(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their llama.cpp types (1 normal, 3 control) and the merges as "left right" lines."""
    inner = tokenizer.inner
    tokens = [inner.id_to_token(i) for i in range(tokenizer.vocab_size)]
    special = {t.content for t in inner.get_added_tokens_decoder().values() if t.special}
    types = [3 if t in special else 1 for t in tokens]
    merges = json.loads(tokenizer.to_json())["model"]["merges"]
    return tokens, types, [m if isinstance(m, str) else " ".join(m) for m in merges]


def interleave_rope(w, n_heads: int):
    """Rows of each head from the halves pairing (i, i + d/2) to llama.cpp's adjacent pairing (2i, 2i + 1)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state: dict, cfg, arch: str) -> dict:
    """llama.cpp's names -> tensors (torch layout, fp32)."""
    import torch

    d = cfg.d_model
    out = {"token_embd.weight": state["tok_emb.weight"], "output_norm.weight": state["norm_f.weight"]}
    if not cfg.tie_embeddings:  # absent, llama.cpp reuses token_embd
        out["output.weight"] = state["head.weight"]
    for i in range(cfg.n_layers):
        ours, at = f"blocks.{i}", f"blk.{i}"
        q, k, v = state[f"{ours}.attn.qkv.weight"].split(d, dim=0)
        if arch == "llama":
            q, k = interleave_rope(q, cfg.n_heads), interleave_rope(k, cfg.n_heads)
        out |= {f"{at}.attn_q.weight": q, f"{at}.attn_k.weight": k, f"{at}.attn_v.weight": v}
        out[f"{at}.attn_output.weight"] = state[f"{ours}.attn.proj.weight"]
        out[f"{at}.attn_norm.weight"] = state[f"{ours}.norm1.weight"]
        out[f"{at}.ffn_norm.weight"] = state[f"{ours}.norm2.weight"]
        out[f"{at}.ffn_gate.weight"] = state[f"{ours}.mlp.gate.weight"]
        out[f"{at}.ffn_up.weight"] = state[f"{ours}.mlp.fc.weight"]
        out[f"{at}.ffn_down.weight"] = state[f"{ours}.mlp.proj.weight"]
        if arch == "qwen3":
            out[f"{at}.attn_q_norm.weight"] = state[f"{ours}.attn.q_norm.weight"]
            out[f"{at}.attn_k_norm.weight"] = state[f"{ours}.attn.k_norm.weight"]
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def check_exportable(cfg, arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(
            "--to gguf takes the Llama shape (pos=rope norm=rmsnorm act=swiglu, qk_norm optional): llama.cpp's "
            "gpt2 computes GELU its own approximate way; export this model with --to hf"
        )
    if cfg.bias:
        raise ConfigError("--to gguf: bias=true is not exported to llama.cpp; the closest setting is bias=false")


def write_gguf(path: Path, ckpt, arch: str, dtype: str) -> None:
    """The GGUF file at `path` (written in place: the caller renames it)."""
    gguf = require_gguf()
    cfg, tok = ckpt.model.cfg, ckpt.tokenizer
    check_exportable(cfg, arch)
    pre = pre_tokenizer(tok)
    qtype, ftype = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }[dtype]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(ckpt.path.parent.name)
    w.add_context_length(cfg.seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ff_hidden)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(ftype)
    tokens, types, merges = vocab(tok)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.eos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_pad_token_id(tok.pad_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for name, t in gguf_tensors(ckpt.model.state_dict(), cfg, arch).items():
        data = t.numpy()
        # Norms stay fp32 (as llama.cpp's converter keeps them); Q8_0 packs rows in blocks of 32.
        kind = qtype if data.ndim == 2 else gguf.GGMLQuantizationType.F32
        if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            kind = gguf.GGMLQuantizationType.F32
        if kind == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        elif kind == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype("float16"))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
