"""A decoder-only, pre-norm transformer language model (in the spirit of nanoGPT's model.py).

One file, read top to bottom: positional helpers, the KV cache, attention, MLP, block, and the model. Every
variant a config can ask for (four position encodings, four activations, two norms) lives in the same code path,
so comparing them compares the idea, not two implementations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuilm.model.config import ModelConfig

# ---------------------------------------------------------------------------------------------------------------
# Position encodings


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """The fixed table of Vaswani et al.: sin on even, cos on odd dimensions, wavelengths 2π .. 10000·2π."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d // 2]  # an odd d has one fewer cos column
    return table


def rope_tables(n: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)  # (n, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotate dimension i together with i + head_dim/2 (the GPT-NeoX pairing): two contiguous halves, no strides.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric head slopes from the ALiBi paper's reference code, including its rule for non-powers of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    def slopes(n: int) -> list[float]:
        if math.log2(n).is_integer():
            return power_of_2(n)
        # Take the slopes of the nearest lower power of 2, then fill with every other slope of the next one up.
        low = 2 ** math.floor(math.log2(n))
        return power_of_2(low) + slopes(2 * low)[0::2][: n - low]

    return torch.tensor(slopes(n_heads), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of tokens already seen, preallocated so that decoding never reallocates.

    Besides k/v it remembers each cached token's position (ALiBi needs the key positions, and the next token's
    default position continues from the last one) and whether it was padding (so a left-padded prefill keeps
    its padding masked during every later decoding step).
    """

    def __init__(
        self, n_layers: int, batch_size: int, n_heads: int, max_len: int, head_dim: int, device=None, dtype=None
    ):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.pos = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.mask = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)  # False = padding key
        self.padded = False  # True once any key_padding_mask went in: the masked attention path is then needed
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    @property
    def max_len(self) -> int:
        return self.pos.shape[1]

    def reset(self) -> None:
        self.length = 0
        self.padded = False
        self.mask.fill_(True)

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self.k[i], self.v[i], self.length)


@dataclass
class LayerCache:
    """One layer's view of a KVCache: its key and value buffers and how many tokens they already hold."""

    k: torch.Tensor
    v: torch.Tensor
    length: int

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values after the cached ones; returns all of them."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


