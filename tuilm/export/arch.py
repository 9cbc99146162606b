"""Which transformers architecture computes a tuilm model exactly, and its tensors' names both ways.

The math was checked against transformers' modelling code, not assumed from the names:
- GPT-2: pre-norm, LayerNorm eps 1e-5 (layer_norm_epsilon), attention scaled by 1/sqrt(head_dim), learned
  positions, Conv1D weights stored (in, out). Its activation "gelu" is erf GELU and "gelu_pytorch_tanh" is
  F.gelu(approximate="tanh"), tuilm's gelu and gelu_tanh exactly. It has biases everywhere: where tuilm has none,
  zeros compute the same thing.
- Llama: RMSNorm x * rsqrt(mean(x²) + eps) * w with eps 1e-5, RoPE with base 10000 rotating dimension i with
  i + head_dim/2 (rotate_half, the GPT-NeoX pairing tuilm uses, so no permutation), SwiGLU
  down(silu(gate(x)) * up(x)), attention scaled by 1/sqrt(head_dim).
- Qwen3: Llama plus an RMSNorm over each head's queries and keys (eps rms_norm_eps) before RoPE, which is where
  tuilm's qk_norm sits; its MLP has no biases.
Everything else (ALiBi, sinusoidal positions, relu2, ...) has no architecture that computes it the same way.
"""

from __future__ import annotations

from dataclasses import replace

from tuilm.errors import CheckpointError, ConfigError

EPS = 1e-5  # tuilm's LayerNorm and RMSNorm eps (torch's default), also of qk_norm
ROPE_BASE = 10000.0
GPT2_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}  # tuilm -> transformers
GPT2_ACTS_IN = {**{v: k for k, v in GPT2_ACTS.items()}, "gelu_new": "gelu_tanh"}  # gelu_new: the same tanh formula
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
LLAMA_LIKE = ("llama", "qwen3")


class Unexportable(ConfigError):
    """A model with a feature no transformers architecture computes the same way (exit 2)."""


