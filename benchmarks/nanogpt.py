"""A compact nanoGPT-style training step (model.py's model, train.py's optimizer and clipping), for the in-process
diagnostics (train_throughput.py, step_overhead.py) to time tuilm's Trainer against.

The model follows nanoGPT's model.py: pre-LayerNorm blocks, fused-qkv causal attention through SDPA, a 4x GELU
MLP, learned positions, a head tied to the token embedding, optional biases (nanoGPT's shakespeare_char config
leaves `bias = False`), N(0, 0.02) init with the residual projections at 0.02 / sqrt(2 * n_layer); the step:
random windows, AdamW with weight decay on matrices only, gradient clipping at 1.0. What a user sees is measured
against nanoGPT's own train.py instead (vs_nanogpt.py, quality.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NanoConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = False
    # train.py with config/train_shakespeare_char.py and the CPU example's overrides
    batch_size: int = 12
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20


class LayerNorm(nn.Module):
    def __init__(self, d: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Block(nn.Module):
    def __init__(self, cfg: NanoConfig):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln_1, self.ln_2 = LayerNorm(d, cfg.bias), LayerNorm(d, cfg.bias)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d, bias=cfg.bias), nn.Linear(d, d, bias=cfg.bias)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=cfg.bias), nn.Linear(4 * d, d, bias=cfg.bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, cfg: NanoConfig):
        super().__init__()
        self.cfg = cfg
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # nanoGPT's c_proj of attention and MLP
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_optimizer(model: nn.Module, cfg: NanoConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


def batch(data: torch.Tensor, cfg: NanoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - cfg.block_size, (cfg.batch_size,))
    x = torch.stack([data[i : i + cfg.block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + cfg.block_size] for i in ix])
    return x, y


def reference_step(vocab: int, shape: dict, bias: bool):
    """One nanoGPT training step on random ids at `shape` (n_layers, n_heads, d_model, seq_len, batch_size), as a
    function to time: what benchmarks compare tuilm's Trainer against."""
    torch.manual_seed(0)
    cfg = NanoConfig(vocab, shape["seq_len"], shape["n_layers"], shape["n_heads"], shape["d_model"], bias=bias)
    cfg = NanoConfig(**{**asdict(cfg), "batch_size": shape["batch_size"]})
    model = NanoGPT(cfg)
    optimizer = make_optimizer(model, cfg)
    data = torch.randint(0, vocab, (200_000,))

    def step() -> float:
        loss = loss_of(model, *batch(data, cfg))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
