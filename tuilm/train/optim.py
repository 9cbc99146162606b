"""Optimizers and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from tuilm.errors import ConfigError


def build_optimizer(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    """`cfg` is a TrainConfig. Weight decay applies to matrices (weights of matmuls and embeddings) only:
    decaying norm gains and biases pulls them towards zero for no regularising benefit."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    betas = (cfg.beta1, cfg.beta2)
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, **fast)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas, **fast)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    if cfg.optimizer == "adafactor":
        if not hasattr(torch.optim, "Adafactor"):
            raise ConfigError("adafactor needs torch >= 2.5; upgrade torch or choose adamw")
        return torch.optim.Adafactor(groups, lr=cfg.lr, foreach=True)
    raise ConfigError(f"unknown optimizer '{cfg.optimizer}'; choose adamw, adam, sgd or adafactor")


def lr_at(step: int, progress: float, cfg) -> float:
    """Linear warmup over `warmup_steps`, then decay towards min_lr as training progresses.

    `progress` (0..1) is how far the first stopping criterion is (steps, tokens, epochs or time), so the same
    schedule serves a step budget and a time budget; without any criterion (nan) the rate stays constant.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant" or math.isnan(progress):
        return cfg.lr
    p = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * p
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (cfg.lr - cfg.min_lr)
