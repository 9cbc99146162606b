"""Auxiliary loss terms the trainer adds to the cross-entropy."""

from __future__ import annotations

import torch

from tuilm.data.pipeline import IGNORE


def z_loss_sum(logits: torch.Tensor, targets: torch.Tensor, coefficient: float) -> torch.Tensor:
    """PaLM's z-loss, summed over the scored positions: coefficient * log(Z)^2, Z the softmax normaliser of each
    position's output logits. It keeps log Z near 0, so the logits cannot drift to where bf16 rounds them away
    (Chowdhery et al. 2022; Wortsman et al. 2023). Divide by the step's target count, as the cross-entropy is."""
    log_z = torch.logsumexp(logits.float(), dim=-1)
    scored = (targets != IGNORE).to(log_z.dtype)
    return coefficient * (log_z.square() * scored).sum()
