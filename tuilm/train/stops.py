"""Where a run stands against its stopping limits (max_steps, max_tokens, epochs, time): the one reckoning the
trainer stops by, its lr schedule follows, and the progress bar and the dashboard show. No torch: the dashboard
of a watched run reads it too."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuilm.config import TrainConfig
from tuilm.values import parse_duration

if TYPE_CHECKING:
    from tuilm.train.state import TrainState


@dataclass(frozen=True)
class StopRules:
    """max_steps, max_tokens, epochs and the time budget: whichever comes first ends the run."""

    max_steps: int
    max_tokens: int
    epochs: float
    time_budget: float  # seconds; 0 for none
    steps_per_epoch: int

    @classmethod
    def of(cls, t: TrainConfig, steps_per_epoch: int) -> StopRules:
        return cls(t.max_steps or 0, t.max_tokens or 0, t.epochs or 0, t.time_budget, steps_per_epoch)

    @classmethod
    def of_run(cls, train: dict) -> StopRules:
        """The limits of a run's [train] table (a RunStarted event's config), for whoever follows it from outside."""
        time_budget = parse_duration(str(train["time"])) if train.get("time") else 0.0
        limits = (train.get(k) or 0 for k in ("max_steps", "max_tokens", "epochs"))
        return cls(*limits, time_budget=time_budget, steps_per_epoch=0)

    def epochs_done(self, s: TrainState) -> float:
        return s.epoch + s.batch_in_epoch / max(1, self.steps_per_epoch)

    def reason(self, s: TrainState) -> str | None:
        if self.max_steps and s.step >= self.max_steps:
            return "max_steps"
        if self.max_tokens and s.tokens >= self.max_tokens:
            return "max_tokens"
        if self.epochs and self.epochs_done(s) >= self.epochs:
            return "epochs"
        if self.time_budget and s.elapsed >= self.time_budget:
            return "time"
        return None

    def fractions(self, step: int, tokens: int, epochs: float, elapsed: float) -> dict[str, float]:
        """0..1 towards each stopping criterion that is set, by name (steps, tokens, epochs, time)."""
        limits = {
            "steps": (step, self.max_steps),
            "tokens": (tokens, self.max_tokens),
            "epochs": (epochs, self.epochs),
            "time": (elapsed, self.time_budget),
        }
        return {name: done / limit for name, (done, limit) in limits.items() if limit}

    def progress(self, s: TrainState) -> float:
        """0..1 towards the first stopping criterion to be reached; nan when none is set."""
        known = self.fractions(s.step, s.tokens, self.epochs_done(s), s.elapsed)
        return max(known.values()) if known else math.nan

    def step_limit(self) -> int | None:
        """The step count the run will end at, when steps or epochs decide it (for a progress bar's total)."""
        candidates = [self.max_steps or None, math.ceil(self.epochs * self.steps_per_epoch) if self.epochs else None]
        known = [c for c in candidates if c]
        return min(known) if known else None
