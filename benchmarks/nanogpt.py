"""A compact re-implementation of nanoGPT (model.py and train.py) for benchmarks to run tuilm against.

The model follows nanoGPT's model.py: pre-LayerNorm blocks, fused-qkv causal attention through SDPA, a 4x GELU
MLP, learned positions, a head tied to the token embedding, optional biases (nanoGPT's shakespeare_char config
leaves `bias = False`), N(0, 0.02) init with the residual projections at 0.02 / sqrt(2 * n_layer). Training
follows train.py: random windows of the training ids, AdamW with weight decay on matrices only, linear warmup
then cosine decay to min_lr, gradient clipping at 1.0, and an estimate of train/val loss every eval_interval.

Run as a script it trains nanoGPT's CPU example from its README, character-level on tiny Shakespeare split as
its data/shakespeare_char/prepare.py does (first 90% of the characters train, last 10% val):

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

and writes the final weights (safetensors) and vocabulary for benchmarks/quality.py to score:

    python benchmarks/nanogpt.py --data tiny_shakespeare.txt --out /tmp/nanogpt
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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


def lr_at(it: int, cfg: NanoConfig) -> float:
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def char_split(text: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """data/shakespeare_char/prepare.py: sorted characters as the vocabulary, first 90% train, last 10% val."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = int(len(text) * 0.9)
    return chars, ids[:n], ids[n:]


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


@torch.no_grad()
def estimate_loss(model: nn.Module, splits: dict[str, torch.Tensor], cfg: NanoConfig) -> dict[str, float]:
    model.eval()
    out = {
        name: sum(float(loss_of(model, *batch(d, cfg))) for _ in range(cfg.eval_iters)) / cfg.eval_iters
        for name, d in splits.items()
    }
    model.train()
    return out


def train(cfg: NanoConfig, train_ids: torch.Tensor, val_ids: torch.Tensor, log=print) -> NanoGPT:
    torch.manual_seed(1337)  # train.py's seed
    model = NanoGPT(cfg)
    optimizer = make_optimizer(model, cfg)
    for it in range(cfg.max_iters + 1):  # train.py runs iterations 0..max_iters
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, cfg)
        if it % cfg.eval_interval == 0:
            losses = estimate_loss(model, {"train": train_ids, "val": val_ids}, cfg)
            log(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        loss = loss_of(model, *batch(train_ids, cfg))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


@torch.no_grad()
def score(model: NanoGPT, ids: torch.Tensor) -> tuple[float, int]:
    """Summed nats over every character of `ids` after the first, in consecutive windows of block_size: the
    quantity nanoGPT's estimate_loss samples (contexts of 1..block_size characters), over the whole split."""
    model.eval()
    T = model.cfg.block_size
    nats, count = 0.0, 0
    for start in range(0, len(ids) - 1, T * 64):
        chunk = ids[start : start + T * 64 + 1]
        n = (len(chunk) - 1) // T
        pieces = [(chunk[: n * T].view(n, T), chunk[1 : n * T + 1].view(n, T))] if n else []
        if (len(chunk) - 1) % T:
            pieces.append((chunk[n * T : -1].view(1, -1), chunk[n * T + 1 :].view(1, -1)))
        for x, y in pieces:
            logits = model(x)
            nats += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
    return nats, count


def main() -> None:
    parser = argparse.ArgumentParser(description="nanoGPT's CPU example, re-implemented; writes weights")
    parser.add_argument("--data", type=Path, required=True, help="tiny_shakespeare.txt")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.safetensors and vocab.json")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    chars, train_ids, val_ids = char_split(args.data.read_text(encoding="utf-8"))
    cfg = NanoConfig(vocab_size=len(chars))
    t0 = time.perf_counter()
    model = train(cfg, train_ids, val_ids)
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    save_file(state, str(args.out / "model.safetensors"))
    (args.out / "vocab.json").write_text(json.dumps({"chars": chars, "config": asdict(cfg)}), encoding="utf-8")
    print(json.dumps({"train_seconds": round(time.perf_counter() - t0, 1)}))


def load(folder: Path) -> tuple[NanoGPT, list[str]]:
    from safetensors.torch import load_file

    meta = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    model = NanoGPT(NanoConfig(**meta["config"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    return model, meta["chars"]


if __name__ == "__main__":
    main()