def architecture(cfg) -> str:
    """'gpt2', 'llama' or 'qwen3': the transformers architecture that computes `cfg` exactly, or Unexportable
    naming the feature and the closest setting that exports."""
    if cfg.pos in ("alibi", "sinusoidal"):
        raise Unexportable(
            f"pos={cfg.pos}: no transformers architecture computes tuilm's {cfg.pos} positions the same way; "
            "the closest exportable setting is pos=rope (with norm=rmsnorm act=swiglu: Llama) or pos=learned (GPT-2)"
        )
    if cfg.pos == "learned":
        if cfg.qk_norm:
            raise Unexportable(
                "qk_norm with pos=learned: GPT-2 has no per-head query/key norm; the closest exportable setting "
                "is qk_norm=false, or pos=rope norm=rmsnorm act=swiglu (Qwen3)"
            )
        if cfg.norm != "layernorm":
            raise Unexportable(
                f"norm={cfg.norm} with pos=learned: GPT-2 uses LayerNorm; the closest exportable setting is "
                "norm=layernorm (or pos=rope act=swiglu: Llama)"
            )
        if cfg.act not in GPT2_ACTS:
            raise Unexportable(
                f"act={cfg.act} with pos=learned: GPT-2's MLP takes gelu, gelu_tanh or relu; the closest exportable "
                "setting is act=gelu_tanh"
            )
        return "gpt2"
    if cfg.norm != "rmsnorm":
        raise Unexportable(
            f"norm={cfg.norm} with pos=rope: Llama uses RMSNorm; the closest exportable setting is norm=rmsnorm"
        )
    if cfg.act != "swiglu":
        raise Unexportable(
            f"act={cfg.act} with pos=rope: Llama's MLP is SwiGLU; the closest exportable setting is act=swiglu"
        )
    if cfg.qk_norm and cfg.bias:
        raise Unexportable(
            "bias=true with qk_norm: Qwen3 (the architecture with per-head q/k norm) has no MLP biases; the "
            "closest exportable setting is bias=false"
        )
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config(cfg, arch: str, *, pad_id: int, eos_id: int) -> dict:
    """config.json for transformers (no remote code): the architecture's own names for tuilm's settings."""
    common = {
        "architectures": [CLASSES[arch]],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos_id,  # tuilm starts every context with <|eos|> (the document break)
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if arch == "gpt2":
        return {
            **common,
            "n_positions": cfg.seq_len,
            "n_ctx": cfg.seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.ff_hidden,
            "activation_function": GPT2_ACTS[cfg.act],
            "layer_norm_epsilon": EPS,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    rope = {"rope_type": "default", "rope_theta": ROPE_BASE}
    return {
        **common,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": EPS,
        "rope_theta": ROPE_BASE,  # transformers 4 reads this, 5 reads rope_parameters
        "rope_parameters": rope,
        "rope_scaling": None,
        "attention_bias": cfg.bias,
        "attention_dropout": 0.0,
        **({"mlp_bias": cfg.bias, "pretraining_tp": 1} if arch == "llama" else {}),
        **({"use_sliding_window": False, "sliding_window": None} if arch == "qwen3" else {}),
    }


def table(cfg, arch: str) -> list[tuple[str, str, str]]:
    """(transformers name, tuilm name, how) for every tensor of the transformers model. how: "" the same tensor,
    "T" transposed (GPT-2's Conv1D), "q"/"k"/"v" that third of the fused qkv rows."""
    rows = []
    if arch == "gpt2":
        rows += [("transformer.wte.weight", "tok_emb.weight", ""), ("transformer.wpe.weight", "pos_emb.weight", "")]
        layer = [("ln_1", "norm1", ""), ("attn.c_attn", "attn.qkv", "T"), ("attn.c_proj", "attn.proj", "T")]
        layer += [("ln_2", "norm2", ""), ("mlp.c_fc", "mlp.fc", "T"), ("mlp.c_proj", "mlp.proj", "T")]
        for i in range(cfg.n_layers):
            for theirs, ours, how in layer:
                for kind in ("weight", "bias"):  # GPT-2 has every bias; ln bias is never transposed
                    rows.append(
                        (f"transformer.h.{i}.{theirs}.{kind}", f"blocks.{i}.{ours}.{kind}", how * (kind == "weight"))
                    )
        rows += [("transformer.ln_f.weight", "norm_f.weight", ""), ("transformer.ln_f.bias", "norm_f.bias", "")]
    else:
        rows.append(("model.embed_tokens.weight", "tok_emb.weight", ""))
        biased = ["weight", "bias"] if cfg.bias else ["weight"]
        for i in range(cfg.n_layers):
            at, ours = f"model.layers.{i}", f"blocks.{i}"
            rows += [(f"{at}.input_layernorm.weight", f"{ours}.norm1.weight", "")]
            rows += [(f"{at}.post_attention_layernorm.weight", f"{ours}.norm2.weight", "")]
            for kind in biased:
                rows += [(f"{at}.self_attn.{p}_proj.{kind}", f"{ours}.attn.qkv.{kind}", p) for p in "qkv"]
                rows.append((f"{at}.self_attn.o_proj.{kind}", f"{ours}.attn.proj.{kind}", ""))
                rows.append((f"{at}.mlp.gate_proj.{kind}", f"{ours}.mlp.gate.{kind}", ""))
                rows.append((f"{at}.mlp.up_proj.{kind}", f"{ours}.mlp.fc.{kind}", ""))
                rows.append((f"{at}.mlp.down_proj.{kind}", f"{ours}.mlp.proj.{kind}", ""))
            if arch == "qwen3":
                rows.append((f"{at}.self_attn.q_norm.weight", f"{ours}.attn.q_norm.weight", ""))
                rows.append((f"{at}.self_attn.k_norm.weight", f"{ours}.attn.k_norm.weight", ""))
        rows.append(("model.norm.weight", "norm_f.weight", ""))
    if not cfg.tie_embeddings:
        rows.append(("lm_head.weight", "head.weight", ""))
    return rows


def hf_tensors(state: dict, cfg, arch: str) -> dict:
    """tuilm's state dict -> the transformers model's tensors (fp32, contiguous; zeros for biases tuilm lacks)."""
    import torch

    out = {}
    for theirs, ours, how in table(cfg, arch):
        t = state.get(ours)
        if t is None:  # a bias tuilm does not have: zeros, one per output (of the weight beside it)
            weight = state[ours.removesuffix(".bias") + ".weight"]
            t = torch.zeros(weight.shape[0], dtype=weight.dtype)
        if how == "T":
            t = t.t()
        elif how:
            t = t.chunk(3, dim=0)["qkv".index(how)]
        out[theirs] = t.detach().to("cpu", torch.float32).contiguous()
    return out


def tuilm_tensors(hf: dict, cfg, arch: str) -> dict:
    """A transformers model's tensors -> tuilm's state dict (KeyError naming a missing tensor)."""
    import torch

    if arch == "gpt2":  # the hub's GPT-2 files name the base model's tensors without its "transformer." prefix
        hf = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in hf.items()}
    out, parts = {}, {}
    for theirs, ours, how in table(cfg, arch):
        t = hf[theirs]
        if ours == "pos_emb.weight":
            t = t[: cfg.seq_len]  # a shorter seq_len keeps the first rows
        if how == "T":
            out[ours] = t.t().contiguous()
        elif how:
            parts.setdefault(ours, {})[how] = t
        else:
            out[ours] = t
    for ours, qkv in parts.items():
        out[ours] = torch.cat([qkv[p] for p in "qkv"], dim=0)
    return out


def tuilm_config(hf: dict, where, seq_len: int | None = None, dropout: float = 0.0):
    """The tuilm ModelConfig of a transformers config.json (GPT-2, Llama or Qwen3 shaped); CheckpointError
    naming the setting tuilm cannot compute the same way. seq_len None: the model's full context."""
    from tuilm.model.config import ModelConfig

    arch = hf.get("model_type", "gpt2")
    if arch == "gpt2":
        act = GPT2_ACTS_IN.get(hf.get("activation_function", "gelu_new"))
        if act is None:
            raise CheckpointError(f"{where}: activation {hf.get('activation_function')!r} is not supported")
        _need(where, "layer_norm_epsilon", hf.get("layer_norm_epsilon", EPS), EPS)
        n_pos = int(hf.get("n_positions", 1024))
        d, inner = int(hf["n_embd"]), hf.get("n_inner")
        shape = {"d_model": d, "n_layers": int(hf["n_layer"]), "n_heads": int(hf["n_head"]), "d_ff": inner or None}
        kind = {"pos": "learned", "act": act, "norm": "layernorm", "bias": True, "qk_norm": False}
    elif arch in LLAMA_LIKE:
        d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        _need(where, "hidden_act", hf.get("hidden_act", "silu"), "silu")
        _need(where, "num_key_value_heads", hf.get("num_key_value_heads") or heads, heads)
        _need(where, "head_dim", hf.get("head_dim") or d // heads, d // heads)
        _need(where, "rms_norm_eps", hf.get("rms_norm_eps", 1e-6), EPS)
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        _need(where, "rope type", rope.get("rope_type", rope.get("type", "default")), "default")
        _need(where, "rope_theta", float(rope.get("rope_theta", hf.get("rope_theta", ROPE_BASE))), ROPE_BASE)
        bias = bool(hf.get("attention_bias", False))
        if arch == "llama":
            _need(where, "mlp_bias (as attention_bias)", bool(hf.get("mlp_bias", False)), bias)
        else:
            _need(where, "attention_bias", bias, False)
            _need(where, "use_sliding_window", bool(hf.get("use_sliding_window", False)), False)
        n_pos = int(hf.get("max_position_embeddings", 2048))
        shape = {"d_model": d, "n_layers": int(hf["num_hidden_layers"]), "n_heads": heads}
        shape["d_ff"] = _swiglu_d_ff(int(hf["intermediate_size"]), where)
        kind = {"pos": "rope", "act": "swiglu", "norm": "rmsnorm", "bias": bias, "qk_norm": arch == "qwen3"}
    else:
        raise CheckpointError(f"{where}: model_type {arch!r} is not one tuilm reads (gpt2, llama, qwen3)")
    tie = bool(hf.get("tie_word_embeddings", arch == "gpt2"))
    try:
        cfg = ModelConfig(
            vocab_size=int(hf["vocab_size"]), seq_len=n_pos, dropout=dropout, tie_embeddings=tie, **shape, **kind
        )
    except ConfigError as e:  # the rules between settings: d_model divisible by n_heads
        raise CheckpointError(f"{where}: {e}") from None
    if seq_len is not None and seq_len > n_pos:
        raise ConfigError(f"seq_len {seq_len} is longer than the {n_pos} positions this model learned")
    return replace(cfg, seq_len=seq_len or n_pos)


def _need(where, name: str, value, wanted) -> None:
    if value != wanted:
        raise CheckpointError(f"{where}: {name} {value!r} is not what tuilm computes ({wanted!r})")


def _swiglu_d_ff(intermediate: int, where) -> int:
    """The d_ff whose SwiGLU width (ModelConfig.ff_hidden: 2/3 of it, rounded up to a multiple of 8) is
    `intermediate`."""
    from tuilm.model.config import ModelConfig

    for d_ff in range(3 * intermediate // 2 - 2, 3 * intermediate // 2 + 3):
        if d_ff >= 1 and ModelConfig(act="swiglu", d_ff=d_ff).ff_hidden == intermediate:
            return d_ff
    raise CheckpointError(f"{where}: intermediate_size {intermediate} is not a multiple of 8, which tuilm needs")
