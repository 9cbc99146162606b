"""Optimizers and the learning-rate schedule."""

from __future__ import annotations

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
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, **fast)
    elif cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=betas, **fast)
    elif cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    elif cfg.optimizer == "muon":
        optimizer = build_muon(model, cfg, fast)
    elif cfg.optimizer == "adafactor":
        if not hasattr(torch.optim, "Adafactor"):
            raise ConfigError("adafactor needs torch >= 2.5; upgrade torch or choose adamw")
        optimizer = torch.optim.Adafactor(groups, lr=cfg.lr, foreach=True)
    else:
        raise ConfigError(f"unknown optimizer '{cfg.optimizer}'; choose adamw, adam, sgd, adafactor or muon")
    stamp_peaks(optimizer, cfg)
    return optimizer


def stamp_peaks(optimizer: torch.optim.Optimizer, cfg) -> None:
    """Each group's own peak learning rate as `initial_lr` (nanochat's name): muon_lr for the Muon group, train.lr
    for the others. Stamped from the config when the optimizer is built and again after a resume has loaded the
    saved groups, so a resume with another train.lr or muon_lr trains each group at its new peak, never at a ratio
    of the old ones."""
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.muon_lr if group.get("muon") else cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float, peak: float) -> None:
    """Apply a point `lr` of a schedule that peaks at `peak` (train.lr) to every group: each follows the same
    warmup and decay, scaled to its own peak."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["initial_lr"] / peak


def muon_params(model: torch.nn.Module) -> tuple[list, list]:
    """(matrices for Muon, the rest): the blocks' 2-D weights; embeddings, head, gains and biases stay with
    AdamW, as in Keller Jordan's Muon: orthogonalised updates suit hidden matmuls, not lookups or the output."""
    muon, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (muon if p.dim() == 2 and name.startswith("blocks.") else rest).append(p)
    return muon, rest


def build_muon(model: torch.nn.Module, cfg, fast: dict) -> torch.optim.Optimizer:
    muon, rest = muon_params(model)
    if not muon:
        raise ConfigError("optimizer muon needs at least one transformer block (model.n_layers >= 1)")
    decay = [p for p in rest if p.dim() >= 2]
    other = [p for p in rest if p.dim() < 2]
    # Muon follows the same warmup and decay at its own peak, muon_lr (stamp_peaks), the AdamW groups at train.lr.
    groups = [
        {"params": muon, "muon": True, "weight_decay": cfg.weight_decay},
        {"params": decay, "muon": False, "weight_decay": cfg.weight_decay},
        {"params": other, "muon": False, "weight_decay": 0.0},
    ]
    return MuonAdamW(
        [g for g in groups if g["params"]],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        momentum=cfg.muon_momentum,
        adamw_options=fast,
    )


class MuonAdamW(torch.optim.Optimizer):
    """torch's Muon for the groups marked `muon`, torch's AdamW for the others, as one optimizer.

    Being one `Optimizer` (one state, one param_groups list), it saves, resumes, clips, unscales and schedules
    like any other. The two inner optimizers hold the very same group dicts and state, so no update is
    reimplemented here: each step is exactly what torch.optim.Muon and torch.optim.AdamW would do.
    """

    def __init__(self, groups, lr: float, betas, momentum: float, adamw_options: dict | None = None):
        super().__init__(groups, {"lr": lr, "muon": False, "weight_decay": 0.0})
        self._momentum, self._betas, self._adamw_options = momentum, betas, dict(adamw_options or {})
        self._link()

    def _link(self) -> None:
        muon = [g for g in self.param_groups if g["muon"]]
        adam = [g for g in self.param_groups if not g["muon"]]
        self._inner = []
        if muon:
            inner = torch.optim.Muon(muon, lr=self.defaults["lr"], momentum=self._momentum)
            self._inner.append(inner)
        if adam:
            inner = torch.optim.AdamW(adam, lr=self.defaults["lr"], betas=self._betas, **self._adamw_options)
            self._inner.append(inner)
        for inner in self._inner:
            inner.param_groups = [g for g in self.param_groups if g["muon"] == isinstance(inner, torch.optim.Muon)]
            inner.state = self.state

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and the group dicts: link them again
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for inner in self._inner:
            inner.step()
        return loss
