"""The training state: every counter a resume must restore (the weights and optimizer aside), named once.

Saving writes `TrainState.to_dict()` and resuming reads `from_dict()`, so the two can never list different keys.
The files it is saved in are tuilm.checkpoint.run_files's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

INFINITE = ("best_val_loss", "best_val_bpc")  # inf until the first evaluation; JSON has no inf, so None


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # target tokens trained on
    epoch: int = 0
    batch_in_epoch: int = 0  # position in the epoch's shuffled batches
    elapsed: float = 0.0  # seconds spent in training steps: evaluation, saving and pauses do not count
    best_val_loss: float = math.inf
    best_val_bpc: float = math.inf
    evals_since_best: int = 0
    train_losses: list[float] = field(default_factory=list)  # since the last evaluation
    decay_start: float | None = None  # wsd: the progress its decay began at (schedule.wsd_start)
    best_weights: str = "model"  # which weights best.safetensors holds: model, or ema (train.ema)
    target_hit: dict | None = None  # train.target: step, tokens, seconds and flops where it was first reached

    def record_eval(self, val_loss: float, val_bpc: float, weights: str = "model") -> bool:
        """Count an evaluation towards early stopping; True when it is the best so far."""
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_bpc, self.evals_since_best = val_loss, val_bpc, 0
            self.best_weights = weights
            return True
        self.evals_since_best += 1
        return False

    def take_train_loss(self) -> float:
        """The mean training loss since the last evaluation (nan when none), starting the next mean afresh."""
        losses, self.train_losses = self.train_losses, []
        return float(np.mean(losses)) if losses else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in INFINITE:
            data[key] = finite_or_none(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        # A state saved before a field existed (decay_start, best_weights, target_hit) takes its default.
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key in INFINITE:
            values[key] = math.inf if values[key] is None else values[key]
        values["train_losses"] = list(values["train_losses"])
        return cls(**values)


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