# ---------------------------------------------------------------------------------------------------------------
# The transformer


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.drop = dropout(cfg.dropout)
        # QK-norm (Dehghani et al. 2023, Wortsman et al. 2023): bounded attention logits, no entropy collapse.
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-5) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-5) if cfg.qk_norm else None
        # With measure_entropy on, the forward computes the attention weights itself and keeps their mean
        # entropy in `entropy` (GPT.attention_entropy turns it on for one pass).
        self.measure_entropy = False
        self.entropy: torch.Tensor | None = None
        self.max_logit: torch.Tensor | None = None  # the largest pre-softmax attention logit of that pass

    def forward(self, x, rope=None, mask=None, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # keys are stored already rotated, so cached tokens never need re-encoding
            k, v = cache.extend(k, v)
        if mask is not None:
            mask = mask.to(q.dtype)  # no-op unless autocast changed q's dtype
        if self.measure_entropy:  # slow path: the fused kernel does not return its weights
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + mask
            att = torch.softmax(scores, dim=-1)
            self.entropy = torch.special.entr(att).sum(-1).mean()
            self.max_logit = scores.detach().amax()  # masked places are -inf: the largest logit attended to
            y = att @ v
        else:
            # mask None means plain causal attention with queries and keys aligned (or one query seeing all keys),
            # which lets SDPA pick its fastest kernel; is_causal with T == 1 would wrongly hide cached keys.
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None and T > 1)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Activation(nn.Module):
    """The MLP nonlinearity as its own module, so a forward hook on it sees the hidden activation."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, h: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "swiglu":
            return F.silu(gate) * h
        if self.kind == "relu2":
            return F.relu(h).square()
        if self.kind == "gelu_tanh":  # GPT-2's "gelu_new"
            return F.gelu(h, approximate="tanh")
        return F.relu(h) if self.kind == "relu" else F.gelu(h)

    def extra_repr(self) -> str:
        return self.kind


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ff_hidden
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias) if cfg.act == "swiglu" else None
        self.act = Activation(cfg.act)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.drop = dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x), self.gate(x)) if self.gate is not None else self.act(self.fc(x))
        return self.drop(self.proj(h))


def dropout(p: float):
    """nn.Dropout(p), or for p = 0 a plain function: a module call costs some microseconds even when it does
    nothing, which shows at the sizes where a step takes a millisecond."""
    return nn.Dropout(p) if p > 0 else _unchanged


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=1e-5)
    return nn.LayerNorm(cfg.d_model, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, mask=None, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask, cache)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        # Fixed tables are recomputed on construction: non-persistent keeps them out of checkpoints.
        elif cfg.pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoid_table(cfg.seq_len, cfg.d_model), persistent=False)
        elif cfg.pos == "rope":
            cos, sin = rope_tables(cfg.seq_len, cfg.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        elif cfg.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads), persistent=False)
        self.drop = dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

        self.apply(self._init_weights)
        # Each block adds two residual branches; shrinking their output projections keeps the residual stream's
        # variance from growing with depth at initialisation (GPT-2).
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self, embeddings: bool = True) -> int:
        """Unique parameters (a tied head counts once); embeddings=False leaves out the lookup tables."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.tok_emb.weight.numel()
            if self.cfg.pos == "learned":
                n -= self.pos_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.head.weight.numel()
        return n

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        max_len = self.cfg.seq_len if max_len is None else max_len
        if not 1 <= max_len <= self.cfg.seq_len:
            raise ValueError(f"cache max_len must be between 1 and seq_len {self.cfg.seq_len}, got {max_len}")
        w = self.tok_emb.weight
        c = self.cfg
        return KVCache(c.n_layers, batch_size, c.n_heads, max_len, c.head_dim, device or w.device, dtype or w.dtype)

    def forward(
        self, idx, *, pos_ids=None, key_padding_mask=None, doc_ids=None, cache: KVCache | None = None, last_only=False
    ):
        """Logits (B, T, vocab) in float32 for token ids idx (B, T).

        pos_ids (B, T): positions, e.g. restarting at each packed document; default 0.. (or after the cache).
        key_padding_mask (B, T) bool: False marks padding that no query may attend to.
        doc_ids (B, T): queries attend only to keys of the same document.
        cache: process idx as the next tokens after those already in the cache, and append them to it.
        last_only: logits of the last position only (B, 1, vocab): all a sampler needs, and the output layer is
        the costliest matmul of a small model with a large vocabulary.
        """
        x = self._hidden(idx, pos_ids, key_padding_mask, doc_ids, cache)
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm_f(x)).float()

    @torch.no_grad()
    def attention_entropy(self, idx, pos_ids=None, doc_ids=None) -> torch.Tensor:
        """Per layer, the mean entropy (nats) of the attention distributions over batch, heads and queries.

        Slow (explicit attention weights), so give it a small sub-batch. Runs in eval mode: dropout would only
        add noise to the statistic.
        """
        return self.attention_stats(idx, pos_ids, doc_ids)["entropy"]

    def attention_stats(self, idx, pos_ids=None, doc_ids=None) -> dict[str, torch.Tensor]:
        """One explicit-attention pass over a small sub-batch: per layer the mean attention entropy ("entropy")
        and the largest pre-softmax logit ("max_logit", whose unbounded growth precedes entropy collapse), and
        the mean log-partition log Z of the output logits ("log_z", what z-loss pulls towards 0)."""
        was_training = self.training
        attention = [block.attn for block in self.blocks]
        if self.cfg.dropout > 0:  # eval mode changes nothing else, and toggling it walks every module
            self.eval()
        try:
            for a in attention:
                a.measure_entropy = True
            with torch.no_grad():
                x = self._hidden(idx, pos_ids, None, doc_ids, None)
                log_z = torch.logsumexp(self.head(self.norm_f(x)).float(), dim=-1).mean()
            return {
                "entropy": torch.stack([a.entropy for a in attention]).float(),
                "max_logit": torch.stack([a.max_logit for a in attention]).float(),
                "log_z": log_z,
            }
        finally:
            for a in attention:
                a.measure_entropy, a.entropy, a.max_logit = False, None, None
            if self.cfg.dropout > 0:
                self.train(was_training)

    def _hidden(self, idx, pos_ids, key_padding_mask, doc_ids, cache) -> torch.Tensor:
        cfg = self.cfg
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        L = 0 if cache is None else cache.length
        if cache is None and idx.shape[1] > cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len {cfg.seq_len}")
        if cache is not None:
            if cache.batch_size != B:
                raise ValueError(f"cache holds {cache.batch_size} rows but idx has {B}")
            if (end := L + T) > cache.max_len:
                raise ValueError(
                    f"{T} new tokens after {L} cached ones overflow the cache ({end} > max_len {cache.max_len})"
                )
            if doc_ids is not None:
                raise ValueError("doc_ids (packed documents) is a training feature and cannot be used with a cache")

        pos = pos_ids
        if pos is None:
            pos = torch.arange(T, device=idx.device)
            if L:  # continue from each row's last cached position (right for left-padded rows too)
                pos = cache.pos[:, L - 1 : L] + 1 + pos
        if cache is not None:
            cache.pos[:, L : L + T] = pos
            cache.mask[:, L : L + T] = True if key_padding_mask is None else key_padding_mask
            cache.padded |= key_padding_mask is not None

        x = self.tok_emb(idx)
        if cfg.pos == "learned":
            x = x + self.pos_emb(pos)
        elif cfg.pos == "sinusoidal":
            # Scaled by sqrt(d_model) as in Vaswani et al.: the fixed table's rows have norm sqrt(d/2), some 35
            # times a freshly initialised embedding's, and unscaled the model first sees little but positions.
            x = x * math.sqrt(cfg.d_model) + self.pos_table[pos]
        x = self.drop(x)

        rope = None
        if cfg.pos == "rope":
            cos, sin = self.rope_cos[pos], self.rope_sin[pos]
            if pos.dim() == 2:  # per-row positions: add a head axis to broadcast against (B, H, T, head_dim/2)
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            rope = (cos, sin)

        # Fast path: with nothing to mask beyond causality, is_causal lets SDPA skip building and reading a
        # (B, H, T, S) mask and pick its fused causal kernel, so only build a mask when something needs it.
        needs_mask = (
            self.blocks[0].attn.measure_entropy
            or cfg.pos == "alibi"
            or key_padding_mask is not None
            or doc_ids is not None
            or (cache is not None and (cache.padded or (L > 0 and T > 1)))
        )
        mask = self._attn_mask(T, L, pos, key_padding_mask, doc_ids, cache, x.dtype) if needs_mask else None

        recompute = cfg.checkpoint_activations and self.training and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:  # keep only each block's input; its insides are recomputed in the backward pass
                x = checkpoint(block, x, rope, mask, None, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.length = L + T
        return x

    def _attn_mask(self, T, L, pos, key_padding_mask, doc_ids, cache, dtype) -> torch.Tensor:
        """One additive mask (0 / -inf, plus the ALiBi bias) broadcastable to (B, H, T, L + T)."""
        S, device = L + T, pos.device
        q_idx = torch.arange(L, S, device=device)[:, None]
        k_idx = torch.arange(S, device=device)[None, :]
        allowed = k_idx <= q_idx  # causal in sequence order, whatever the positions say
        keys_real = cache.mask[:, :S] if cache is not None and cache.padded else key_padding_mask
        if keys_real is not None:
            allowed = allowed & keys_real[:, None, None, :]
        if doc_ids is not None:
            allowed = allowed & (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]
        allowed = allowed | (k_idx == q_idx)  # a padding query still sees itself: no all -inf row, no NaN
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        if self.cfg.pos == "alibi":
            k_pos = cache.pos[:, :S] if cache is not None else pos
            dist = pos.view(-1, T)[:, None, :, None] - k_pos.view(-1, S)[:, None, None, :]  # (B|1, 1, T, S)
            mask = mask - self.alibi_slopes.view(1, -1, 1, 1).to(dtype) * dist
        return mask
